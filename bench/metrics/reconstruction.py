"""How close a reconstruction is to the original, for images in [0, 1]."""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure


#: a perfect reconstruction has infinite PSNR; capping it keeps one perfect image from making a mean infinite
PSNR_CAP_DB = 100.0


def ssim_kernel_size(height: int, width: int, preferred: int = 11) -> int:
    """SSIM's usual 11x11 Gaussian window, shrunk (odd) for images smaller than it, e.g. 8x8 digits."""
    largest_odd = min(height, width) - (1 - min(height, width) % 2)
    return max(3, min(preferred, largest_odd))


@torch.no_grad()
def reconstruction_metrics(reconstructed: Tensor, original: Tensor) -> dict[str, float]:
    """MSE, mean absolute error, PSNR and SSIM between image batches in [0, 1], averaged over images.

    PSNR is computed per image (capped at :data:`PSNR_CAP_DB`) and then averaged, as the papers
    report it; SSIM uses a Gaussian window whose size adapts to small images (:func:`ssim_kernel_size`).
    """
    if reconstructed.shape != original.shape:
        raise ValueError(f"shapes differ: reconstructed {tuple(reconstructed.shape)} vs original {tuple(original.shape)}")
    reconstructed, original = reconstructed.float().clamp(0, 1), original.float()
    per_image = (1, 2, 3)
    psnr = peak_signal_noise_ratio(reconstructed, original, data_range=1.0, reduction="none", dim=per_image)
    kernel = ssim_kernel_size(*original.shape[-2:])
    # torchmetrics sizes a Gaussian window from sigma alone (11 for the usual 1.5): scale sigma with the window
    ssim = structural_similarity_index_measure(reconstructed, original, data_range=1.0, sigma=1.5 * kernel / 11)
    return {
        "mse": (reconstructed - original).square().mean().item(),
        "mae": (reconstructed - original).abs().mean().item(),
        "psnr": psnr.clamp(max=PSNR_CAP_DB).mean().item(),
        "ssim": ssim.item(),
    }
