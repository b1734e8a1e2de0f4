"""Resuming from a checkpoint reproduces the straight run bit for bit on CPU, for every registered method.

The interrupted run is planned like the straight one (``max_epochs`` 2) and stopped after its first epoch:
several methods derive their schedule from the planned length (DP-SGD's noise for a target epsilon,
ResizedDNN's pre-training share, the Collaborative learning-rate milestones), so a run planned for one
epoch and then extended is a different run, not an interrupted one.
"""

from __future__ import annotations

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from bench import registry
from bench.datamodules import Digits

METHODS = sorted(registry.methods())
#: variants whose own random streams the defaults do not exercise: Min-Max's member and reference batches
VARIANTS = {
    "MCMIA-minmax": ("MCMIA", {"defense": "minmax", "k": 2}),
    "MCMIA-pruning_minmax": ("MCMIA", {"defense": "pruning_minmax", "k": 2}),
}


class _StopAfterFirstEpoch(Callback):
    """An interruption at the end of the first epoch (the checkpoint of that epoch is written)."""

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        trainer.should_stop = True


def _fit(method, root, ckpt_path=None, interrupt=False, **hparams):
    L.seed_everything(0, verbose=False)  # as `bench fit` does before building anything
    datamodule = Digits(batch_size=16, pool_limit=48)
    module = method(data_spec=datamodule.spec, **hparams)
    checkpoints = ModelCheckpoint(dirpath=root / "checkpoints", save_last=True)
    trainer = L.Trainer(
        max_epochs=2,
        limit_train_batches=3,
        limit_val_batches=1,
        num_sanity_val_steps=1,
        logger=False,
        accelerator="cpu",
        default_root_dir=root,
        callbacks=[checkpoints] + ([_StopAfterFirstEpoch()] if interrupt else []),
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, datamodule, ckpt_path=ckpt_path)
    return module, checkpoints, trainer


@pytest.mark.parametrize(
    "name, hparams", [(name, {}) for name in METHODS] + list(VARIANTS.values()), ids=METHODS + list(VARIANTS)
)
def test_resume_reproduces_the_straight_run(name, hparams, tmp_path):
    method = registry.methods()[name]
    straight, _, _ = _fit(method, tmp_path / "straight", **hparams)
    _, interrupted, trainer = _fit(method, tmp_path / "interrupted", interrupt=True, **hparams)
    assert trainer.current_epoch == 1
    resumed, _, trainer = _fit(method, tmp_path / "resumed", ckpt_path=interrupted.last_model_path, **hparams)
    assert trainer.current_epoch == 2
    expected, actual = straight.state_dict(), resumed.state_dict()
    assert expected.keys() == actual.keys()
    differing = [key for key in expected if not torch.equal(expected[key], actual[key])]
    assert not differing, f"{name}: resumed weights differ from the straight run's in {differing[:5]}"


def test_a_batch_stream_resumes_where_it_was():
    from bench.datamodules.sampling import BatchStream

    pool = Digits(pool_limit=20).pool("val")  # 20 samples: 7 batches of 3 per pass
    straight = BatchStream(pool, batch_size=3, seed=5, name="val")
    batches = [next(straight) for _ in range(17)]  # into the third pass
    interrupted = BatchStream(pool, batch_size=3, seed=5, name="val")
    for _ in range(9):
        next(interrupted)
    resumed = BatchStream(pool, batch_size=3, seed=0, name="val")
    resumed.load_state_dict(interrupted.state_dict())
    for expected in batches[9:]:
        actual = next(resumed)
        assert torch.equal(actual[0], expected[0]) and torch.equal(actual[1], expected[1])
    first_pass = torch.cat([labels for _, labels in batches[:7]])
    assert sorted(first_pass.tolist()) == sorted(pool.labels.tolist())  # a pass serves every sample once
    assert not torch.equal(
        torch.cat([b[1] for b in batches[:7]]), torch.cat([b[1] for b in batches[7:14]])
    )  # reshuffled


def test_a_malformed_random_state_is_one_clear_error():
    from bench.errors import BenchError
    from bench.modules.base import set_random_state

    with pytest.raises(BenchError, match="random state is malformed"):
        set_random_state({"torch": torch.zeros(3, dtype=torch.uint8), "numpy": {}, "python": []})
