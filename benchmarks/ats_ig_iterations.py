"""How Inverting Gradients' PSNR grows with its iteration count on a trained checkpoint (ATS's attack budget).

The paper runs 4,800 iterations (Fig. 2: a reduced 2,500); a CPU cannot afford that for every defense, so this
measures where the attack plateaus on the undefended trained model: batch size 1, labels given (the paper's
protocol), the first ``--images`` test images, one batched optimisation per iteration count (inversefed's step
schedule scales with it). Prints mean PSNR / SSIM against the trained-on image with 95% t intervals and seconds.

    python benchmarks/ats_ig_iterations.py runs/ats_mnist_paper/none/checkpoints/last.ckpt \\
        [--data_dir ../shared/datasets/mnist] [--iterations 200 1000 2500] [--images 4]
"""

from __future__ import annotations

import argparse
import time

import torch

from bench.attacks import GradientInversion
from bench.checkpoints import load_checkpoint
from bench.metrics.reconstruction import mean_interval


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--data_dir", default="../shared/datasets/mnist")
    parser.add_argument("--iterations", type=int, nargs="+", default=[200, 1000, 2500])
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--labels", default="given")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    module, datamodule, _ = load_checkpoint(args.checkpoint, data_dir=args.data_dir, device="cpu")
    datamodule.setup("test")
    print("| iterations | PSNR (dB), mean [95% CI] | per image | SSIM | seconds |\n| --- | --- | --- | --- | --- |")
    for iterations in args.iterations:
        attack = GradientInversion(iterations=iterations, num_images=args.images, labels=args.labels, progress=False)
        start = time.perf_counter()
        result = attack.run(module, datamodule, torch.Generator().manual_seed(args.seed))
        seconds = time.perf_counter() - start
        psnr = result.details["per_image"]["psnr"]
        mean, low, high = mean_interval(psnr)
        interval = "" if low is None else f" [{low:.2f}, {high:.2f}]"
        print(
            f"| {iterations} | {mean:.2f}{interval} | {' '.join(f'{v:.1f}' for v in psnr)} | "
            f"{result.metrics['ssim']:.3f} | {seconds:.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
