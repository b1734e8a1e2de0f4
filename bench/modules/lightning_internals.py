"""Every place the suite reaches into Lightning internals, each because no public API does the job.

The two functions here are pinned by ``tests/test_lightning_internals.py`` against the installed Lightning, so
an upgrade that moves them fails a test instead of silently logging every step or hanging DDP:

* :func:`search_unused_parameters`: ``DDPStrategy._ddp_kwargs``;
* :func:`loggers_write_this_step`: ``Trainer._logger_connector.should_update_logs``.

The others, elsewhere (not pinned by that test file):

* ``bench/lightning_cli.py``: ``BenchCLI`` overrides three private ``LightningCLI`` methods,
  ``_parse_ckpt_path`` (a checkpoint's hyper-parameters: the file is checked first, then only plain values are
  applied), ``_prepare_subcommand_kwargs`` (``weights_only``, and the check of the file Lightning loads) and
  ``_instantiate_trainer`` (a writable ``default_root_dir``, one line per epoch instead of a progress bar,
  Lightning's refusals as one error); ``check_as_loaded`` replaces the strategy's ``load_checkpoint`` on the
  instance, relying on Lightning loading ``--ckpt_path`` through it;
* ``bench/loggers.py``: ``BenchWandbLogger`` reads and sets ``WandbLogger``'s ``_wandb_init`` (a resumed run's
  id, the deprecated ``anonymous`` key), ``_experiment``, ``_id`` and ``_project``;
* ``LightningModule._trainer`` (None when no Trainer is attached, where the public ``trainer`` raises): read in
  ``bench/modules/base.py``, ``bench/modules/collaborative.py`` and ``bench/attacks/shadow_models.py``, which
  also detaches a trained shadow copy by setting it to None;
* ``LightningModule._hparams`` and ``_hparams_initial``: ``bench/modules/dcmg.py`` drops the arguments a variant
  does not take from both (``_keep_own_hparams``).
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
