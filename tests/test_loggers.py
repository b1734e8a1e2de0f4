"""W&B never blocks a run: without credentials or network it logs offline, and `disabled` logs nothing."""

from __future__ import annotations

import re

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
    monkeypatch.setattr(
        loggers, "_reachable", lambda *a, **k: pytest.fail("must not touch the network without credentials")
    )
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
        trainer = L.Trainer(
            max_epochs=2,
            log_every_n_steps=4,
            logger=logger,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            limit_val_batches=1,
        )
        trainer.fit(method(data_spec=datamodule.spec), datamodule)
        rows = [row for row in csv.DictReader(open(logger.log_dir + "/metrics.csv")) if row.get(key)]
        # 20 batches, a row every 4 of them: values are only ever logged when they will be written
        assert len(rows) == 5, f"{method.__name__}: {len(rows)} rows of {key}"


@pytest.mark.slow  # one real `bench fit` in a subprocess: 8 s on a quiet machine
def test_a_logged_offline_fit_has_no_wandb_tables_and_keeps_the_sync_hint(tmp_path):
    """What a user without credentials gets in a log file: bench's summary, not W&B's history and summary tables."""
    import os
    import subprocess
    import sys

    environment = {key: value for key, value in os.environ.items() if not key.startswith("WANDB_")}
    environment.update(WANDB_MODE="offline", HOME=str(tmp_path), NETRC=str(tmp_path / "netrc"))
    attack = '[{"class_path": "FeatureInversion", "init_args": {"epochs": 2, "progress": false}}]'
    fit = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.cli",
            "fit",
            "--trainer.max_epochs",
            "2",
            "--data.pool_limit",
            "200",
            "--evaluation.attacks",
            attack,
        ],
        cwd=tmp_path,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=300,
    )  # not a terminal
    assert fit.returncode == 0, fit.stdout[-3000:]
    wandb_lines = [line for line in fit.stdout.splitlines() if "wandb" in line.lower() and ":" in line]
    for table_text in ("Run history:", "Run summary:", "Find logs at", "▁", "█"):
        assert table_text not in fit.stdout, "\n".join(wandb_lines)
    assert len(wandb_lines) <= 6, "\n".join(wandb_lines)  # the offline header and bench's summary line
    (run_folder,) = (tmp_path / "runs" / "wandb").glob("offline-run-*")
    summary_line = next(line for line in fit.stdout.splitlines() if line.startswith("  W&B run: "))
    assert f"runs/wandb/{run_folder.name}" in summary_line and "wandb sync" in summary_line


def test_a_resumed_run_continues_its_offline_wandb_run(no_wandb_env, tmp_path):
    import json
    from pathlib import Path

    import wandb

    checkpoints = tmp_path / "checkpoints"
    checkpoints.mkdir()
    (checkpoints / "last.ckpt").write_bytes(b"")
    first = loggers.BenchWandbLogger(save_dir=str(tmp_path / "runs"), mode="offline")
    run_id = first.experiment.id

    class _Checkpoint:
        dirpath = str(checkpoints)
        save_top_k = 1

    first.after_save_checkpoint(_Checkpoint())
    wandb.finish()
    assert json.loads((checkpoints / loggers.RUN_FILE).read_text())["id"] == run_id

    resumed = loggers.BenchWandbLogger(save_dir=str(tmp_path / "runs"), mode="offline")
    assert resumed.continue_run(str(checkpoints / "last.ckpt")) == run_id
    assert resumed._wandb_init["resume"] == "allow"
    try:
        assert resumed.experiment.id == run_id
        assert resumed.experiment.dir.startswith(str(tmp_path / "runs" / "wandb" / "offline-run-"))
        # `wandb sync` uploads it into that run (W&B appends -1, -2 to a folder started in the same second)
        assert re.search(rf"-{run_id}(-\d+)?$", Path(resumed.experiment.dir).parent.name)
    finally:
        wandb.finish()


@pytest.mark.parametrize("saved", ['{"id": "../../etc"}', '{"id": 7}', "[1]", "not json"])
def test_a_malformed_saved_run_id_starts_a_new_run(tmp_path, saved, no_wandb_env):
    (tmp_path / loggers.RUN_FILE).write_text(saved)
    (tmp_path / "last.ckpt").write_bytes(b"")
    logger = loggers.BenchWandbLogger(save_dir=str(tmp_path / "runs"), mode="disabled")
    assert logger.continue_run(str(tmp_path / "last.ckpt")) is None
    assert logger._wandb_init.get("id") is None


def test_an_explicit_id_and_settings_win_over_bench_defaults(tmp_path, no_wandb_env):
    import wandb

    (tmp_path / loggers.RUN_FILE).write_text('{"id": "saved1"}')
    (tmp_path / "last.ckpt").write_bytes(b"")
    settings = wandb.Settings(quiet=False)
    logger = loggers.BenchWandbLogger(
        save_dir=str(tmp_path / "runs"), mode="disabled", id="mine", settings=settings, resume=None, group=None
    )
    assert logger.continue_run(str(tmp_path / "last.ckpt")) is None
    assert logger._wandb_init["id"] == "mine" and logger._wandb_init["settings"] is settings
    assert logger._wandb_init["resume"] == "allow" and "group" not in logger._wandb_init  # None: wandb's default


def test_bench_fit_resumed_from_its_checkpoint_continues_its_wandb_run(no_wandb_env, tmp_path, monkeypatch, capsys):
    import wandb
    from helpers import run_bench

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "offline")
    tiny = [
        "fit",
        "--data.pool_limit",
        "64",
        "--trainer.limit_train_batches",
        "2",
        "--trainer.limit_val_batches",
        "1",
        "--evaluation.enabled",
        "false",
        "--trainer.enable_model_summary",
        "false",
    ]
    code, output = run_bench([*tiny, "--trainer.max_epochs", "1"], capsys)
    wandb.finish()  # without an evaluation summary nothing finishes the run in this process
    assert code == 0, output[-2000:]
    (checkpoint,) = tmp_path.glob("runs/bench/*/checkpoints/last.ckpt")
    run_id = checkpoint.parent.parent.name  # the W&B run's id names the run's folder
    code, output = run_bench([*tiny, "--trainer.max_epochs", "2", "--ckpt_path", str(checkpoint)], capsys)
    wandb.finish()
    assert code == 0, output[-2000:]
    assert "bench: epoch 2/2" in output
    folders = list((tmp_path / "runs" / "wandb").glob("offline-run-*"))
    # one W&B run: every folder is that run's (W&B appends -1, -2 to a folder started in the same second)
    assert folders and all(re.search(rf"-{run_id}(-\d+)?$", folder.name) for folder in folders), folders
    assert list((tmp_path / "runs" / "bench").iterdir()) == [checkpoint.parent.parent]


@pytest.mark.parametrize("terminal", [True, False])
def test_wandb_is_quiet_in_a_log_file_and_as_usual_in_a_terminal(terminal, tmp_path, monkeypatch, no_wandb_env):
    monkeypatch.setattr(loggers.sys.stderr, "isatty", lambda: terminal)  # W&B writes to stderr
    logger = loggers.BenchWandbLogger(save_dir=str(tmp_path / "runs"), mode="disabled")
    settings = logger._wandb_init["settings"]
    assert settings.quiet is not terminal and settings.console == "off" and not settings.save_code
