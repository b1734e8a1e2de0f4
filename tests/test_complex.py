"""Complex-valued networks (Xiang et al.): rotation equivariance, decryption, the WGAN schedule, baselines."""

from __future__ import annotations

import json
import math

import pytest
import torch
from helpers import StepRecorder
from helpers import quiet_trainer as _trainer
from helpers import synthetic_spec as _spec

from bench.datamodules import Digits
from bench.errors import BenchError
from bench.modules import ComplexNet, ComplexNetBaseline
from bench.modules.complex_net import derangement, fake_angles
from bench.networks.complex import (
    ComplexAvgPool2d,
    ComplexConv2d,
    ComplexDropout,
    ComplexLinear,
    ComplexMaxPool2d,
    ComplexNorm,
    Delta,
    ResidualBlock,
    build_modules,
    real_part_at,
    rotate,
)
from bench.networks.registry import Role, build_network


def _modules(name, spec, complex_valued, **options):
    """Network ``name``'s encryption, processing and decryption modules (its plans from the registry)."""
    return build_modules(build_network(name, Role.COMPLEX, spec), spec, complex_valued, **options)


def _complex(*shape, dtype=torch.complex64) -> torch.Tensor:
    return torch.randn(*shape, dtype=dtype)


def _assert_equivariant(layer, f, atol=1e-5, seed=None):
    """layer(exp(i theta) f) == exp(i theta) layer(f), with a different theta for every sample (Eq. 5)."""
    theta = torch.rand(len(f), dtype=f.real.dtype) * 2 * math.pi
    if seed is not None:
        torch.manual_seed(seed)
    rotated_first = layer(rotate(f, theta))
    if seed is not None:
        torch.manual_seed(seed)
    rotated_after = rotate(layer(f), theta)
    torch.testing.assert_close(rotated_first, rotated_after, atol=atol, rtol=1e-5)
    return rotated_after


LAYERS = {
    "conv": lambda: ComplexConv2d(4, 6, 3),
    "conv_strided": lambda: ComplexConv2d(4, 6, 5, stride=2),
    "delta_c1": lambda: Delta(1.0),
    "delta_channel_mean": lambda: Delta(None),
    "norm": lambda: ComplexNorm(4),
    "max_pool": lambda: ComplexMaxPool2d(2),
    "max_pool_overlapping": lambda: ComplexMaxPool2d(3, 2),
    "avg_pool": lambda: ComplexAvgPool2d(2),
    "global_avg_pool": lambda: ComplexAvgPool2d(),
    "residual_block": lambda: ResidualBlock(4, 8, 2, complex_valued=True),
}


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("name", sorted(LAYERS))
def test_every_processing_layer_commutes_with_rotation(name, train):
    torch.manual_seed(0)
    layer = LAYERS[name]().train(train)
    _assert_equivariant(layer, _complex(5, 4, 8, 8))  # in train mode the norm uses the batch's statistics


def test_linear_and_dropout_commute_with_rotation():
    torch.manual_seed(0)
    _assert_equivariant(ComplexLinear(12, 7), _complex(5, 12))
    _assert_equivariant(Delta(None), _complex(5, 12))
    dropout = ComplexDropout(0.5).train()
    out = _assert_equivariant(dropout, _complex(5, 4, 8, 8), seed=3)  # the same units dropped both times
    # whole complex units are dropped: real and imaginary parts vanish together
    dropped = out == 0
    assert dropped.any() and torch.equal(out.real == 0, dropped) and torch.equal(out.imag == 0, dropped)


def test_max_pool_ties_go_to_the_first_unit_whatever_the_rotation():
    # every 2x2 window holds four units of the same modulus 0.7 at different phases
    window = torch.polar(torch.full((4,), 0.7), torch.tensor([0.3, 1.9, 3.1, 4.4])).view(2, 2)
    f = window.repeat(2, 2).view(1, 1, 4, 4).repeat(64, 2, 1, 1)
    theta = torch.linspace(0.1, 6.2, 64)
    # rounding breaks the ties after a rotation: a plain argmax of |f| would pick other units for some angles
    moduli = rotate(f, theta).abs()[:, 0, :2, :2].flatten(1)
    assert (moduli.argmax(1) != 0).any(), "the test needs rotations whose rounding breaks the ties"
    pool = ComplexMaxPool2d(2)
    torch.testing.assert_close(pool(rotate(f, theta)), rotate(pool(f), theta), atol=1e-6, rtol=1e-6)
    assert torch.equal(pool(f), f[:, :, ::2, ::2])  # the first unit of each window


def test_max_pool_passes_the_unit_of_largest_modulus():
    f = torch.tensor([[[[0.5 + 0j, -3j], [2 + 2j, 0.1]]]], dtype=torch.complex64)
    assert ComplexMaxPool2d(2)(f).item() == -3j


def test_delta_follows_eq_6():
    f = torch.tensor([0.5 + 0j, 3j, -2 + 0j], dtype=torch.complex64).view(1, 3)
    torch.testing.assert_close(Delta(1.0)(f), torch.tensor([[0.25 + 0j, 3j, -2 + 0j]]))  # |f| < c: f |f| / c; else f
    per_channel = torch.tensor([[[[1, 3]], [[2j, 2j]]]], dtype=torch.complex64)  # c_k = E_ij |f_ijk|: 2 and 2
    torch.testing.assert_close(
        Delta(None)(per_channel), torch.tensor([[[[0.5, 3]], [[2j, 2j]]]], dtype=torch.complex64)
    )


def test_norm_follows_eq_7_on_the_batch_and_keeps_running_statistics():
    torch.manual_seed(0)
    norm = ComplexNorm(3).train()
    f = _complex(6, 3, 4, 4) * torch.tensor([1.0, 5.0, 0.2]).view(1, 3, 1, 1)
    out = norm(f)
    power = out.abs().square().mean(dim=(0, 2, 3))  # E_ijl |f|^2 = 1 for every channel
    torch.testing.assert_close(power, torch.ones(3), atol=1e-3, rtol=0)  # up to eps
    assert torch.allclose(norm.running_power, 0.9 + 0.1 * f.abs().square().mean(dim=(0, 2, 3)))


FAMILIES = [
    ("lenet5", (1, 8, 8)),
    ("lenet5", (3, 32, 32)),
    ("resnet20_alpha", (3, 16, 16)),
    ("resnet20_beta", (1, 8, 8)),
    ("resnet32_alpha", (1, 8, 8)),
    ("vgg16", (3, 32, 32)),
    ("alexnet", (3, 32, 32)),
    ("alexnet", (3, 64, 64)),
]


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize(("network", "shape"), FAMILIES)
def test_whole_processing_modules_commute_with_rotation(network, shape, train):
    torch.manual_seed(0)
    modules = _modules(network, _spec(shape), complex_valued=True, generator_channels=4)
    processing = modules.processing.double().train(train)
    f = _complex(3, *modules.feature_shape, dtype=torch.complex128)
    _assert_equivariant(processing, f, atol=1e-9, seed=1)  # float64: the same dropout masks and batch statistics


@pytest.mark.parametrize(("network", "shape"), FAMILIES)
def test_networks_adapt_to_the_data_and_split_in_three(network, shape):
    spec = _spec(shape)
    modules = _modules(network, spec, complex_valued=False)
    images = torch.rand(2, *shape)
    logits = modules.decryption(modules.processing(modules.encoder(images)))
    assert logits.shape == (2, 10)
    module = ComplexNet(network=network, data_spec=spec, generator_channels=4).eval()
    released = module.release(images)
    assert released.is_complex() and released.shape == (2, *module.real_features(images).shape[1:])
    assert module(images).shape == (2, 10)


def test_networks_reject_what_they_cannot_build():
    with pytest.raises(BenchError, match="6n \\+ 2"):
        _modules("resnet21_alpha", _spec((3, 32, 32)), True)
    with pytest.raises(BenchError, match="unknown network"):
        _modules("resnet56", _spec((3, 32, 32)), True)
    with pytest.raises(BenchError, match="too small"):
        _modules("vgg16", _spec((1, 8, 8)), True)


@pytest.mark.parametrize(
    "kwargs",
    [dict(phases_per_sample=1), dict(n_critic=0), dict(lipschitz="spectral"), dict(clip_value=0.0), dict(bank_size=0)],
)
def test_bad_hyper_parameters_are_rejected(kwargs):
    with pytest.raises(BenchError, match=next(iter(kwargs)).split("_")[0]):
        ComplexNet(data_spec=_spec((1, 8, 8)), **kwargs)


# ---------------------------------------------------------------------------- encryption and decryption
def test_decryption_with_the_true_phase_predicts_the_same_whatever_the_phase():
    torch.manual_seed(0)
    module = ComplexNet(data_spec=_spec((1, 8, 8))).eval()
    images = torch.rand(5, 1, 8, 8)
    with torch.no_grad():
        a = module.real_features(images)
        b = module.fooling_counterpart(a)
        assert not torch.equal(a, b)
        logits = [
            module.decrypt(module.processing(rotate(torch.complex(a, b), theta)), theta)
            for theta in (torch.zeros(5), torch.rand(5) * 2 * math.pi, torch.full((5,), 3.0))
        ]
    for other in logits[1:]:
        torch.testing.assert_close(other, logits[0], atol=1e-5, rtol=1e-4)
    # and the released feature is Eq. 2's: de-rotated with its angle, its real part is a, its imaginary part b
    released, theta = module.encrypt(a, b)
    torch.testing.assert_close(real_part_at(released, theta), a, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(real_part_at(released, theta + math.pi / 2), b, atol=1e-5, rtol=1e-5)


@pytest.fixture(scope="module")
def trained_complex_net():
    torch.manual_seed(0)
    datamodule = Digits(batch_size=64)
    module = ComplexNet(data_spec=datamodule.spec, lr=3e-3, n_critic=2)
    _trainer(max_epochs=6).fit(module, datamodule)
    return module.eval(), datamodule


def test_a_wrong_phase_degrades_the_prediction(trained_complex_net):
    module, datamodule = trained_complex_net
    images, labels = datamodule.pool("test").tensors()
    torch.manual_seed(0)
    with torch.no_grad():
        released, theta = module.release_with_phase(images)
        h = module.processing(released)

        def accuracy(angle):
            return (module.decrypt(h, angle).argmax(1) == labels).float().mean().item()

        true, quarter, half = accuracy(theta), accuracy(theta + math.pi / 2), accuracy(theta + math.pi)
        server = (module.predict_from_release(released).argmax(1) == labels).float().mean().item()
    assert true > 0.6
    assert max(quarter, half, server) < true - 0.3, (true, quarter, half, server)


def test_a_lone_sample_draws_its_fooling_counterpart_from_the_training_bank(trained_complex_net):
    module, datamodule = trained_complex_net
    image = datamodule.pool("test").tensors()[0][:1]
    a = module.real_features(image)
    b = module.fooling_counterpart(a)
    assert int(module.bank_filled) == len(module.fooling_bank)
    assert any(torch.equal(b[0], banked) for banked in module.fooling_bank) and not torch.equal(a, b)


def test_fooling_counterparts_come_from_other_samples_and_fakes_from_nonzero_angles():
    torch.manual_seed(0)
    for n in (2, 3, 17):
        paired = derangement(n, torch.device("cpu"))
        assert sorted(paired.tolist()) == list(range(n)) and not (paired == torch.arange(n)).any()
    angles = fake_angles(4, 1000, torch.device("cpu"))
    assert angles.shape == (3, 1000)
    assert angles.min() >= math.pi / 4 and angles.max() <= 2 * math.pi - math.pi / 4  # never within pi / k of 0
    module = ComplexNet(data_spec=_spec((1, 8, 8)), phases_per_sample=4)
    a, b = torch.randn(5, 6, 8, 8), torch.randn(5, 6, 8, 8)
    torch.manual_seed(1)
    fakes = module.fakes(a, b)
    torch.manual_seed(1)
    dtheta = fake_angles(4, 5, torch.device("cpu")).view(3, 5, 1, 1, 1)
    expected = real_part_at(
        rotate(torch.complex(a, b).repeat(3, 1, 1, 1), dtheta.flatten()), torch.zeros(15)
    )  # Eq. 8's a'
    torch.testing.assert_close(fakes, expected, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------- the WGAN schedule
class _RecordingComplexNet(StepRecorder, ComplexNet):
    recorded_parts = ("encoder", "processing", "critic")


@pytest.mark.parametrize("lipschitz", ["clip", "gp"])
def test_critic_and_generator_alternate_as_wgan(lipschitz):
    datamodule = Digits(batch_size=32, pool_limit=64)
    module = _RecordingComplexNet(data_spec=datamodule.spec, n_critic=3, lipschitz=lipschitz, clip_value=0.02)
    trainer = _trainer(limit_train_batches=2)
    trainer.fit(module, datamodule)
    one_batch = [("critic", frozenset({"critic"}))] * 3 + [("task", frozenset({"encoder", "processing"}))]
    assert module.steps == one_batch * 2
    assert trainer.global_step == 2 * (3 + 1)  # manual optimization: every optimizer step counts
    if lipschitz == "clip":
        assert max(p.abs().max().item() for p in module.critic.parameters()) <= 0.02
    assert all(p.requires_grad for p in module.critic.parameters())


def test_the_generator_step_minimises_eq_9():
    torch.manual_seed(0)
    module = ComplexNet(data_spec=_spec((1, 8, 8)))
    a, b = torch.randn(4, 6, 8, 8), torch.randn(4, 6, 8, 8)
    torch.manual_seed(2)
    loss = module.adversarial_loss(a, b)
    torch.manual_seed(2)
    fakes = module.fakes(a, b)
    torch.testing.assert_close(loss, module.critic(a).mean() - module.critic(fakes).mean())


# ---------------------------------------------------------------------------- baselines
def test_baselines_share_the_complex_network_split():
    spec = _spec((1, 8, 8))
    images = torch.rand(4, 1, 8, 8)
    original = ComplexNetBaseline(data_spec=spec)
    additional = ComplexNetBaseline(data_spec=spec, variant="additional_layers", generator_channels=5)
    complex_net = ComplexNet(data_spec=spec, generator_channels=5)
    assert original.release(images).shape == (4, 6, 8, 8)  # after LeNet's first convolution
    assert additional.release(images).shape == complex_net.real_features(images).shape == (4, 5, 8, 8)
    # the additional layer is the generator's 3x3 convolution, and nothing else
    extra = sum(p.numel() for p in additional.parameters()) - sum(p.numel() for p in original.parameters())
    assert extra == 6 * 5 * 9 + 5 + (5 - 6) * 16 * 25
    assert original.label == "Original network" and additional.label == "Network with additional layers"
    with pytest.raises(BenchError, match="variant"):
        ComplexNetBaseline(data_spec=spec, variant="encrypted")


@pytest.mark.parametrize("gamma", [0.2, 1.0])
def test_noisy_features_add_noise_of_the_features_average_magnitude(gamma):
    torch.manual_seed(0)
    module = ComplexNetBaseline(data_spec=_spec((1, 28, 28)), variant="noisy", noise_level=gamma)
    images = torch.rand(3, 1, 28, 28)
    a = module.encoder(images)
    noise = (module.release(images) - a) / gamma
    torch.testing.assert_close(noise.abs().flatten(1).mean(1), a.abs().flatten(1).mean(1), rtol=1e-4, atol=1e-6)
    assert abs(noise.mean().item()) < 0.05 * a.abs().mean().item() and module.label == f"Noisy features (gamma={gamma})"


@pytest.mark.slow
def test_complex_net_under_ddp_keeps_every_module_in_sync(tmp_path):
    from test_ddp import _ReportRanks

    datamodule = Digits(batch_size=32, pool_limit=128)
    module = ComplexNet(data_spec=datamodule.spec, n_critic=2, lipschitz="gp", critic_lr=1e-4)
    trainer = _trainer(devices=2, strategy="ddp_spawn", limit_val_batches=1, callbacks=[_ReportRanks(str(tmp_path))])
    trainer.fit(module, datamodule)
    reports = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert all(report["world_size"] == 2 for report in reports)
    assert max(report["max_weight_difference"] for report in reports) == 0.0
