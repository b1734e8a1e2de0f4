"""The two places the suite reaches into Lightning internals, each because no public API does the job.

Both are pinned by ``tests/test_lightning_internals.py`` against the installed Lightning, so an upgrade that
moves them fails a test instead of silently logging every step or hanging DDP.
"""

from __future__ import annotations

from typing import Any


def search_unused_parameters(strategy: Any) -> None:
    """Make a DDP strategy look for parameters without gradients, before it wraps the model.

    Methods with manual optimization train sub-networks in separate stages, so each backward leaves some
    parameters without gradients. Publicly this is ``DDPStrategy(find_unused_parameters=True)`` (or
    ``--trainer.strategy ddp_find_unused_parameters_true``), which only the user's trainer config can choose;
    the module knows it needs it, so it sets the strategy's DDP keyword arguments in ``setup`` (before
    ``configure_ddp``), which have no public setter.
    """
    strategy._ddp_kwargs.setdefault("find_unused_parameters", True)


def loggers_write_this_step(trainer: Any) -> bool:
    """Whether the loggers will write values logged now (every ``log_every_n_steps`` batches, and at a stop).

    Lightning decides this in its logger connector; the public ``global_step`` counts optimizer steps, which
    differ from batches under manual optimization with several optimizers, so it cannot reproduce the rule.
    """
    if trainer is None:
        return True
    return bool(trainer._logger_connector.should_update_logs)
