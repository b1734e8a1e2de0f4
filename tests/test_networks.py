"""Split networks and decoders adapt to every dataset shape; decoders give back images in [0, 1]."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bench.datamodules.base import DataSpec
from bench.errors import BenchError
from bench.networks import (
    Normalize,
    Role,
    build_split_network,
    conv_encoder,
    mirror_decoder,
    network_names,
    released_as_real,
    upsampling_decoder,
)

SPECS = {
    "digits": DataSpec("digits", (1, 8, 8), 10, (0.3,), (0.4,)),
    "mnist": DataSpec("mnist", (1, 28, 28), 10, (0.1307,), (0.3081,)),
    "cifar": DataSpec("cifar100", (3, 32, 32), 100, (0.5, 0.49, 0.44), (0.27, 0.26, 0.28)),
}


def _fits(family: str, spec: DataSpec) -> bool:
    encoder, _ = build_split_network(family, SPECS["cifar"])
    poolings = sum(isinstance(layer, nn.MaxPool2d) for layer in encoder)
    return min(spec.image_shape[1:]) >= 2**poolings


CASES = [(family, name) for family in network_names(Role.SPLIT) for name in SPECS if _fits(family, SPECS[name])]


def _images(spec: DataSpec, batch: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, *spec.image_shape, generator=torch.Generator().manual_seed(seed))


def test_the_expected_cases_are_covered():
    assert ("lenet5", "digits") in CASES and ("lenet5", "mnist") in CASES and ("lenet5", "cifar") in CASES
    assert ("vgg9", "mnist") in CASES and ("vgg9", "cifar") in CASES and ("vgg16", "cifar") in CASES
    assert ("vgg9", "digits") not in CASES and ("vgg16", "mnist") not in CASES


@pytest.mark.parametrize("family, spec_name", CASES)
def test_encoder_then_classifier_gives_logits(family, spec_name):
    torch.manual_seed(0)
    spec = SPECS[spec_name]
    encoder, classifier = build_split_network(family, spec)
    assert isinstance(encoder, nn.Sequential) and isinstance(classifier, nn.Sequential)
    assert isinstance(encoder[0], Normalize)
    assert encoder.training and classifier.training  # built ready to train
    images = _images(spec)
    logits = classifier(encoder(images))  # a training-mode pass (batch-norm statistics from the batch)
    assert logits.shape == (3, spec.num_classes)
    encoder.eval(), classifier.eval()
    with torch.no_grad():
        logits = classifier(encoder(images[:1]))
    assert logits.shape == (1, spec.num_classes) and torch.isfinite(logits).all()


@pytest.mark.parametrize("family, spec_name", CASES)
def test_mirror_decoder_gives_back_the_image_shape_in_unit_range(family, spec_name):
    torch.manual_seed(0)
    spec = SPECS[spec_name]
    encoder, _ = build_split_network(family, spec)
    decoder = mirror_decoder(encoder, spec.image_shape)
    assert encoder.training, "building the mirror decoder must leave the encoder's mode alone"
    encoder.eval()  # a deployed client (nested Sequentials are flattened into a new one) stays in eval mode too
    mirror_decoder(nn.Sequential(encoder), spec.image_shape)
    assert not any(layer.training for layer in encoder.modules())
    encoder.train()
    assert isinstance(decoder[-1], nn.Sigmoid)
    images = _images(spec)
    with torch.no_grad():
        released = encoder.eval()(images)
        reconstructed = decoder(released)  # training mode: batch statistics
        decoder.eval()
        reconstructed_eval = decoder(released)
    for output in (reconstructed, reconstructed_eval):
        assert output.shape == images.shape
        assert output.min() >= 0.0 and output.max() <= 1.0
    if family == "vgg":
        return  # the backward pass through VGG's widths costs seconds; lenet shows the decoder trains
    # it is trainable end to end
    decoder.train()
    loss = (decoder(released) - images).square().mean()
    loss.backward()
    assert all(p.grad is not None for p in decoder.parameters())


def test_mirror_decoder_inverts_a_hand_written_encoder_with_odd_sizes():
    encoder = nn.Sequential(
        nn.Conv2d(3, 5, 3, stride=2, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(5 * 4 * 4, 12)
    )
    decoder = mirror_decoder(encoder, (3, 17, 15))
    with torch.no_grad():
        output = decoder(encoder(torch.rand(2, 3, 17, 15)))
    assert output.shape == (2, 3, 17, 15) and output.min() >= 0 and output.max() <= 1


def test_mirror_decoder_refuses_what_it_cannot_invert():
    with pytest.raises(BenchError, match="upsampling"):
        mirror_decoder(nn.Conv2d(1, 4, 3), (1, 8, 8))
    with pytest.raises(BenchError, match="upsampling"):
        mirror_decoder(nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Softmax(dim=1)), (1, 8, 8))


UPSAMPLING_CASES = [
    (image_shape, released_shape)
    for image_shape in [(1, 8, 8), (1, 28, 28), (3, 32, 32), (3, 5, 7)]
    for released_shape in [(37,), (16, 4, 4)]
] + [((1, 28, 28), (6, 14, 14)), ((3, 32, 32), (512, 1, 1)), ((1, 8, 8), (2, 3, 5))]


@pytest.mark.parametrize("image_shape, released_shape", UPSAMPLING_CASES)
def test_upsampling_decoder_gives_back_the_image_shape_in_unit_range(image_shape, released_shape):
    torch.manual_seed(0)
    decoder = upsampling_decoder(released_shape, image_shape, width=8)
    released = torch.randn(4, *released_shape)
    output = decoder(released)
    assert output.shape == (4, *image_shape)
    assert output.min() >= 0.0 and output.max() <= 1.0
    decoder.eval()
    with torch.no_grad():
        assert decoder(released[:1]).shape == (1, *image_shape)


def test_upsampling_decoder_reads_complex_releases_through_released_as_real():
    released = torch.randn(3, 4, 7, 7, dtype=torch.complex64)
    real = released_as_real(released)
    decoder = upsampling_decoder(tuple(real.shape[1:]), (1, 28, 28), width=8)
    assert decoder(real).shape == (3, 1, 28, 28)


def test_vgg_on_digits_is_too_small():
    with pytest.raises(BenchError, match="too small"):
        build_split_network("vgg9", SPECS["digits"])
    with pytest.raises(BenchError, match="too small"):
        conv_encoder(DataSpec("tiny", (1, 3, 3), 2, (0.5,), (0.5,)), [4, "M", 4, "M"])


@pytest.mark.parametrize("name", ["resnet", "LeNet", ""])
def test_unknown_network_raises(name):
    with pytest.raises(BenchError, match="unknown network") as error:
        build_split_network(name, SPECS["mnist"])
    assert all(family in str(error.value) for family in network_names(Role.SPLIT))


def test_classifier_adapts_to_the_class_count():
    spec = DataSpec("many", (1, 28, 28), 37, (0.5,), (0.5,))
    encoder, classifier = build_split_network("lenet5", spec)
    assert classifier[-1].out_features == 37
    assert classifier(encoder(torch.rand(2, 1, 28, 28))).shape == (2, 37)


@pytest.mark.parametrize("mean, std", [((0.1307,), (0.3081,)), ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))])
def test_normalize_is_per_channel_standardisation(mean, std):
    x = torch.rand(5, len(mean), 6, 7, generator=torch.Generator().manual_seed(3))
    layer = Normalize(mean, std)
    expected = (x - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)
    torch.testing.assert_close(layer(x), expected, atol=1e-6, rtol=0)
    for c in range(len(mean)):
        torch.testing.assert_close(layer(x)[:, c], (x[:, c] - mean[c]) / std[c], atol=1e-6, rtol=0)
    assert set(dict(layer.named_buffers())) == {"mean", "std"} and list(layer.parameters()) == []
    assert set(layer.state_dict()) == {"mean", "std"}  # travels with checkpoints


def test_released_as_real_doubles_channels_and_keeps_both_parts():
    real, imag = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    released = torch.complex(real, imag)
    stacked = released_as_real(released)
    assert stacked.shape == (2, 6, 4, 4) and not stacked.is_complex()
    assert torch.equal(stacked[:, :3], real) and torch.equal(stacked[:, 3:], imag)
    flat = torch.complex(torch.randn(5, 37), torch.randn(5, 37))
    assert released_as_real(flat).shape == (5, 74)
    plain = torch.randn(2, 3, 4, 4)
    assert released_as_real(plain) is plain
