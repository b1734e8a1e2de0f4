"""Sweeps: grids of ``bench fit`` runs, on one node (several points at once) or on SLURM (job arrays).

The shipped sweep files (``*.yaml``) live in this folder and are found by name (``bench list``).
From Python::

    from bench.sweeps import launch
    result = launch("ran_tiny", jobs=2, extra_args=["--trainer.max_epochs", "1"])
    print(result.summary())
"""

from bench.sweeps.grid import Point, expand_sweep, finished_records, point_key, resolve_config
from bench.sweeps.launch import SweepResult, launch, sweep_command
from bench.sweeps.node import Outcome
from bench.sweeps.slots import Capacity, assign, next_start, node_capacity
from bench.sweeps.slurm import SlurmOptions

__all__ = [
    "Capacity",
    "Outcome",
    "Point",
    "SlurmOptions",
    "SweepResult",
    "assign",
    "expand_sweep",
    "finished_records",
    "launch",
    "next_start",
    "node_capacity",
    "point_key",
    "resolve_config",
    "sweep_command",
]
