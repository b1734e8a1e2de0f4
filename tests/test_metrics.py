"""Reconstruction quality and cost metrics, checked against naive computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.utils import prune

from bench.metrics import (
    client_flops_per_sample,
    count_parameters,
    reconstruction_metrics,
    released_bytes_per_sample,
    ssim_kernel_size,
)
from bench.metrics.reconstruction import PSNR_CAP_DB, mean_interval, per_image_metrics


def _pair(shape, noise, seed=0):
    generator = torch.Generator().manual_seed(seed)
    original = torch.rand(*shape, generator=generator)
    reconstructed = (original + noise * torch.randn(*shape, generator=generator)).clamp(0, 1)
    return reconstructed, original


# ----------------------------------------------------------------------------- reconstruction
@pytest.mark.parametrize("shape", [(4, 1, 8, 8), (3, 1, 28, 28), (2, 3, 32, 32), (2, 1, 6, 6)])
def test_identical_images_are_a_perfect_reconstruction(shape):
    images = torch.rand(*shape, generator=torch.Generator().manual_seed(1))
    metrics = reconstruction_metrics(images, images.clone())
    assert set(metrics) == {"mse", "mae", "psnr", "ssim"}
    assert all(isinstance(value, float) for value in metrics.values())
    assert metrics["mse"] == 0.0 and metrics["mae"] == 0.0
    assert metrics["ssim"] == pytest.approx(1.0, abs=1e-4)
    # zero error has infinite PSNR: capped, so that one perfect image cannot make a mean infinite
    assert metrics["psnr"] == PSNR_CAP_DB


@pytest.mark.parametrize("shape", [(5, 1, 8, 8), (4, 1, 28, 28), (3, 3, 32, 32), (2, 2, 6, 9)])
def test_mse_mae_psnr_match_a_naive_per_image_computation(shape):
    reconstructed, original = _pair(shape, noise=0.2, seed=sum(shape))
    # images with very different errors, so the mean of per-image PSNRs differs from the PSNR of the mean error
    reconstructed[0] = original[0] + 0.01 * (reconstructed[0] - original[0])
    metrics = reconstruction_metrics(reconstructed, original)
    r, o = reconstructed.double().numpy(), original.double().numpy()
    per_image_mse = [float(np.mean((r[i] - o[i]) ** 2)) for i in range(shape[0])]
    naive_psnr = float(np.mean([10 * math.log10(1.0 / mse) for mse in per_image_mse]))
    assert metrics["mse"] == pytest.approx(float(np.mean((r - o) ** 2)), abs=1e-5)
    assert metrics["mse"] == pytest.approx(float(np.mean(per_image_mse)), abs=1e-5)
    assert metrics["mae"] == pytest.approx(float(np.mean(np.abs(r - o))), abs=1e-5)
    assert metrics["psnr"] == pytest.approx(naive_psnr, abs=1e-4)
    global_psnr = 10 * math.log10(1.0 / float(np.mean(per_image_mse)))
    assert abs(naive_psnr - global_psnr) > 1.0, "the test batch does not separate per-image from global PSNR"


@pytest.mark.parametrize("shape", [(2, 1, 5, 5), (2, 1, 3, 3), (2, 1, 4, 4)])
def test_small_images_are_supported_as_ssim_kernel_size_promises(shape):
    images = torch.rand(*shape, generator=torch.Generator().manual_seed(1))
    assert reconstruction_metrics(images, images.clone())["ssim"] == pytest.approx(1.0, abs=1e-4)


def test_ssim_window_adapts_to_8x8_images():
    from torchmetrics.functional.image import structural_similarity_index_measure

    reconstructed, original = _pair((6, 1, 8, 8), noise=0.15)
    with_usual_11x11_window = structural_similarity_index_measure(reconstructed, original, data_range=1.0).item()
    assert reconstruction_metrics(reconstructed, original)["ssim"] != pytest.approx(with_usual_11x11_window, abs=1e-6)


def test_ssim_orders_reconstructions_by_quality_and_stays_in_range():
    for shape in [(4, 1, 8, 8), (2, 3, 32, 32)]:
        scores = [reconstruction_metrics(*_pair(shape, noise))["ssim"] for noise in (0.02, 0.1, 0.3)]
        assert scores[0] > scores[1] > scores[2]
        assert all(-1.0 <= s <= 1.0 for s in scores)
        assert scores[0] > 0.9


def test_metrics_are_symmetric_for_images_in_range():
    a, b = _pair((3, 1, 8, 8), noise=0.3)
    forward, backward = reconstruction_metrics(a, b), reconstruction_metrics(b, a)
    for key in forward:
        assert forward[key] == pytest.approx(backward[key], abs=1e-5)


def test_per_image_metrics_average_to_the_batch_metrics():
    reconstructed, original = _pair((6, 1, 16, 16), noise=0.2)
    reconstructed[0] = original[0]  # one perfect image: capped, not infinite
    per_image = per_image_metrics(reconstructed, original)
    batch = reconstruction_metrics(reconstructed, original)
    assert per_image["psnr"].shape == per_image["ssim"].shape == (6,)
    assert per_image["psnr"][0] == PSNR_CAP_DB
    assert per_image["psnr"].mean().item() == pytest.approx(batch["psnr"])
    assert per_image["ssim"].mean().item() == pytest.approx(batch["ssim"], abs=1e-6)


def test_mean_interval_is_students_t_over_the_values():
    values = [10.0, 12.0, 11.0, 15.0]
    mean, low, high = mean_interval(values)
    half = 3.182446305284263 * np.std(values, ddof=1) / 2  # t(0.975, 3) x s / sqrt(4)
    assert mean == pytest.approx(12.0) and low == pytest.approx(12.0 - half) and high == pytest.approx(12.0 + half)
    assert mean_interval([7.0, 7.0, 7.0]) == (7.0, 7.0, 7.0)
    assert mean_interval([3.0]) == (3.0, None, None)  # one image: no interval
    with pytest.raises(ValueError):
        mean_interval([])


@pytest.mark.parametrize("other", [(4, 1, 8, 7), (3, 1, 8, 8), (4, 3, 8, 8), (4, 64)])
def test_shape_mismatch_raises(other):
    with pytest.raises(ValueError, match="shape"):
        reconstruction_metrics(torch.rand(*other), torch.rand(4, 1, 8, 8))


@pytest.mark.parametrize(
    "size, expected",
    [
        ((8, 8), 7),
        ((28, 28), 11),
        ((32, 32), 11),
        ((5, 5), 5),
        ((3, 3), 3),
        ((4, 4), 3),
        ((11, 11), 11),
        ((12, 12), 11),
        ((10, 10), 9),
        ((8, 28), 7),
        ((28, 6), 5),
        ((64, 64), 11),
    ],
)
def test_ssim_kernel_size(size, expected):
    kernel = ssim_kernel_size(*size)
    assert kernel == expected
    assert kernel % 2 == 1 and 3 <= kernel <= 11


def test_ssim_kernel_size_never_exceeds_the_image():
    for height in range(3, 40):
        for width in range(3, 40):
            kernel = ssim_kernel_size(height, width)
            assert kernel % 2 == 1 and kernel <= min(height, width) and kernel <= 11


# ----------------------------------------------------------------------------- cost
def test_count_parameters_counts_zeroed_weights():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 5), nn.ReLU(), nn.Linear(5, 3))
    total = 10 * 5 + 5 + 5 * 3 + 3
    counts = count_parameters(model)
    assert counts == {"parameters": total, "nonzero_parameters": total}
    with torch.no_grad():
        model[0].weight[:2] = 0.0  # 2 rows of 10
        model[2].bias[1] = 0.0
    counts = count_parameters(model)
    assert counts["parameters"] == total
    assert counts["nonzero_parameters"] == total - 21


def test_count_parameters_of_a_parameterless_module():
    assert count_parameters(nn.ReLU()) == {"parameters": 0, "nonzero_parameters": 0}


def test_count_parameters_counts_torch_pruned_weights_as_zero():
    torch.manual_seed(0)
    layer = nn.Linear(10, 5)
    prune.l1_unstructured(layer, "weight", amount=20)
    counts = count_parameters(layer)
    assert counts["parameters"] == 55
    assert counts["nonzero_parameters"] == 55 - 20


@pytest.mark.parametrize(
    "dtype, bytes_per_element",
    [(torch.float32, 4), (torch.complex64, 8), (torch.float16, 2), (torch.float64, 8), (torch.uint8, 1)],
)
@pytest.mark.parametrize("shape", [(7, 16, 4, 4), (3, 37), (1, 2, 3)])
def test_released_bytes_per_sample(dtype, bytes_per_element, shape):
    released = torch.zeros(*shape, dtype=dtype)
    per_sample = math.prod(shape[1:])
    assert released_bytes_per_sample(released) == bytes_per_element * per_sample


def test_client_flops_of_a_linear_layer():
    layer = nn.Linear(10, 5)
    assert client_flops_per_sample(layer, torch.rand(8, 10)) == 2 * 10 * 5
    assert client_flops_per_sample(nn.Linear(10, 5, bias=False), torch.rand(1, 10)) == 100


def test_client_flops_are_per_sample_and_leave_no_graph():
    network = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 10))
    flops = client_flops_per_sample(network, torch.rand(16, 1, 8, 8))
    conv = 2 * (1 * 3 * 3) * 4 * 8 * 8
    linear = 2 * 256 * 10
    assert flops == conv + linear
    assert client_flops_per_sample(network, torch.rand(1, 1, 8, 8)) == flops
    assert all(p.grad is None for p in network.parameters())


# ----------------------------------------------------------------------------- the most exposed images
def _gallery(count, seed, shape=(1, 8, 8)):
    return torch.rand(count, *shape, generator=torch.Generator().manual_seed(seed))


def test_identification_rate_is_one_for_perfect_reconstructions():
    from bench.metrics.reconstruction import exposure_metrics

    originals, distractors = _gallery(20, 0), _gallery(100, 1)
    metrics, details = exposure_metrics(originals.clone(), originals, distractors)
    assert metrics["identification_rate"] == 1.0
    pixel = details["identification"]["pixel"]
    assert pixel["low"] > 0.8 and pixel["high"] == 1.0  # 20 of 20: Clopper-Pearson's lower bound 0.83
    assert details["identification"]["gallery"] == 120 and pixel["chance"] == pytest.approx(1 / 120)
    assert metrics["share_psnr_above"] == 1.0 and metrics["share_ssim_above"] == 1.0
    assert metrics["psnr_top_decile"] == PSNR_CAP_DB


def test_identification_rate_of_noise_is_at_chance_and_its_interval_covers_it():
    from bench.metrics.reconstruction import identification_hits, identification_rate

    gallery_size, attacked, rates, covered = 10, 10, [], 0
    for seed in range(40):
        gallery = _gallery(gallery_size, 2 * seed)
        noise = _gallery(attacked, 2 * seed + 1)  # drawn independently of the originals: no information
        result = identification_rate(identification_hits(noise, gallery), gallery_size)
        rates.append(result["rate"])
        covered += result["low"] <= 1 / gallery_size <= result["high"]
    # 400 guesses at chance 0.1: the mean's standard error is 0.015
    assert abs(np.mean(rates) - 1 / gallery_size) < 0.05
    assert covered >= 36  # a 95% interval covers the truth in (about) 38 of 40 runs


def test_exposure_metrics_see_half_the_images_intact():
    """The case a mean hides: half the images perfect, half noise."""
    from bench.metrics.reconstruction import exposure_examples, exposure_metrics

    originals = _gallery(20, 3)
    reconstructed = torch.cat([originals[:10], _gallery(10, 4)])
    metrics, _ = exposure_metrics(reconstructed, originals, _gallery(200, 5))
    assert 0.5 <= metrics["identification_rate"] <= 0.55 and metrics["share_psnr_above"] == 0.5
    psnr = per_image_metrics(reconstructed, originals)["psnr"]
    shown_originals, shown, *_ = exposure_examples(originals, reconstructed, psnr, count=4)
    assert len(shown) == 8 and torch.equal(shown[4:], shown_originals[4:])  # the best four: the intact ones


def test_identification_in_a_reference_networks_feature_space():
    from bench.metrics.reconstruction import exposure_metrics, reference_network

    generator = torch.Generator().manual_seed(6)
    labels = torch.arange(60) % 3
    images = (labels.view(-1, 1, 1, 1) / 2 + 0.1 * torch.randn(60, 1, 8, 8, generator=generator)).clamp(0, 1)
    reference = reference_network(images, labels, epochs=1)
    assert reference is reference_network(images, labels, epochs=1)  # trained once, shared
    assert reference_network(images, torch.rand(60)) is None  # no classes: no feature space
    metrics, details = exposure_metrics(images[:10].clone(), images[:10], images[10:], reference)
    assert metrics["identification_rate_features"] == 1.0
    assert details["identification"]["features"]["images"] == 10


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda f: f["identification_hits"](_gallery(5, 0), _gallery(4, 1)), "gallery at least as large"),
        (lambda f: f["exposure_metrics"](_gallery(3, 0), _gallery(3, 0), psnr_threshold=120.0), "PSNR threshold"),
        (lambda f: f["exposure_metrics"](_gallery(3, 0), _gallery(3, 0), ssim_threshold=1.5), "SSIM threshold"),
    ],
)
def test_exposure_bad_input_is_one_clear_error(call, message):
    from bench.errors import BenchError
    from bench.metrics import reconstruction

    with pytest.raises(BenchError, match=message):
        call(vars(reconstruction))


def test_worst_case_picks_the_winning_decoder_on_each_metric():
    """Each family wins once: the worst case must find every one, in the defender's direction."""
    from bench.metrics.reconstruction import worst_case

    directions = {"mse": "higher", "psnr": "lower", "ssim": "lower", "identification_rate": "lower"}
    per_decoder = {
        "mirror": {"mse": 0.01, "psnr": 20.0, "ssim": 0.5, "identification_rate": 0.2},
        "upsampling": {"mse": 0.03, "psnr": 23.0, "ssim": 0.4, "identification_rate": 0.1},
        "unet_small": {"mse": 0.02, "psnr": 21.0, "ssim": 0.7, "identification_rate": 0.3},
        "affine": {"mse": 0.04, "psnr": 19.0, "ssim": 0.3, "identification_rate": 0.9},
    }
    metrics, winners = worst_case(per_decoder, directions)
    assert winners == {"mse": "mirror", "psnr": "upsampling", "ssim": "unet_small", "identification_rate": "affine"}
    assert metrics == {"mse": 0.01, "psnr": 23.0, "ssim": 0.7, "identification_rate": 0.9}
