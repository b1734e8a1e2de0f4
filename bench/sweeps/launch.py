"""``bench sweep`` and ``bench.sweeps.launch``: a grid of ``bench fit`` runs on one node or on SLURM.

On a node (``launcher="local"``) up to ``jobs`` points run at once, each its own process with its own
``CUDA_VISIBLE_DEVICES`` and ``OMP_NUM_THREADS = cores // jobs``; on SLURM the grid is submitted as
job arrays through submitit. Either way a point whose record (same key: same resolved settings) is
already in its records folder is skipped unless ``rerun``, each point writes only its record, and the
leaderboard is regenerated once at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from bench.errors import BenchError, CommandLineParser
from bench.sweeps import slurm as slurm_launcher
from bench.sweeps.grid import Point, finished_records, load_points, records_by_key
from bench.sweeps.node import Outcome, available_cores, run_on_node
from bench.sweeps.slots import node_capacity

LAUNCHERS = ("local", "slurm")


@dataclass
class SweepResult:
    name: str
    outcomes: list[Outcome]
    wall_seconds: float
    leaderboards: list[Path] = field(default_factory=list)
    dry_run: bool = False

    def count(self, status: str) -> int:
        return sum(outcome.status == status for outcome in self.outcomes)

    @property
    def failed(self) -> list[Outcome]:
        return [outcome for outcome in self.outcomes if outcome.status == "failed"]

    def summary(self) -> str:
        parts = [
            f"{self.count(status)} {status}"
            for status in ("done", "failed", "skipped", "submitted")
            if self.count(status) or status in ("done", "failed", "skipped")
        ]
        count = len(self.outcomes)
        lines = [
            f"bench sweep {self.name}: {count} point{'s' if count != 1 else ''}: {', '.join(parts)}; "
            f"wall time {self.wall_seconds:.0f} s"
        ]
        lines += [
            f"  failed: point {o.point.number} ({o.point.label}), exit {o.returncode}; log: {o.point.log}"
            for o in self.failed
        ]
        lines += [f"  leaderboard: {path}" for path in self.leaderboards]
        return "\n".join(lines)


def detect_gpus() -> list[str]:
    """The GPUs this process may use, as CUDA_VISIBLE_DEVICES names them (none on a CPU machine)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [gpu.strip() for gpu in visible.split(",") if gpu.strip() and gpu.strip() != "-1"]
    import torch

    return [str(index) for index in range(torch.cuda.device_count())]


def leaderboard_pairs(points: Sequence[Point]) -> list[tuple[list[str], str]]:
    """Each leaderboard folder the points' configs name, with the records folders that feed it."""
    pairs: dict[str, list[str]] = {}
    for point in points:
        if point.leaderboard_dir is not None and point.evaluates:
            records = pairs.setdefault(str(point.leaderboard_dir), [])
            if str(point.records_dir) not in records:
                records.append(str(point.records_dir))
    return [(records, out) for out, records in pairs.items()]


def _regenerate(points: Sequence[Point], report: Callable[[str], None]) -> list[Path]:
    from bench.leaderboard import generate_leaderboard

    written = []
    for records, out in leaderboard_pairs(points):
        result = generate_leaderboard(records, out)
        for file, problem in result.problems:
            report(f"bench: warning: skipped malformed record {file}: {problem}")
        written.append(Path(result.markdown))
    return written


def _supersede(outcomes: Sequence[Outcome], before: dict[str, list[Path]]) -> None:
    """After a rerun, a point's earlier records move to its run folder: the leaderboard counts each point once."""
    for outcome in outcomes:
        if outcome.status != "done":
            continue
        for old in before.get(outcome.point.key, []):
            target = outcome.point.run_dir / "superseded_records"
            target.mkdir(parents=True, exist_ok=True)
            shutil.move(str(old), target / old.name)


def launch(
    sweep: str,
    *,
    jobs: Optional[int] = None,
    gpus: Optional[Sequence[str]] = None,
    per_gpu: int = 1,
    threads: Optional[int] = None,
    launcher: str = "local",
    rerun: bool = False,
    dry_run: bool = False,
    log_dir: Optional[str] = None,
    extra_args: Sequence[str] = (),
    slurm: Optional[slurm_launcher.SlurmOptions] = None,
    cluster: str = "slurm",
    wait: bool = False,
    report: Callable[[str], None] = print,
) -> SweepResult:
    """Run (or submit) every point of a sweep.

    Args:
        sweep: a shipped sweep's name (``bench list``) or a sweep YAML file.
        jobs: points at once on this node (default: one per GPU and ``per_gpu``; 1 on a CPU machine).
        gpus: the GPUs to use (default: all visible ones); ``per_gpu``: points sharing one GPU.
        threads: OMP_NUM_THREADS of each point (default: this machine's cores // jobs).
        launcher: ``local`` (this node) or ``slurm`` (job arrays through submitit).
        rerun: run points that already have a record with their settings (their old records move aside).
        dry_run: print what would run or be submitted, run nothing.
        log_dir: where each point's folder (log, checkpoints, status) goes (default ``runs/sweeps/<sweep>``).
        extra_args: ``bench fit`` arguments added to every point (they are part of its settings and key).
        slurm: sbatch parameters; ``cluster``: submitit's ``slurm``, or ``local``/``debug`` to run the
            same tasks on this machine; ``wait``: on SLURM, wait for the arrays and summarise.
    """
    from bench import registry

    if launcher not in LAUNCHERS:
        raise BenchError(f"unknown launcher '{launcher}'; one of {', '.join(LAUNCHERS)}")
    path = registry.resolve_config(sweep, kind="sweep")
    name = Path(path).stem
    folder = Path(log_dir or Path("runs") / "sweeps" / name).resolve()
    started = time.perf_counter()
    capacity = None
    if launcher == "local":  # bad --jobs/--gpus fail before the points are resolved
        capacity = node_capacity(jobs, [str(gpu) for gpu in (detect_gpus() if gpus is None else gpus)], per_gpu)
    points = load_points(path, list(extra_args), folder)
    before = records_by_key(points)
    skipped = [] if rerun else [point for point in points if point.key in before]
    todo = [point for point in points if point not in skipped]
    outcomes = [Outcome(point, "skipped", record=before[point.key][-1]) for point in skipped]
    for outcome in outcomes:
        report(
            f"bench sweep [{outcome.point.number}/{len(points)}] skip (recorded in {outcome.record}): "
            f"{outcome.point.label}"
        )
    resume = not rerun

    if launcher == "local":
        threads = threads or max(1, available_cores() // capacity.budget)
        if dry_run:
            for point in todo:
                report(
                    f"bench sweep [{point.number}/{len(points)}] would run on {point.devices} slot(s) with "
                    f"OMP_NUM_THREADS={threads}: {shlex.join(['bench', *point.command(resume=resume)[3:]])}"
                )
            return SweepResult(name, outcomes, time.perf_counter() - started, dry_run=True)
        where = "CPU" if None in capacity.free else f"GPU(s) {','.join(capacity.free)} x {per_gpu}"
        report(
            f"bench sweep {name}: {len(todo)} point(s) to run, {capacity.budget} at once on {where}, "
            f"OMP_NUM_THREADS={threads}; logs under {folder}"
        )
        outcomes += run_on_node(todo, capacity, threads, resume, report)
    else:
        options = slurm or slurm_launcher.SlurmOptions()
        submitit_folder = folder / "submitit" / "%j"
        if dry_run:
            slurm_launcher.dry_run(todo, options, f"bench-{name}", submitit_folder, resume, report)
            return SweepResult(name, outcomes, time.perf_counter() - started, dry_run=True)
        if not todo:
            return _finish(name, outcomes, points, started, report, regenerate=False)
        pairs = leaderboard_pairs(points)
        jobs_, leaderboard_job = slurm_launcher.submit(
            todo, options, f"bench-{name}", submitit_folder, resume, cluster, pairs
        )
        array_ids = sorted({str(job.job_id).split("_")[0] for _, job in jobs_})
        report(
            f"bench sweep {name}: submitted {len(jobs_)} point(s): jobs {', '.join(array_ids)}"
            + (f"; leaderboard job {leaderboard_job.job_id} runs after them" if leaderboard_job else "")
            + f"; logs under {folder}"
        )
        if cluster == "slurm" and not wait:
            outcomes += [Outcome(point, "submitted", job_id=str(job.job_id)) for point, job in jobs_]
            return _finish(name, outcomes, points, started, report, regenerate=False)
        for point, job in jobs_:
            try:
                job.result()
                outcomes.append(Outcome(point, "done", job_id=str(job.job_id)))
            except Exception as error:  # submitit re-raises the task's failure
                report(
                    f"bench sweep [{point.number}/{len(points)}] FAILED: {point.label}: "
                    f"{str(error).strip().splitlines()[-1]}"
                )
                outcomes.append(Outcome(point, "failed", job_id=str(job.job_id)))
        if leaderboard_job is not None:
            leaderboard_job.result()
        outcomes.sort(key=lambda outcome: outcome.point.number)
        if rerun:
            _supersede(outcomes, before)
        return _finish(name, outcomes, points, started, report, regenerate=leaderboard_job is None)
    if rerun:
        _supersede(outcomes, before)
    return _finish(name, outcomes, points, started, report, regenerate=True)


def _finish(
    name: str,
    outcomes: list[Outcome],
    points: Sequence[Point],
    started: float,
    report: Callable[[str], None],
    regenerate: bool,
) -> SweepResult:
    outcomes = sorted(outcomes, key=lambda outcome: outcome.point.number)
    records = finished_records([o.point for o in outcomes if o.status == "done"]) if outcomes else {}
    for outcome in outcomes:
        if outcome.status == "done":
            outcome.record = records.get(outcome.point.key)
    leaderboards = _regenerate(points, report) if regenerate and any(o.status == "done" for o in outcomes) else []
    result = SweepResult(name, outcomes, time.perf_counter() - started, leaderboards)
    report(result.summary())
    return result


def _gpu_list(text: str) -> list[str]:
    return [gpu.strip() for gpu in text.split(",") if gpu.strip()]


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"not JSON: {error}") from error
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError('must be a JSON object, e.g. \'{"account": "proj", "qos": "high"}\'')
    return value


def sweep_command(argv: Sequence[str]) -> SweepResult:
    parser = CommandLineParser(
        prog="bench sweep",
        allow_abbrev=False,
        description="Run every point of a sweep (one `bench fit` each): several at once on this node, or as SLURM job "
        "arrays. Points that already have a record with the same settings are skipped (--rerun: run again).",
        epilog="Arguments after the sweep name that are not listed here go to every point's `bench fit`, e.g. "
        "`bench sweep ran_mnist --jobs 4 --trainer.max_epochs 5`.",
    )
    parser.add_argument("sweep", help="a shipped sweep's name (see `bench list`) or a YAML file")
    parser.add_argument("--dry_run", action="store_true", help="print what would run (or be submitted) and run nothing")
    parser.add_argument(
        "--rerun", action="store_true", help="also run points that already have a record with their settings"
    )
    parser.add_argument(
        "--log_dir", help="folder of the points' logs, checkpoints and status (default runs/sweeps/<sweep>)"
    )
    parser.add_argument(
        "--launcher", choices=LAUNCHERS, default="local", help="this node (default) or SLURM through submitit"
    )
    node = parser.add_argument_group("on this node (--launcher local)")
    node.add_argument("--jobs", type=int, help="points at once (default: one per GPU x --per_gpu; 1 on a CPU machine)")
    node.add_argument("--gpus", type=_gpu_list, help="GPUs to use, e.g. 0,1,2,3 (default: every visible GPU)")
    node.add_argument("--per_gpu", type=int, default=1, help="points sharing one GPU (default 1)")
    node.add_argument("--threads", type=int, help="OMP_NUM_THREADS of each point (default: cores // jobs)")
    cluster = parser.add_argument_group('on SLURM (--launcher slurm; needs `pip install -e ".[slurm]"` in bench)')
    cluster.add_argument("--partition", help="SLURM partition")
    cluster.add_argument(
        "--time_min",
        type=int,
        default=240,
        help="time limit of each task in minutes (default 240); "
        "a task that reaches it is requeued and resumes from its last checkpoint",
    )
    cluster.add_argument(
        "--gpus_per_task",
        type=int,
        default=1,
        help="GPUs per task, one task per device of a point (default 1; 0: CPU nodes)",
    )
    cluster.add_argument("--cpus_per_task", type=int, help="CPUs per task (also each point's OMP_NUM_THREADS)")
    cluster.add_argument("--mem_gb", type=float, help="memory per node in GB")
    cluster.add_argument("--array_parallelism", type=int, help="at most this many tasks of an array at once")
    cluster.add_argument(
        "--slurm_parameters",
        type=_json_object,
        default={},
        help='other sbatch parameters submitit knows, as JSON: \'{"account": "proj", "qos": "high"}\'',
    )
    cluster.add_argument(
        "--cluster",
        choices=slurm_launcher.CLUSTERS,
        default="slurm",
        help="submitit executor: slurm (default); local or debug run the same tasks on this machine",
    )
    cluster.add_argument("--wait", action="store_true", help="wait for the arrays to finish, then summarise")
    args, extra = parser.parse_known_args(list(argv))
    options = slurm_launcher.SlurmOptions(
        partition=args.partition,
        time_min=args.time_min,
        gpus_per_task=args.gpus_per_task,
        cpus_per_task=args.cpus_per_task,
        mem_gb=args.mem_gb,
        array_parallelism=args.array_parallelism,
        parameters=args.slurm_parameters,
    )
    result = launch(
        args.sweep,
        jobs=args.jobs,
        gpus=args.gpus,
        per_gpu=args.per_gpu,
        threads=args.threads,
        launcher=args.launcher,
        rerun=args.rerun,
        dry_run=args.dry_run,
        log_dir=args.log_dir,
        extra_args=extra,
        slurm=options,
        cluster=args.cluster,
        wait=args.wait,
    )
    if result.failed:
        raise BenchError(
            f"{len(result.failed)} of {len(result.outcomes)} sweep points failed; their logs are listed above"
        )
    return result
