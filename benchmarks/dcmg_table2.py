"""Table 2 of Wang et al. (AAAI 2024) on the real MNIST test set.

How much Algorithm 1's noisy images look like the originals.

For the training pool of ``dcmg/mnist_shared_*`` (the same pools and lambda_noise = 2), prints the largest
and the mean PSNR, SSIM and FSIM (piq) between the originals and (a) the images with eta_c alone, as the paper's
Table 2 measures them, and (b) x_noise with eta_c and eta_r, the images the DCMG-N server receives, at
each measurement rate (eta_r depends on A). No training: a few seconds.

    python benchmarks/dcmg_table2.py [--data_dir ../shared/datasets/mnist] [--lam_noise 2]
"""

from __future__ import annotations

import argparse
import time

import torch

from bench.attacks.compressed_reconstruction import per_image_similarity
from bench.datamodules import LocalFolder
from bench.modules import DCMGN

PAPER = {"psnr_max": 6.9300, "ssim_max": 0.2487, "fsim_max": 0.3909}  # Table 2, MNIST (eta_c alone; FSIMc)


def summary(images, originals) -> dict[str, float]:
    values = dict(zip(("psnr", "ssim", "fsim"), per_image_similarity(images, originals, fsim=True)))
    return {
        f"{metric}_{statistic}": getattr(v, statistic)().item()
        for metric, v in values.items()
        for statistic in ("max", "mean")
    }


def row(name: str, rate: str, values: dict[str, float]) -> str:
    cells = [f"{values['psnr_max']:.2f}", f"{values['psnr_mean']:.2f}"]
    cells += [f"{values[key]:.4f}" for key in ("ssim_max", "ssim_mean", "fsim_max", "fsim_mean")]
    return f"| {name} | {rate} | " + " | ".join(cells) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", default="../shared/datasets/mnist")
    parser.add_argument("--lam_noise", type=float, default=2.0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    datamodule = LocalFolder(data_dir=args.data_dir, name="mnist_t10k")
    originals, _ = datamodule.pool("train").tensors()
    print(f"training pool: {len(originals)} images; lambda_noise = {args.lam_noise}\n")
    print("| images | m/n | PSNR max (dB) | PSNR mean (dB) | SSIM max | SSIM mean | FSIM max | FSIM mean |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    print(
        f"| paper, Table 2 (eta_c alone) | - | {PAPER['psnr_max']:.2f} | - | {PAPER['ssim_max']:.4f} | - | "
        f"{PAPER['fsim_max']:.4f} | - |"
    )
    for rate in (0.05, 0.1, 0.25):
        clock = time.perf_counter()
        module = DCMGN(data_spec=datamodule.spec, measurement_rate=rate, lam_noise=args.lam_noise).eval()
        with torch.no_grad():
            constant = summary(module.noise.constant_only(originals), originals)
            noisy = summary(module.noise(originals), originals)
        seconds = time.perf_counter() - clock
        if rate == 0.05:  # eta_c does not depend on A: one row is enough
            print(row("ours, eta_c alone", "any", constant))
        print(row("ours, x_noise (eta_c + eta_r)", str(rate), noisy) + f"  ({seconds:.1f} s)")


if __name__ == "__main__":
    main()
