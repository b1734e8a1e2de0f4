"""Wall time of a tiny 4-point sweep, ``bench sweep --jobs 1`` vs ``--jobs 2``, side by side in one run.

Four trainings of the DNN on the embedded digits (different learning rates), each one ``bench fit`` with
a feature-inversion attack, run once one after another and once two at a time, each sweep in its own
fresh folder (its own records). Prints both wall times, the ratio, and whether the two sweeps' records
(accuracy and every attack metric) are identical.

By default each point gets ``cores // jobs`` threads (what ``bench sweep`` does): one point at a time
uses every core, two at a time one core each. Thread counts change the order of float reductions, so
the numbers can then differ in the last digits; ``--threads 1`` gives every point one thread in both
sweeps, and the records must be identical to the bit.

    python benchmarks/sweep_jobs.py [--threads 1] [--epochs 2] [--pool_limit 256]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time
from pathlib import Path

from bench.records import load_records
from bench.sweeps import launch
from bench.sweeps.node import available_cores

SWEEP = "runs:\n  - config: dnn/tiny\n    grid:\n      model.lr: [0.001, 0.002, 0.003, 0.005]\n"


def numbers(records_dir: Path) -> dict[str, dict[str, float]]:
    """Each point's accuracy and attack metrics, by point key."""
    loaded = load_records([records_dir])
    out = {}
    for record in loaded.records:
        metrics = {f"utility.{k}": v for k, v in record["utility"].items()}
        for entry in record["privacy"]:
            metrics.update({f"{entry['attack']}.{k}": v for k, v in entry["metrics"].items()})
        out[record["config"]["sweep_point"]] = metrics
    return out


def largest_difference(a: dict[str, dict[str, float]], b: dict[str, dict[str, float]]) -> float:
    worst = 0.0
    for key in a:
        for metric, value in a[key].items():
            other = b[key][metric]
            if value is None or other is None:
                worst = max(worst, 0.0 if value == other else math.inf)
            else:
                worst = max(worst, abs(value - other) / max(abs(value), 1e-12))
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, help="OMP_NUM_THREADS of every point (default: cores // jobs)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--pool_limit", type=int, default=256)
    args = parser.parse_args()
    attacks = json.dumps([{"class_path": "FeatureInversion", "init_args": {"epochs": 5, "progress": False}}])
    extra = ["--trainer.max_epochs", str(args.epochs), "--data.pool_limit", str(args.pool_limit),
             "--trainer.logger", "false", "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
             "--evaluation.attacks", attacks, "--evaluation.records_dir", "records", "--evaluation.leaderboard_dir", "board"]
    home = Path.cwd()
    walls, results = {}, {}
    with tempfile.TemporaryDirectory(prefix="bench-sweep-jobs-") as root:
        for jobs in (1, 2):
            folder = Path(root) / f"jobs{jobs}"
            folder.mkdir()
            os.chdir(folder)
            try:
                Path("sweep.yaml").write_text(SWEEP)
                started = time.perf_counter()
                result = launch("sweep.yaml", jobs=jobs, threads=args.threads, extra_args=extra, report=lambda line: None)
                walls[jobs] = time.perf_counter() - started
                if result.failed or len(result.outcomes) != 4:
                    raise SystemExit(f"--jobs {jobs}: {result.summary()}")
                results[jobs] = numbers(folder / "records")
            finally:
                os.chdir(home)
    threads = args.threads or f"cores // jobs ({available_cores()} cores)"
    print(f"4-point sweep (DNN on digits, {args.epochs} epochs, pool_limit {args.pool_limit}, feature inversion 5 epochs), "
          f"OMP_NUM_THREADS: {threads}")
    print(f"  --jobs 1: {walls[1]:7.1f} s wall")
    print(f"  --jobs 2: {walls[2]:7.1f} s wall")
    print(f"  speed-up --jobs 2 / --jobs 1: {walls[1] / walls[2]:.2f}x")
    same_points = results[1].keys() == results[2].keys()
    identical = same_points and results[1] == results[2]
    difference = largest_difference(results[1], results[2]) if same_points else math.inf
    print(f"  records: {'identical' if identical else f'largest relative difference {difference:.2e}'} "
          f"({len(results[1])} points, same keys: {same_points})")


if __name__ == "__main__":
    main()
