"""W&B never blocks a run: without credentials or network it logs offline, and `disabled` logs nothing."""

from __future__ import annotations

import pytest

from bench import loggers
from bench.errors import BenchError


@pytest.fixture
def no_wandb_env(monkeypatch, tmp_path):
    for name in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))  # an empty netrc: no stored login
    monkeypatch.setenv("HOME", str(tmp_path))


def test_auto_without_credentials_is_offline_and_asks_no_network(no_wandb_env, monkeypatch):
    monkeypatch.setattr(loggers, "_reachable", lambda *a, **k: pytest.fail("must not touch the network without credentials"))
    assert loggers.resolve_mode("auto") == "offline"


def test_auto_with_credentials_but_no_network_is_offline(no_wandb_env, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setattr(loggers, "_reachable", lambda *a, **k: False)
    assert loggers.resolve_mode("auto") == "offline"


def test_auto_with_credentials_and_network_is_online(no_wandb_env, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setattr(loggers, "_reachable", lambda *a, **k: True)
    assert loggers.resolve_mode("auto") == "online"


def test_the_environment_and_explicit_modes_win(no_wandb_env, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert loggers.resolve_mode("auto") == "disabled"
    assert loggers.resolve_mode("offline") == "offline"
    with pytest.raises(BenchError, match="unknown W&B mode"):
        loggers.resolve_mode("sometimes")


def test_unreachable_host_answers_quickly():
    import time

    started = time.perf_counter()
    assert loggers._reachable("127.0.0.1", port=9, timeout=1.0) is False  # discard port: nothing listens
    assert time.perf_counter() - started < 5


def test_disabled_logger_logs_without_files(no_wandb_env, tmp_path):
    logger = loggers.BenchWandbLogger(save_dir=str(tmp_path / "runs"), mode="disabled")
    logger.log_metrics({"accuracy": 1.0}, step=0)
    assert logger.reference()["mode"] == "disabled"
    assert not list((tmp_path / "runs").rglob("*.wandb"))
    import wandb

    wandb.finish()


def test_training_losses_reach_the_loggers_every_log_every_n_steps(tmp_path):
    import csv

    import lightning as L
    from lightning.pytorch.loggers import CSVLogger

    from bench.datamodules import Digits
    from bench.modules import RAN, SplitNetwork

    for method, key in ((SplitNetwork, "train/loss"), (RAN, "train/O_a")):
        datamodule = Digits(batch_size=32, pool_limit=320)  # 10 batches an epoch
        logger = CSVLogger(tmp_path, name=method.__name__)
        trainer = L.Trainer(max_epochs=2, log_every_n_steps=4, logger=logger, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False, limit_val_batches=1)
        trainer.fit(method(data_spec=datamodule.spec), datamodule)
        rows = [row for row in csv.DictReader(open(logger.log_dir + "/metrics.csv")) if row.get(key)]
        # 20 batches, a row every 4 of them: values are only ever logged when they will be written
        assert len(rows) == 5, f"{method.__name__}: {len(rows)} rows of {key}"
