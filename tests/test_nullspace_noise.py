"""Algorithm 1's noise (Wang et al., AAAI 2024): eta_r in Null(A), x_noise in [0, 1], Eq. 5's measurements."""

from __future__ import annotations

import functools
import math

import pytest
import torch

from bench.errors import BenchError
from bench.networks.compressive import gaussian_measurement_matrix, measurement_count
from bench.privacy import NullSpaceNoise

# MNIST at the paper's lowest and highest rate, SVHN / CIFAR-10 (n = 3072) at the lowest
SETTINGS = [((1, 28, 28), 0.05, 2.0), ((1, 28, 28), 0.25, 2.0), ((3, 32, 32), 0.05, 1.0)]


@functools.lru_cache(maxsize=None)  # SciPy's null space of a 153 x 3072 A takes a second: build each once
def _noise(shape, rate, lam_noise, seed=0):
    n = math.prod(shape)
    matrix = gaussian_measurement_matrix(measurement_count(rate, n), n, seed=7)
    return matrix, NullSpaceNoise(matrix, lam_noise=lam_noise, seed=seed)


def _images(count, shape, seed=0):
    return torch.rand(count, *shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("shape, rate, lam_noise", SETTINGS)
def test_every_eta_r_lies_in_the_null_space_of_a(shape, rate, lam_noise):
    matrix, noise = _noise(shape, rate, lam_noise)
    eta_r = noise.random_noise(_images(64, shape)).double()
    residual = eta_r @ matrix.double().T
    # to float32 precision, relative to the sizes of A and eta_r
    bound = 1e-5 * torch.linalg.matrix_norm(matrix.double(), ord=2) * eta_r.norm(dim=1)
    assert torch.all(residual.norm(dim=1) <= bound)
    # line 14: each eta_r is scaled to [-1, 1], reaching one of the ends
    torch.testing.assert_close(eta_r.abs().amax(1), torch.ones(64, dtype=torch.float64))
    # so are the candidates R, and they lie in the null space too
    assert torch.all(
        (matrix.double() @ noise.candidates.double()).norm(dim=0)
        <= 1e-5 * torch.linalg.matrix_norm(matrix.double(), ord=2)
    )
    torch.testing.assert_close(noise.candidates.abs().amax(0), torch.ones(noise.groups))


@pytest.mark.parametrize("shape, rate, lam_noise", SETTINGS)
def test_measurements_of_x_noise_differ_from_those_of_x_by_eq_5s_constant(shape, rate, lam_noise):
    matrix, noise = _noise(shape, rate, lam_noise)
    images = _images(32, shape)
    noisy = noise(images)
    a = matrix.double()
    measured_noisy = noisy.flatten(1).double() @ a.T
    # Eq. 5: A x_noise = (A x + A (lambda eta_c + 2 lambda 1)) / (4 lambda + 1), whatever eta_r was drawn
    constant = a @ (lam_noise * noise.eta_c.double() + 2 * lam_noise)
    expected = (images.flatten(1).double() @ a.T + constant) / (4 * lam_noise + 1)
    torch.testing.assert_close(measured_noisy, expected, atol=2e-5, rtol=0)
    torch.testing.assert_close(noise.measurement_offset(matrix).double(), constant, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("lam_noise", [0.5, 2.0])
def test_x_noise_stays_in_the_unit_interval_even_for_extreme_images(lam_noise):
    shape = (1, 28, 28)
    _, noise = _noise(shape, 0.1, lam_noise)
    images = torch.cat(
        [torch.zeros(1, *shape), torch.ones(1, *shape), _images(30, shape), (_images(30, shape, seed=1) > 0.5).float()]
    )
    noisy = noise(images)
    assert noisy.shape == images.shape
    assert noisy.min() >= 0 and noisy.max() <= 1
    # and the image is hidden: every pixel moves by at least lambda (0.9 - 1) / (4 lambda + 1) before eta_r
    constant_only = noise.constant_only(images)
    assert (constant_only - images).abs().min() > 0


def test_eta_r_differs_from_sample_to_sample_and_is_drawn_once_per_image():
    shape = (1, 28, 28)
    _, noise = _noise(shape, 0.1, 2.0)
    images = _images(32, shape)
    eta_r = noise.random_noise(images)
    distances = torch.cdist(eta_r, eta_r) + torch.eye(32) * 1e9
    assert distances.min() > 1e-3, "two images drew the same eta_r"
    # Algorithm 1 noises the training set once: an image seen again (next epoch, other batch) keeps its eta_r
    again = noise.random_noise(torch.cat([images[5:6], _images(3, shape, seed=9), images[:1]]))
    torch.testing.assert_close(again[0], eta_r[5])
    torch.testing.assert_close(again[-1], eta_r[0])
    # another client secret, other draws (any seed, however large)
    for seed in (1, 2, 2**40):
        _, other = _noise(shape, 0.1, 2.0, seed=seed)
        assert not torch.allclose(other.random_noise(images[:1]), eta_r[:1])


def test_eta_r_is_the_scaled_sum_of_c_times_p_columns_of_r():
    shape = (1, 28, 28)
    matrix, noise = _noise(shape, 0.1, 2.0)
    n, m = math.prod(shape), matrix.shape[0]
    assert noise.groups == round(math.sqrt(n - m))  # the paper's c = sqrt(n - m)
    assert noise.columns_per_sample == math.floor(noise.groups * 0.5)
    eta_r = noise.random_noise(_images(8, shape)).double()
    weights = torch.linalg.lstsq(noise.candidates.double(), eta_r.T).solution.T  # R w = eta_r
    for row in weights:
        chosen = row.abs() > 1e-3 * row.abs().max()
        assert int(chosen.sum()) == noise.columns_per_sample
        torch.testing.assert_close(row[chosen], row[chosen][0].expand(noise.columns_per_sample), rtol=1e-3, atol=0)


def test_eta_c_follows_line_1():
    _, noise = _noise((1, 28, 28), 0.1, 2.0)
    magnitudes = noise.eta_c.abs()
    assert magnitudes.min() >= 0.9 and magnitudes.max() <= 1.0
    positive = (noise.eta_c > 0).float().mean()
    assert 0.4 < positive < 0.6, "U(-1, -0.9) and U(0.9, 1) are equally likely"


def test_the_same_seed_gives_the_same_noise():
    matrix, first = _noise((1, 28, 28), 0.1, 2.0, seed=3)
    second = NullSpaceNoise(matrix, lam_noise=2.0, seed=3)
    for name, buffer in first.named_buffers():
        torch.testing.assert_close(buffer, dict(second.named_buffers())[name], rtol=0, atol=0)


@pytest.mark.parametrize(
    "arguments, message",
    [
        ({"lam_noise": 0.0}, "lam_noise"),
        ({"p": 0.0}, "p "),
        ({"p": 1.5}, "p "),
        ({"groups": 10_000}, "groups"),
    ],
)
def test_bad_hyper_parameters_are_rejected(arguments, message):
    matrix = gaussian_measurement_matrix(10, 64, seed=0)
    with pytest.raises(BenchError, match=message):
        NullSpaceNoise(matrix, **arguments)


def test_a_full_measurement_matrix_has_no_null_space_to_draw_from():
    with pytest.raises(BenchError, match="null space"):
        NullSpaceNoise(gaussian_measurement_matrix(64, 64, seed=0))
