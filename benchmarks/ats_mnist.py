"""ATS as the paper measured it, on the real MNIST test set, scaled to a 2-core CPU, in one command.

1. Algorithm 1 (``bench.ats.search``) with the paper's thresholds on the reference's S_acc scale: M^s a ConvNet
   (width 16) trained on 10% of the training pool for 50 epochs, M^r a random one, S_acc over 10 rounds of one
   image per class, S_pri (the reference's: layer-mean cosine, 21-point trapezoid) on 16 validation images;
   T_acc = -12 (appendix A; with N = 10 classes S_acc <= -10, so -10 passes nothing). It writes
   ``policies/ats_mnist_shared_paper.json`` and prints how many candidates passed.
2. ``bench fit --config ats/mnist_shared_paper`` per defense (one fresh process each, as ``bench sweep`` runs):
   Inverting Gradients as inversefed runs it on the trained model, batch 1 and 8; then ``bench evaluate`` on the
   run's first-epoch checkpoint: the semi-trained stage.
3. A table: accuracy, PSNR / SSIM against the trained-on image, semi-trained and trained, batch 1 and 8.

    python benchmarks/ats_mnist.py [--mnist ../shared/datasets/mnist] [--records runs/ats_mnist_paper/records]
        [--runs none paper_hybrid searched_hybrid gaussian_1e-2 pruning_95] [--skip_search]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from bench.ats.search import main as search_main
from bench.records import load_records

POLICY_FILE = "policies/ats_mnist_shared_paper.json"
RUNS = {
    "none": [],
    "random_19-1-18": ["--model.policy", "19-1-18"],
    "paper_42-28-42": ["--model.policy", "42-28-42"],
    "paper_14-48-48": ["--model.policy", "14-48-48"],
    "paper_hybrid": ["--model.policy", "42-28-42+14-48-48"],
    "paper_hybrid_no_crop_flip": ["--model.policy", "42-28-42+14-48-48", "--model.crop_flip", "false"],
    "searched_hybrid": ["--model.policy", POLICY_FILE],
    "searched_hybrid_no_crop_flip": ["--model.policy", POLICY_FILE, "--model.crop_flip", "false"],
    "gaussian_1e-3": ["--model.defense", "gaussian", "--model.noise_scale", "0.001"],
    "gaussian_1e-2": ["--model.defense", "gaussian", "--model.noise_scale", "0.01"],
    "laplacian_1e-3": ["--model.defense", "laplacian", "--model.noise_scale", "0.001"],
    "laplacian_1e-2": ["--model.defense", "laplacian", "--model.noise_scale", "0.01"],
    "pruning_70": ["--model.defense", "pruning", "--model.prune_ratio", "0.7"],
    "pruning_95": ["--model.defense", "pruning", "--model.prune_ratio", "0.95"],
    "pruning_99": ["--model.defense", "pruning", "--model.prune_ratio", "0.99"],
}
SEARCH = ["--data", "LocalFolder", "--pool_limit", "1000", "--network", "convnet", "--width", "16", "--c_max", "30",
          "--n", "4", "--images", "8", "--points", "20", "--rounds", "10", "--semi_epochs", "50", "--t_acc", "-12"]


def run(command: list[str]) -> None:
    print("ats_mnist: python -m bench.cli " + " ".join(command), flush=True)
    if subprocess.run([sys.executable, "-m", "bench.cli", *command]).returncode != 0:
        raise SystemExit(f"failed: {' '.join(command)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mnist", default="../shared/datasets/mnist")
    parser.add_argument("--records", default="runs/ats_mnist_paper/records")
    parser.add_argument("--runs", nargs="+", default=list(RUNS), choices=list(RUNS))
    parser.add_argument("--skip_search", action="store_true", help=f"reuse {POLICY_FILE}")
    args = parser.parse_args()

    if not args.skip_search:
        result = search_main([*SEARCH, "--data_dir", args.mnist, "--output", POLICY_FILE])
        settings = result.settings
        at_minus_10 = sum(1 for e in result.evaluated if e.s_acc >= -10.0)
        print(f"search: {settings['passed_t_acc']} of {len(result.evaluated)} candidates passed T_acc = {settings['t_acc']} "
              f"({at_minus_10} would pass -10); hybrid {result.hybrid()}", flush=True)

    root = Path(args.records).parent
    for name in args.runs:
        run_dir = root / name
        run(["fit", "--config", "ats/mnist_shared_paper", "--data.data_dir", args.mnist, "--trainer.logger", "false",
             "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(run_dir),
             "--evaluation.records_dir", args.records, "--evaluation.leaderboard_dir", "null", *RUNS[name]])
        semi = sorted((run_dir / "checkpoints").glob("epoch=0-*.ckpt"))
        if not semi:
            raise SystemExit(f"no first-epoch checkpoint under {run_dir / 'checkpoints'}")
        run(["evaluate", str(semi[0]), "--data_dir", args.mnist, "--evaluation.records_dir", args.records,
             "--evaluation.leaderboard_dir", "null"])

    print("\n| defense | stage | accuracy | PSNR b1 (dB) | SSIM b1 | PSNR b8 (dB) | SSIM b8 | PSNR vs original b1 |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for record in sorted(load_records([Path(args.records)]).records, key=lambda r: r["created"]):
        attacks = {entry["attack"]: entry["metrics"] for entry in record["privacy"]}
        one, eight = attacks.get("gradient_inversion", {}), attacks.get("gradient_inversion_batch8", {})
        epochs = (record.get("config", {}).get("training") or {}).get("epochs")
        stage = "trained" if "checkpoint" not in record.get("config", {}) else f"semi-trained (epoch {epochs})"
        print(f"| {record['method']['label']} | {stage} | {record['utility']['accuracy']:.4f} | {one.get('psnr', float('nan')):.2f} | "
              f"{one.get('ssim', float('nan')):.3f} | {eight.get('psnr', float('nan')):.2f} | {eight.get('ssim', float('nan')):.3f} | "
              f"{one.get('psnr_original', float('nan')):.2f} |")


if __name__ == "__main__":
    main()
