"""The ATS comparison on the real MNIST test set, scaled to a 2-core CPU, in one command.

1. Algorithm 1 searches policies (``bench.ats.search``: a ConvNet semi-trained on 10% of the training
   pool, S_acc on a random one) and writes ``policies/ats_mnist_shared.json``; the speed of the search
   (policies per minute) is measured with the vectorized scores and with the per-image loops, on the
   same sampled policies, side by side.
2. ``bench fit --config ats/mnist_shared`` trains and attacks (Inverting Gradients on the first test
   images) with no defense, a random policy, the searched hybrid, Gaussian and Laplacian gradient noise
   (1e-3, 1e-2) and gradient pruning (70%, 95%, 99%): one fresh process each, as ``bench sweep`` runs.
3. A table of accuracy and PSNR (against the transformed and the original image) is printed.

    python benchmarks/ats_mnist.py [--mnist ../shared/datasets/mnist] [--records runs/ats_mnist/records]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

from bench.ats.search import main as search_main
from bench.records import load_records
from bench.transforms import random_policy

RUNS = {
    "none": [],
    "random policy": ["--model.policy", str(random_policy(torch.Generator().manual_seed(2021)))],
    "searched hybrid": ["--model.policy", "{policy_file}"],
    "gaussian 1e-3": ["--model.defense", "gaussian", "--model.noise_scale", "0.001"],
    "gaussian 1e-2": ["--model.defense", "gaussian", "--model.noise_scale", "0.01"],
    "laplacian 1e-3": ["--model.defense", "laplacian", "--model.noise_scale", "0.001"],
    "laplacian 1e-2": ["--model.defense", "laplacian", "--model.noise_scale", "0.01"],
    "pruning 70%": ["--model.defense", "pruning", "--model.prune_ratio", "0.7"],
    "pruning 95%": ["--model.defense", "pruning", "--model.prune_ratio", "0.95"],
    "pruning 99%": ["--model.defense", "pruning", "--model.prune_ratio", "0.99"],
}


def search_arguments(mnist: str, c_max: int, output: str, loop: bool = False) -> list[str]:
    arguments = ["--data", "LocalFolder", "--data_dir", mnist, "--pool_limit", "2000", "--network", "convnet", "--width", "16",
                 "--c_max", str(c_max), "--n", "4", "--images", "16", "--points", "5", "--rounds", "2",
                 "--batch_size", "64", "--semi_epochs", "10", "--t_acc", "-10", "--output", output]
    return arguments + (["--loop"] if loop else [])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mnist", default="../shared/datasets/mnist")
    parser.add_argument("--records", default="runs/ats_mnist/records")
    parser.add_argument("--c_max", type=int, default=40, help="policies the search samples")
    parser.add_argument("--speed_policies", type=int, default=8, help="policies timed with both score versions")
    args = parser.parse_args()
    policy_file = "policies/ats_mnist_shared.json"

    # 1. the search, and its speed with either score implementation on the same policies (same seed)
    timings = {}
    for loop in (False, True):
        result = search_main(search_arguments(args.mnist, args.speed_policies, f"runs/ats_mnist/speed_{loop}.json", loop))
        timings["loop" if loop else "vectorized"] = result.policies_per_minute
    result = search_main(search_arguments(args.mnist, args.c_max, policy_file))
    policy = json.loads(Path(policy_file).read_text())["policy"]

    # 2. one fresh `bench fit` per defense
    started = {}
    for name, overrides in RUNS.items():
        overrides = [value.format(policy_file=policy_file) for value in overrides]
        command = ["fit", "--config", "ats/mnist_shared", "--data.data_dir", args.mnist, "--trainer.logger", "false",
                   "--trainer.enable_progress_bar", "false", "--evaluation.records_dir", args.records,
                   "--evaluation.leaderboard_dir", "null", *overrides]
        print(f"ats_mnist [{name}]: bench {' '.join(command)}", flush=True)
        started[name] = time.time()
        if subprocess.run([sys.executable, "-m", "bench.cli", *command]).returncode != 0:
            raise SystemExit(f"run '{name}' failed")

    # 3. the table, from the records the runs wrote
    records = sorted(load_records([Path(args.records)]).records, key=lambda r: r["created"])
    print(f"\nsearch: {len(result.evaluated)} policies, hybrid {policy}; policies/minute: vectorized "
          f"{timings['vectorized']:.1f}, loop {timings['loop']:.1f} (x{timings['vectorized'] / timings['loop']:.2f})")
    print("| defense | accuracy | PSNR vs trained-on image (dB) | SSIM | PSNR vs original (dB) |")
    print("| --- | --- | --- | --- | --- |")
    for name, record in zip(RUNS, records[-len(RUNS):]):
        metrics = record["privacy"][0]["metrics"]
        print(f"| {name} ({record['method']['label']}) | {record['utility']['accuracy']:.4f} | {metrics['psnr']:.2f} | "
              f"{metrics['ssim']:.3f} | {metrics['psnr_original']:.2f} |")


if __name__ == "__main__":
    main()
