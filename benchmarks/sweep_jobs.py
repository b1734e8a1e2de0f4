"""Wall time of a tiny 4-point sweep, ``bench sweep --jobs 1`` vs ``--jobs 2``, side by side in one run.

Four trainings of the DNN on the embedded digits (different learning rates), each one ``bench fit`` with
a feature-inversion attack, run once one after another and once two at a time, each sweep in its own
fresh folder (its own records). Prints both wall times, the ratio, and whether the two sweeps' records
(accuracy and every attack metric) are identical.

By default each point gets ``cores // jobs`` threads (what ``bench sweep`` does): one point at a time
uses every core, two at a time one core each. Thread counts change the order of float reductions, so
the numbers can then differ in the last digits; ``--threads 1`` gives every point one thread in both
sweeps, and the records must be identical to the bit.

    python benchmarks/sweep_jobs.py [--repeats 2] [--threads 1] [--epochs 2] [--pool_limit 256]
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


def largest_difference(a: dict[str, dict[str, float]], b: dict[str, dict[str, float]], prefix: str = "") -> float:
    """The largest relative difference between the same metric of the same point (metrics starting with ``prefix``)."""
    worst = 0.0
    for key in a:
        for metric, value in a[key].items():
            if not metric.startswith(prefix):
                continue
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
    parser.add_argument("--repeats", type=int, default=1, help="pairs of sweeps, alternating which runs first")
    args = parser.parse_args()
    attacks = json.dumps([{"class_path": "FeatureInversion", "init_args": {"epochs": 5, "progress": False}}])
    extra = [
        "--trainer.max_epochs",
        str(args.epochs),
        "--data.pool_limit",
        str(args.pool_limit),
        "--trainer.logger",
        "false",
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.enable_model_summary",
        "false",
        "--evaluation.attacks",
        attacks,
        "--evaluation.records_dir",
        "records",
        "--evaluation.leaderboard_dir",
        "board",
    ]
    home = Path.cwd()
    load_before = os.getloadavg()[0]
    walls: dict[int, list[float]] = {1: [], 2: []}
    results: dict[int, list[dict]] = {1: [], 2: []}
    with tempfile.TemporaryDirectory(prefix="bench-sweep-jobs-") as root:
        for repeat in range(args.repeats):
            # alternate which goes first, so a change in the machine's load does not favour one side
            for jobs in (1, 2) if repeat % 2 == 0 else (2, 1):
                folder = Path(root) / f"jobs{jobs}-{repeat}"
                folder.mkdir()
                os.chdir(folder)
                try:
                    Path("sweep.yaml").write_text(SWEEP)
                    started = time.perf_counter()
                    result = launch(
                        "sweep.yaml", jobs=jobs, threads=args.threads, extra_args=extra, report=lambda line: None
                    )
                    walls[jobs].append(time.perf_counter() - started)
                    if result.failed or len(result.outcomes) != 4:
                        raise SystemExit(f"--jobs {jobs}: {result.summary()}")
                    results[jobs].append(numbers(folder / "records"))
                finally:
                    os.chdir(home)
    threads = args.threads or f"cores // jobs ({available_cores()} cores)"
    print(
        f"4-point sweep (DNN on digits, {args.epochs} epochs, pool_limit {args.pool_limit}, "
        "feature inversion 5 epochs), "
        f"OMP_NUM_THREADS: {threads}; 1-minute load average {load_before:.1f} at the start, {os.getloadavg()[0]:.1f} "
        f"at the end, on {available_cores()} cores"
    )
    for repeat in range(args.repeats):
        print(
            f"  repeat {repeat + 1}: --jobs 1 {walls[1][repeat]:7.1f} s, --jobs 2 {walls[2][repeat]:7.1f} s wall: "
            f"{walls[1][repeat] / walls[2][repeat]:.2f}x"
        )
    print(f"  speed-up --jobs 2 / --jobs 1 (total wall): {sum(walls[1]) / sum(walls[2]):.2f}x")
    reference = results[1][0]
    others = results[1][1:] + results[2]
    same_points = all(other.keys() == reference.keys() for other in others)
    identical = same_points and all(other == reference for other in others)
    print(
        f"  records: {'identical' if identical else 'not identical'} across all {1 + len(others)} sweeps "
        f"({len(reference)} points each, same keys: {same_points})"
    )
    if same_points and not identical:
        utility = max(largest_difference(reference, other, "utility.") for other in others)
        overall = max(largest_difference(reference, other) for other in others)
        print(
            f"    largest relative difference: utility {utility:.2e}, all metrics {overall:.2e} "
            "(thread counts differ between --jobs 1 and 2: float reductions; --threads 1 makes them equal)"
        )


if __name__ == "__main__":
    main()
