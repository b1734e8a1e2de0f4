"""The Lightning internals wrapped in bench/modules/lightning_internals.py still exist and mean what we assume."""

from __future__ import annotations

from helpers import quiet_trainer
from lightning.pytorch.strategies import DDPStrategy

from bench.datamodules import Digits
from bench.modules import SplitNetwork
from bench.modules.lightning_internals import loggers_write_this_step, search_unused_parameters


def test_search_unused_parameters_sets_the_ddp_keyword_and_keeps_a_users_choice():
    strategy = DDPStrategy()
    search_unused_parameters(strategy)
    assert strategy._ddp_kwargs["find_unused_parameters"] is True
    chosen = DDPStrategy(find_unused_parameters=False)
    search_unused_parameters(chosen)
    assert chosen._ddp_kwargs["find_unused_parameters"] is False


class _RecordsLoggingSteps(SplitNetwork):
    def training_step(self, batch, batch_idx):
        self.logged_steps.append(loggers_write_this_step(self.trainer))
        return super().training_step(batch, batch_idx)


def test_loggers_write_every_log_every_n_steps_batches():
    datamodule = Digits(batch_size=16, pool_limit=96)
    module = _RecordsLoggingSteps(data_spec=datamodule.spec)
    module.logged_steps = []
    quiet_trainer(max_steps=6, log_every_n_steps=3).fit(module, datamodule)
    assert module.logged_steps == [False, False, True, False, False, True]
    assert loggers_write_this_step(None) is True  # outside a trainer: log
