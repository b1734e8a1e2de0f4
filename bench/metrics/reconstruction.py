"""How close a reconstruction is to the original, for images in [0, 1]."""

from __future__ import annotations

import math
from typing import Optional

import torch
from scipy import stats
from torch import Tensor
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

#: a perfect reconstruction has infinite PSNR; capping it keeps one perfect image from making a mean infinite
PSNR_CAP_DB = 100.0


def ssim_kernel_size(height: int, width: int, preferred: int = 11) -> int:
    """SSIM's usual 11x11 Gaussian window, shrunk (odd) for images smaller than it, e.g. 8x8 digits."""
    largest_odd = min(height, width) - (1 - min(height, width) % 2)
    return max(3, min(preferred, largest_odd))


#: fewer images than this per mean: the interval is wide and the mean easily moved by one image (say so)
SMALL_SAMPLE = 8


@torch.no_grad()
def per_image_metrics(reconstructed: Tensor, original: Tensor) -> dict[str, Tensor]:
    """PSNR (capped at :data:`PSNR_CAP_DB`) and SSIM of every image of (N, C, H, W) batches in [0, 1]: what
    :func:`reconstruction_metrics` averages, kept per image for intervals."""
    if reconstructed.shape != original.shape:
        raise ValueError(
            f"shapes differ: reconstructed {tuple(reconstructed.shape)} vs original {tuple(original.shape)}"
        )
    reconstructed, original = reconstructed.float().clamp(0, 1), original.float()
    psnr = peak_signal_noise_ratio(reconstructed, original, data_range=1.0, reduction="none", dim=(1, 2, 3))
    kernel = ssim_kernel_size(*original.shape[-2:])
    # torchmetrics sizes a Gaussian window from sigma alone (11 for the usual 1.5): scale sigma with the window
    ssim = structural_similarity_index_measure(
        reconstructed, original, data_range=1.0, sigma=1.5 * kernel / 11, reduction="none"
    )
    return {"psnr": psnr.clamp(max=PSNR_CAP_DB), "ssim": ssim}


def mean_interval(values, confidence: float = 0.95) -> tuple[float, Optional[float], Optional[float]]:
    """Mean of ``values`` and its two-sided Student-t interval (the images as independent draws); no interval
    (None, None) for fewer than two values. Equal values give a zero-width interval."""
    data = torch.as_tensor(values, dtype=torch.float64).flatten()
    if data.numel() == 0:
        raise ValueError("mean_interval needs at least one value")
    mean = data.mean().item()
    if data.numel() < 2:
        return mean, None, None
    half = (
        float(stats.t.ppf(0.5 + confidence / 2, data.numel() - 1))
        * data.std(unbiased=True).item()
        / math.sqrt(data.numel())
    )
    return mean, mean - half, mean + half


def per_image_details(per_image: dict[str, Tensor], label_correct: Optional[Tensor] = None) -> dict:
    """A record's per-image details: PSNR / SSIM per image, 95% Student-t intervals of their means (read by the
    leaderboard, ``details.intervals``), the Clopper-Pearson interval of the label accuracy where labels were
    recovered (a proportion), and a warning under :data:`SMALL_SAMPLE` images. Images reconstructed by one
    optimisation (a shared batch) are correlated: the interval then treats them as independent (too narrow)."""
    from bench.metrics.membership import clopper_pearson

    details: dict = {
        "per_image": {
            "psnr": [round(v, 4) for v in per_image["psnr"].tolist()],
            "ssim": [round(v, 5) for v in per_image["ssim"].tolist()],
        }
    }
    intervals = {}
    for metric in ("psnr", "ssim"):
        _, low, high = mean_interval(per_image[metric])
        if low is not None:
            intervals[metric] = [low, high]
    if label_correct is not None:
        details["per_image"]["label_correct"] = label_correct.flatten().tolist()
        intervals["label_accuracy"] = list(clopper_pearson(int(label_correct.sum()), label_correct.numel()))
    if intervals:
        details["intervals"] = intervals
    count = per_image["psnr"].numel()
    if count < SMALL_SAMPLE:
        details["warning"] = (
            f"only {count} images: the mean PSNR moves by dB with one image; "
            f"use num_images x batch_size >= {SMALL_SAMPLE}"
        )
    return details


@torch.no_grad()
def reconstruction_metrics(
    reconstructed: Tensor, original: Tensor, per_image: Optional[dict[str, Tensor]] = None
) -> dict[str, float]:
    """MSE, mean absolute error, PSNR and SSIM between image batches in [0, 1], averaged over images.

    PSNR is computed per image (capped at :data:`PSNR_CAP_DB`) and then averaged, as the papers
    report it; SSIM uses a Gaussian window whose size adapts to small images (:func:`ssim_kernel_size`).
    """
    per_image = per_image_metrics(reconstructed, original) if per_image is None else per_image
    reconstructed, original = reconstructed.float().clamp(0, 1), original.float()
    return {
        "mse": (reconstructed - original).square().mean().item(),
        "mae": (reconstructed - original).abs().mean().item(),
        "psnr": per_image["psnr"].mean().item(),
        "ssim": per_image["ssim"].mean().item(),
    }
