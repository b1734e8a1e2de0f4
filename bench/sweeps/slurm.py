"""Submit a sweep to SLURM as job arrays through submitit (``pip install -e ".[slurm]"`` in the checkout).

Points with the same shape (devices, nodes) go into one array; each array task runs one ``bench fit``
in a subprocess. A multi-GPU point runs one task per GPU (``tasks_per_node = devices``): every task
starts the same ``bench fit`` with SLURM's rank variables, and Lightning's ``SLURMEnvironment`` makes
them one DDP group. On preemption or timeout submitit calls ``PointTask.checkpoint``, which requeues
the point with ``--ckpt_path`` its ``last.ckpt`` (written at every epoch's end into the point's run
folder, whose name comes from the point's key), so the point loses at most the epoch in progress.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from bench.errors import BenchError
from bench.sweeps.grid import Point

try:  # an optional extra: without it the module imports, and --launcher slurm says what to install
    from submitit.helpers import Checkpointable
except ImportError:  # pragma: no cover
    Checkpointable = object

#: submitit's executors: ``slurm`` submits with sbatch; ``local`` and ``debug`` run the same tasks on this machine
CLUSTERS = ("slurm", "local", "debug")


def _submitit():
    try:
        import submitit
    except ImportError as error:
        raise BenchError(
            '--launcher slurm needs submitit: pip install -e ".[slurm]" in the bench checkout (or pip install submitit)'
        ) from error
    return submitit


@dataclass
class SlurmOptions:
    """sbatch parameters for every array (per point: nodes = trainer.num_nodes, one task per device)."""

    partition: Optional[str] = None
    time_min: int = 240
    gpus_per_task: int = 1
    cpus_per_task: Optional[int] = None
    mem_gb: Optional[float] = None
    array_parallelism: Optional[int] = None
    signal_delay_s: int = 120
    #: any other sbatch parameter submitit knows (account, qos, constraint, exclude, setup, ...)
    parameters: dict[str, Any] = field(default_factory=dict)

    def native(self, name: str, devices: int, nodes: int, count: int) -> dict[str, Any]:
        """submitit's SlurmExecutor parameters for an array of ``count`` points of this shape."""
        params: dict[str, Any] = {
            "job_name": name,
            "time": self.time_min,
            "nodes": nodes,
            "ntasks_per_node": devices,
            "signal_delay_s": self.signal_delay_s,
        }
        if self.gpus_per_task:
            params["gpus_per_node"] = devices * self.gpus_per_task
        if self.partition:
            params["partition"] = self.partition
        if self.cpus_per_task:
            params["cpus_per_task"] = self.cpus_per_task
        if self.mem_gb:
            params["mem"] = (
                f"{int(self.mem_gb)}GB" if self.mem_gb == int(self.mem_gb) else f"{int(self.mem_gb * 1024)}MB"
            )
        params["array_parallelism"] = min(self.array_parallelism or count, count)
        return {**params, **self.parameters}

    def generic(self, name: str, devices: int, nodes: int, count: int) -> dict[str, Any]:
        """The same for submitit's AutoExecutor (``local``/``debug`` clusters take the generic ones)."""
        return {
            "name": name,
            "timeout_min": self.time_min,
            "nodes": nodes,
            "tasks_per_node": devices,
            "gpus_per_node": devices * self.gpus_per_task,
            "cpus_per_task": self.cpus_per_task,
            "mem_gb": self.mem_gb,
        }


class PointTask(Checkpointable):
    """One array task: run the point's ``bench fit``; requeued from its last checkpoint when preempted."""

    def __init__(self, command: list[str], checkpoint: str, log: str, cwd: str, threads: Optional[int] = None) -> None:
        self.command = command
        self.checkpoint_path = checkpoint
        self.log = log
        self.cwd = cwd
        self.threads = threads

    def __call__(self) -> int:
        # one task per DDP rank: SLURM numbers them (submitit's local executor too); the debug executor runs one
        rank = int(os.environ.get("SLURM_PROCID") or os.environ.get("SUBMITIT_LOCAL_GLOBALID") or 0)
        log = Path(self.log if rank == 0 else f"{self.log[:-4]}.rank{rank}.log")
        log.parent.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        if self.threads:
            env["OMP_NUM_THREADS"] = str(self.threads)
        command = [sys.executable, *self.command[1:]]  # this node's interpreter (same environment as submitit's)
        with log.open("a") as stream:
            stream.write("$ " + " ".join(command) + "\n\n")
            stream.flush()
            returncode = subprocess.run(
                command, stdout=stream, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=self.cwd
            ).returncode
        if returncode != 0:
            raise RuntimeError(f"bench fit exited with {returncode}; log: {log}")
        return returncode

    def checkpoint(self, *args: Any, **kwargs: Any):
        """submitit calls this on preemption or timeout: requeue, resuming from ``last.ckpt`` when there is one."""
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(self.resumed())

    def resumed(self) -> "PointTask":
        command = list(self.command)
        if "--ckpt_path" in command:  # an earlier requeue: resume from the newest checkpoint, not the old one
            at = command.index("--ckpt_path")
            del command[at : at + 2]
        if Path(self.cwd, self.checkpoint_path).exists():
            command += ["--ckpt_path", self.checkpoint_path]
        return PointTask(command, self.checkpoint_path, self.log, self.cwd, self.threads)


def regenerate_leaderboards(pairs: Sequence[tuple[Sequence[str], str]], cwd: str) -> list[str]:
    """The sweep's last job: each leaderboard folder from its records folders (run after the arrays end)."""
    from bench.leaderboard import generate_leaderboard

    return [
        str(generate_leaderboard([Path(cwd, d) for d in records], Path(cwd, out)).markdown) for records, out in pairs
    ]


def groups(points: Sequence[Point]) -> dict[tuple[int, int], list[Point]]:
    """Points by (devices, nodes): each shape is one array (an array's tasks share their sbatch parameters)."""
    shapes: dict[tuple[int, int], list[Point]] = {}
    for point in points:
        shapes.setdefault((point.devices, point.num_nodes), []).append(point)
    return shapes


def tasks_for(points: Sequence[Point], resume: bool, cwd: str, threads: Optional[int]) -> list[PointTask]:
    return [
        PointTask(point.command(resume=resume), str(point.last_checkpoint), str(point.log), cwd, threads)
        for point in points
    ]


def dry_run(
    points: Sequence[Point],
    options: SlurmOptions,
    name: str,
    folder: Path,
    resume: bool,
    report: Callable[[str], None] = print,
) -> None:
    """Print the sbatch script of every array and each task's command, submitting nothing."""
    from submitit.slurm.slurm import _make_sbatch_string

    submit = f"{shlex.quote(sys.executable)} -u -m submitit.core._submit {shlex.quote(str(folder))}"
    for (devices, nodes), members in groups(points).items():
        params = options.native(name, devices, nodes, len(members))
        script = _make_sbatch_string(command=submit, folder=folder, map_count=len(members), **params)
        report(
            f"bench sweep: would submit an array of {len(members)} task(s) "
            f"({devices} device(s) x {nodes} node(s) each):"
        )
        report("\n".join("    " + line for line in script.splitlines() if line.startswith("#SBATCH")))
        for index, (point, task) in enumerate(
            zip(members, tasks_for(members, resume, os.getcwd(), options.cpus_per_task))
        ):
            report(f"  task {index}: point {point.number}: {shlex.join(task.command)}")


def submit(
    points: Sequence[Point],
    options: SlurmOptions,
    name: str,
    folder: Path,
    resume: bool,
    cluster: str,
    leaderboards: Sequence[tuple[Sequence[str], str]],
):
    """Submit one array per shape (and, on SLURM, a leaderboard job after them); return the jobs and that job."""
    submitit = _submitit()
    if cluster not in CLUSTERS:
        raise BenchError(f"unknown submitit cluster '{cluster}'; one of {', '.join(CLUSTERS)}")
    cwd = os.getcwd()
    jobs: list[tuple[Point, Any]] = []
    for (devices, nodes), members in groups(points).items():
        if cluster == "slurm":
            try:
                executor = submitit.SlurmExecutor(folder=folder)
            except RuntimeError as error:  # no srun: not a SLURM machine
                raise BenchError(
                    f"cannot submit to SLURM here ({error}); `--dry_run` shows what would be submitted, "
                    "`--launcher local` runs the sweep on this machine"
                ) from error
            try:
                executor.update_parameters(**options.native(name, devices, nodes, len(members)))
            except ValueError as error:
                raise BenchError(f"bad SLURM parameter: {str(error).splitlines()[0]}") from error
        else:
            executor = submitit.AutoExecutor(folder=folder, cluster=cluster)
            executor.update_parameters(
                **{
                    key: value
                    for key, value in options.generic(name, devices, nodes, len(members)).items()
                    if value is not None
                }
            )
        submitted = executor.submit_array(tasks_for(members, resume, cwd, options.cpus_per_task))
        jobs += list(zip(members, submitted))
    leaderboard_job = None
    if cluster == "slurm" and leaderboards and jobs:
        arrays = sorted({str(job.job_id).split("_")[0] for _, job in jobs})
        executor = submitit.SlurmExecutor(folder=folder)
        executor.update_parameters(
            job_name=f"{name}-leaderboard",
            time=30,
            nodes=1,
            ntasks_per_node=1,
            **({"partition": options.partition} if options.partition else {}),
            dependency="afterany:" + ":".join(arrays),
            **{key: value for key, value in options.parameters.items() if key in ("account", "qos")},
        )
        leaderboard_job = executor.submit(regenerate_leaderboards, list(leaderboards), cwd)
    return jobs, leaderboard_job
