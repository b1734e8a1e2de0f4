"""Run a sweep's points on this machine, several at once: one process per point, slots from ``slots.py``.

The engine is ``concurrent.futures``: a thread per running point waits on its ``bench fit`` process;
this module only decides, as points finish, which waiting point starts next and on which GPUs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

from bench.errors import BenchError
from bench.sweeps.grid import Point
from bench.sweeps.slots import Capacity, Gpu, fits_ever, next_start, release, take


@dataclass
class Outcome:
    """What became of one point: ``done``, ``failed``, ``skipped`` (a record with its key exists) or ``submitted``."""

    point: Point
    status: str
    started: Optional[float] = None  #: time.time() when its process started
    ended: Optional[float] = None
    returncode: Optional[int] = None
    slots: list[Gpu] = field(default_factory=list)
    record: Optional[Path] = None  #: its result record (the existing one for a skipped point)
    job_id: Optional[str] = None  #: the SLURM job (array task) that runs it

    @property
    def seconds(self) -> Optional[float]:
        return None if self.started is None or self.ended is None else self.ended - self.started


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1


def point_environment(slots: Sequence[Gpu], threads: int, base: Optional[dict[str, str]] = None) -> dict[str, str]:
    """A point's environment: its own GPUs (CUDA_VISIBLE_DEVICES; untouched on a CPU machine) and thread count."""
    env = dict(os.environ if base is None else base)
    env["OMP_NUM_THREADS"] = str(threads)
    env["PYTHONUNBUFFERED"] = "1"  # the log shows progress as it happens
    # inside a SLURM allocation (a batch job running the sweep) a point is not one of the job's srun tasks:
    # without SLURM_NTASKS, Lightning does not take SLURM's rank variables for a DDP layout
    env.pop("SLURM_NTASKS", None)
    gpus = [gpu for gpu in slots if gpu is not None]
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
    return env


def write_status(point: Point, **fields) -> None:
    """``<run dir>/point.json``: the point's arguments, key and last status, written atomically."""
    point.run_dir.mkdir(parents=True, exist_ok=True)
    status = {"number": point.number, "key": point.key, "args": point.args, **fields}
    handle, temporary = tempfile.mkstemp(prefix=".point-", suffix=".tmp", dir=point.run_dir)
    with os.fdopen(handle, "w") as stream:
        json.dump(status, stream, indent=2, default=str)
    os.replace(temporary, point.run_dir / "point.json")


def run_point(point: Point, slots: Sequence[Gpu], threads: int, resume: bool) -> Outcome:
    """One ``bench fit`` in its own process, its output in the point's log; never raises for a failed run."""
    point.run_dir.mkdir(parents=True, exist_ok=True)
    if not resume:  # --rerun: start from scratch, not from the last run's checkpoint
        shutil.rmtree(point.run_dir / "checkpoints", ignore_errors=True)
    command = point.command(resume=resume)
    started = time.time()
    write_status(point, status="running", started=started, slots=list(slots), command=command)
    with point.log.open("a") as log:  # a resumed or rerun point's earlier attempts stay above
        log.write(f"==== {time.strftime('%Y-%m-%d %H:%M:%S')}\n$ " + " ".join(command) + "\n\n")
        log.flush()
        try:
            returncode = subprocess.run(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=point_environment(slots, threads),
            ).returncode
        except OSError as error:  # the interpreter vanished, too many processes, ...
            log.write(f"\nbench sweep: could not start the point: {error}\n")
            returncode = -1
    ended = time.time()
    status = "done" if returncode == 0 else "failed"
    write_status(
        point, status=status, started=started, ended=ended, returncode=returncode, slots=list(slots), command=command
    )
    return Outcome(point, status, started, ended, returncode, list(slots))


def run_on_node(
    points: Sequence[Point], capacity: Capacity, threads: int, resume: bool, report: Callable[[str], None] = print
) -> list[Outcome]:
    """Run ``points`` with at most ``capacity`` in use at once; a failed point does not stop the others."""
    for point in points:
        if point.num_nodes > 1:
            raise BenchError(
                f"sweep point {point.number} ({point.label}) asks for trainer.num_nodes={point.num_nodes}; "
                "run it with --launcher slurm"
            )
        if not fits_ever(point.devices, capacity):
            where = f"{len(capacity.free)} GPU(s)" if None not in capacity.free else "this CPU machine"
            raise BenchError(
                f"sweep point {point.number} ({point.label}) needs {point.devices} devices, more than the "
                f"{capacity.budget} slot(s) on {where}; raise --jobs (or give more --gpus)"
            )
    total = max((point.number for point in points), default=0)
    waiting, running, outcomes = list(points), {}, []
    with ThreadPoolExecutor(max_workers=max(capacity.budget, 1)) as pool:
        while waiting or running:
            while (choice := next_start([point.devices for point in waiting], capacity)) is not None:
                position, slots = choice
                point = waiting.pop(position)
                take(slots, capacity)
                where = "CPU" if slots[0] is None else "GPU " + ",".join(slots)
                report(f"bench sweep [{point.number}/{total}] start on {where}: {point.label}  (log: {point.log})")
                future: Future = pool.submit(run_point, point, slots, threads, resume)
                running[future] = slots
            if not running:  # cannot happen after the fits_ever check; never spin
                raise BenchError("bench sweep: no point fits the node")
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                release(running.pop(future), capacity)
                outcome = future.result()
                outcomes.append(outcome)
                point = outcome.point
                if outcome.status == "done":
                    report(f"bench sweep [{point.number}/{total}] done in {outcome.seconds:.0f} s: {point.label}")
                else:
                    report(
                        f"bench sweep [{point.number}/{total}] FAILED (exit {outcome.returncode}) after "
                        f"{outcome.seconds:.0f} s: {point.label}\n{_tail(point.log)}  full log: {point.log}"
                    )
    return sorted(outcomes, key=lambda outcome: outcome.point.number)


def _tail(log: Path, lines: int = 6) -> str:
    try:
        text = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return "".join(f"    | {line}\n" for line in text[-lines:])
