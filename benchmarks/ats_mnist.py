"""ATS as the paper measured it, on the real MNIST test set, scaled to a 2-core CPU, in one command.

1. Algorithm 1 (``bench.ats.search``) with the paper's thresholds on the reference's S_acc scale: M^s a ConvNet
   (width 16) trained on 10% of the training pool for 50 epochs, M^r a random one, S_acc over 10 rounds of one
   image per class, S_pri (the reference's: layer-mean cosine, 21-point trapezoid) on 16 validation images;
   T_acc = -12 (appendix A; with N = 10 classes S_acc <= -10, so -10 passes nothing). It writes
   ``policies/ats_mnist_shared_paper.json`` and prints how many candidates passed (``--skip_search``: reads
   both from that file).
2. ``bench fit --config ats/mnist_shared_paper`` per defense (one fresh process each, as ``bench sweep`` runs):
   8 epochs, then Inverting Gradients as inversefed runs it (1,000 iterations) on the trained model, 8 images at
   batch 1 and one batch of 8, labels given (the paper's protocol) and recovered; every defense's trained stage
   first. Then ``bench evaluate`` on each run's epoch=1 checkpoint (a quarter of the training cost): the
   semi-trained stage, in ``--runs`` order (what matters most first, if time runs out).
3. A table: accuracy, PSNR (mean, 95% t interval, images) / SSIM against the trained-on image and label accuracy,
   labels given and recovered, batch 1 and 8, trained and semi-trained.

    python benchmarks/ats_mnist.py [--mnist ../shared/datasets/mnist] [--records runs/ats_mnist_paper/records]
        [--runs none searched_hybrid paper_hybrid gaussian_1e-2 ...] [--stages trained semi] [--skip_search]
        [--table_only]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from bench.ats.search import main as search_main
from bench.metrics.reconstruction import mean_interval
from bench.records import load_records

POLICY_FILE = "policies/ats_mnist_shared_paper.json"
#: the semi-trained stage: the checkpoint after this epoch (0-based; 20 of the 80 steps)
SEMI_EPOCH = 1
#: in the order the semi-trained stage is run: the comparisons the verdict rests on first
RUNS = {
    "none": [],
    "searched_hybrid": ["--model.policy", POLICY_FILE],
    "paper_hybrid": ["--model.policy", "42-28-42+14-48-48"],
    "gaussian_1e-2": ["--model.defense", "gaussian", "--model.noise_scale", "0.01"],
    "laplacian_1e-2": ["--model.defense", "laplacian", "--model.noise_scale", "0.01"],
    "pruning_99": ["--model.defense", "pruning", "--model.prune_ratio", "0.99"],
    "gaussian_1e-3": ["--model.defense", "gaussian", "--model.noise_scale", "0.001"],
    "laplacian_1e-3": ["--model.defense", "laplacian", "--model.noise_scale", "0.001"],
    "pruning_95": ["--model.defense", "pruning", "--model.prune_ratio", "0.95"],
    "pruning_70": ["--model.defense", "pruning", "--model.prune_ratio", "0.7"],
    "paper_hybrid_no_crop_flip": ["--model.policy", "42-28-42+14-48-48", "--model.crop_flip", "false"],
    "random_19-1-18": ["--model.policy", "19-1-18"],
    "searched_hybrid_no_crop_flip": ["--model.policy", POLICY_FILE, "--model.crop_flip", "false"],
    "paper_42-28-42": ["--model.policy", "42-28-42"],
    "paper_14-48-48": ["--model.policy", "14-48-48"],
}
DEFAULT_RUNS = [name for name in RUNS if not name.startswith("paper_") or name.startswith("paper_hybrid")]
#: (column, attack): labels given (the paper's protocol) and recovered from the gradient, batch 1 and 8
ATTACKS = (
    ("b1 given", "gradient_inversion_labels_given"),
    ("b1 recovered", "gradient_inversion"),
    ("b8 given", "gradient_inversion_batch8_labels_given"),
    ("b8 recovered", "gradient_inversion_batch8"),
)
SEARCH = [
    "--data",
    "LocalFolder",
    "--pool_limit",
    "1000",
    "--network",
    "convnet",
    "--width",
    "16",
    "--c_max",
    "30",
    "--n",
    "4",
    "--images",
    "8",
    "--points",
    "20",
    "--rounds",
    "10",
    "--semi_epochs",
    "50",
    "--t_acc",
    "-12",
]


def run(command: list[str]) -> None:
    print("ats_mnist: python -m bench.cli " + " ".join(command), flush=True)
    if subprocess.run([sys.executable, "-m", "bench.cli", *command]).returncode != 0:
        raise SystemExit(f"failed: {' '.join(command)}")


def search_summary(settings: dict, evaluated: int, hybrid: str) -> str:
    return (
        f"search: {settings['passed_t_acc']} of {evaluated} candidates passed T_acc = {settings['t_acc']}; "
        f"hybrid {hybrid}"
    )


def psnr_cell(entry: dict) -> str:
    """PSNR mean [95% CI] (n) / SSIM and, where labels were recovered, the label accuracy."""
    if not entry:
        return "-"
    per_image = entry.get("details", {}).get("per_image", {})
    psnr = per_image.get("psnr") or [entry["metrics"]["psnr"]]
    mean, low, high = mean_interval(psnr)
    interval = "" if low is None else f" [{low:.1f}, {high:.1f}]"
    labels = (
        ""
        if entry.get("details", {}).get("labels") == "given"
        else f", labels {entry['metrics']['label_accuracy']:.2f}"
    )
    return f"{mean:.2f}{interval} (n={len(psnr)}) / {entry['metrics']['ssim']:.3f}{labels}"


def per_image_psnr(entry: dict) -> list[float]:
    return (entry.get("details", {}).get("per_image", {}) or {}).get("psnr") or []


def difference_cell(entry: dict, baseline: dict) -> str:
    """Mean PSNR change against no defense on the same images (paired by image) with its 95% t interval."""
    ours, theirs = per_image_psnr(entry), per_image_psnr(baseline)
    if not ours or len(ours) != len(theirs):
        return "-"
    mean, low, high = mean_interval([a - b for a, b in zip(ours, theirs)])
    return f"{mean:+.2f}" + ("" if low is None else f" [{low:+.1f}, {high:+.1f}]")


def print_table(records_dir: Path) -> None:
    rows = []
    for record in load_records([records_dir]).records:
        semi = "checkpoint" in record.get("config", {})
        epochs = (record.get("training") or {}).get("epochs") or (record.get("config", {}).get("training") or {}).get(
            "epochs"
        )
        rows.append(
            {
                "label": record["method"]["label"],
                "semi": semi,
                "accuracy": record["utility"]["accuracy"],
                "stage": (
                    f"semi-trained ({epochs} of {(record['config'].get('trainer') or {}).get('max_epochs')} epochs)"
                    if semi
                    else f"trained ({epochs} epochs)"
                ),
                "attacks": {entry["attack"]: entry for entry in record["privacy"]},
            }
        )
    rows.sort(key=lambda r: (r["semi"], r["label"] != "Collaborative (no defense)", r["label"]))
    print("\n| defense | stage | accuracy | " + " | ".join(f"PSNR {c} (dB) / SSIM" for c, _ in ATTACKS) + " |")
    print("| --- | --- | --- |" + " --- |" * len(ATTACKS))
    for row in rows:
        print(
            f"| {row['label']} | {row['stage']} | {row['accuracy']:.4f} | "
            + " | ".join(psnr_cell(row["attacks"].get(a, {})) for _, a in ATTACKS)
            + " |"
        )
    print("\nAgainst no defense at the same stage (PSNR paired by image, mean [95% t interval]):\n")
    print(
        "| defense | stage | accuracy change (points) | "
        + " | ".join(f"PSNR change {c} (dB)" for c, _ in ATTACKS)
        + " |"
    )
    print("| --- | --- | --- |" + " --- |" * len(ATTACKS))
    for row in rows:
        baseline = next(
            (r for r in rows if r["semi"] == row["semi"] and r["label"] == "Collaborative (no defense)"), None
        )
        if baseline is None or baseline is row:
            continue
        print(
            f"| {row['label']} | {row['stage']} | {100 * (row['accuracy'] - baseline['accuracy']):+.1f} | "
            + " | ".join(difference_cell(row["attacks"].get(a, {}), baseline["attacks"].get(a, {})) for _, a in ATTACKS)
            + " |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mnist", default="../shared/datasets/mnist")
    parser.add_argument("--records", default="runs/ats_mnist_paper/records")
    parser.add_argument("--runs", nargs="+", default=DEFAULT_RUNS, choices=list(RUNS))
    parser.add_argument("--stages", nargs="+", default=["trained", "semi"], choices=["trained", "semi"])
    parser.add_argument("--skip_search", action="store_true", help=f"reuse {POLICY_FILE}")
    parser.add_argument("--table_only", action="store_true", help="print the table of the records already there")
    args = parser.parse_args()
    root = Path(args.records).parent
    if args.table_only:
        print_table(Path(args.records))
        return

    if args.skip_search:
        written = json.loads(Path(POLICY_FILE).read_text())
        print(
            search_summary(written["settings"], written["evaluated"], written["policy"]) + f" (from {POLICY_FILE})",
            flush=True,
        )
    else:
        result = search_main([*SEARCH, "--data_dir", args.mnist, "--output", POLICY_FILE])
        print(search_summary(result.settings, len(result.evaluated), result.hybrid()), flush=True)

    if "trained" in args.stages:
        for name in args.runs:
            run(
                [
                    "fit",
                    "--config",
                    "ats/mnist_shared_paper",
                    "--data.data_dir",
                    args.mnist,
                    "--trainer.logger",
                    "false",
                    "--trainer.enable_progress_bar",
                    "false",
                    "--trainer.default_root_dir",
                    str(root / name),
                    "--evaluation.records_dir",
                    args.records,
                    "--evaluation.leaderboard_dir",
                    "null",
                    *RUNS[name],
                ]
            )
    if "semi" in args.stages:
        for name in args.runs:
            semi = sorted((root / name / "checkpoints").glob(f"epoch={SEMI_EPOCH}-*.ckpt"))
            if not semi:
                raise SystemExit(
                    f"no epoch={SEMI_EPOCH} checkpoint under {root / name / 'checkpoints'}: run the trained stage first"
                )
            run(
                [
                    "evaluate",
                    str(semi[0]),
                    "--data_dir",
                    args.mnist,
                    "--evaluation.records_dir",
                    args.records,
                    "--evaluation.leaderboard_dir",
                    "null",
                ]
            )
    print_table(Path(args.records))


if __name__ == "__main__":
    main()
