"""The `bench` command as a user runs it: fit, evaluate, leaderboard, list, and clear errors on bad input."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import run_bench

from bench.records import load_records

TINY = [
    "--trainer.max_epochs",
    "2",
    "--trainer.enable_progress_bar",
    "false",
    "--evaluation.attacks",
    '[{"class_path": "FeatureInversion", "init_args": {"epochs": 2, "progress": false}}]',
]


def _bench(args, cwd, **env):
    environment = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", **env}
    return subprocess.run(
        [sys.executable, "-m", "bench.cli", *args],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.slow
def test_fit_then_evaluate_then_leaderboard(tmp_path):
    fit = _bench(["fit", *TINY[:2], "--evaluation.attacks", TINY[-1]], tmp_path)  # the bar as configured: non-TTY
    assert fit.returncode == 0, fit.stderr[-3000:]
    # the user's own results folder, not the shipped leaderboard: a clone stays clean
    assert not (tmp_path / "leaderboard").exists()
    assert (
        "result record: runs/leaderboard/records/" in fit.stdout
        and "leaderboard: runs/leaderboard/README.md" in fit.stdout
    )
    assert "W&B run:" in fit.stdout and list((tmp_path / "runs" / "wandb").glob("offline-run-*"))
    # a newcomer's log: one line per epoch and per attack, no adverts, no deprecation noise, the summary last
    log = fit.stdout + fit.stderr
    assert "\r" not in log and "Tip" not in log and "LeafSpec" not in log, log[-3000:]
    assert [line for line in fit.stdout.splitlines() if line.startswith("bench: epoch ")][-1].startswith(
        "bench: epoch 2/2:"
    )
    assert len([line for line in fit.stdout.splitlines() if line.startswith("bench: attack feature_inversion:")]) == 1
    assert (
        fit.stdout.rstrip().splitlines()[-1].startswith("  leaderboard: ") and "wandb sync" in fit.stderr + fit.stdout
    )
    assert len(log.splitlines()) < 60, log
    (run,) = (tmp_path / "runs" / "bench").iterdir()  # the run's own folder: its config, its checkpoints, last.ckpt
    assert (run / "config.yaml").is_file() and (run / "checkpoints" / "last.ckpt").is_file()
    assert not (tmp_path / "runs" / "config.yaml").exists()

    first = load_records([tmp_path / "runs" / "leaderboard" / "records"])
    assert first.problems == [] and len(first.records) == 1
    record = first.records[0]
    assert record["method"]["name"] == "SplitNetwork" and record["dataset"]["name"] == "digits"
    assert record["config"]["trainer"]["max_epochs"] == 2 and record["seed"] == 0
    assert record["wandb"]["mode"] == "offline"
    assert Path(tmp_path, record["artifacts"]["feature_inversion_examples"]).is_file()

    checkpoint = next(path for path in (tmp_path / "runs").rglob("*.ckpt") if path.name != "last.ckpt")
    # without --evaluation.attacks the checkpoint is attacked exactly as its run was
    evaluated = _bench(["evaluate", str(checkpoint)], tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    second = load_records([tmp_path / "runs" / "leaderboard" / "records"])
    assert len(second.records) == 2
    newest = max(second.records, key=lambda r: r["created"] + r["record_id"])
    by_id = {r["record_id"]: r for r in second.records}
    older = next(r for r in second.records if r["record_id"] != newest["record_id"])
    # the checkpoint is the model the fit evaluated, under the same configuration, attacks and evaluation seed
    assert by_id[newest["record_id"]]["utility"]["accuracy"] == pytest.approx(older["utility"]["accuracy"])
    assert newest["config"]["checkpoint"] == str(checkpoint.resolve())
    assert newest["privacy"][0]["config"] == older["privacy"][0]["config"]
    assert newest["training"]["epochs"] == older["training"]["epochs"] == 2
    assert (
        tmp_path / older["training"]["checkpoint"]
    ).resolve() == checkpoint.resolve()  # the fit record names its checkpoint
    for key, value in older["privacy"][0]["metrics"].items():
        assert newest["privacy"][0]["metrics"][key] == pytest.approx(value, rel=1e-4, abs=1e-6)

    board = _bench(["leaderboard"], tmp_path)  # by default: the user's records into the user's leaderboard
    assert board.returncode == 0, board.stderr
    assert not (tmp_path / "leaderboard").exists()
    rows = list(csv.DictReader((tmp_path / "runs" / "leaderboard" / "leaderboard.csv").open()))
    # a re-evaluation of the same run (same seed) replaces its record in the table rather than posing as a second seed
    assert len(rows) == 1 and rows[0]["method"] == "DNN" and rows[0]["dataset"] == "digits" and rows[0]["seeds"] == "1"
    markdown = (tmp_path / "runs" / "leaderboard" / "README.md").read_text()
    assert "### digits, 2 epochs, batch 64" in markdown
    # one method is one point: a trade-off plot of a single point says nothing, so none is drawn or linked
    assert "](plots/" not in markdown and not list((tmp_path / "runs" / "leaderboard" / "plots").glob("*.png"))


@pytest.mark.slow
def test_fit_with_ddp_from_the_command_line(tmp_path):
    run = _bench(
        [
            "fit",
            *TINY,
            "--trainer.devices",
            "2",
            "--trainer.strategy",
            "ddp",
            "--trainer.accelerator",
            "cpu",
            "--trainer.logger",
            "false",
        ],
        tmp_path,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    loaded = load_records([tmp_path / "runs" / "leaderboard" / "records"])
    assert len(loaded.records) == 1, "exactly one record, written by rank 0"
    assert loaded.records[0]["config"]["trainer"]["strategy"] == "ddp"


def test_list_shows_methods_datamodules_attacks_and_configs(capsys):
    code, output = run_bench(["list"], capsys)
    assert code == 0
    for expected in (
        "SplitNetwork",
        "Digits",
        "MNIST",
        "LocalFolder",
        "FeatureInversion",
        "quickstart",
        "feature_release",
    ):
        assert expected in output


@pytest.mark.parametrize(
    "args", [["--model", "Collaborative"], ["--model", "MCMIA", "--data", "Digits"], ["--config", "ran/tiny"]]
)
def test_a_chosen_method_gets_its_own_defaults_not_the_quickstarts(args, capsys):
    # jsonargparse keeps a class's init arguments when another class is chosen on top of it
    import inspect

    import yaml

    from bench import registry

    code, output = run_bench(["fit", *args, "--print_config"], capsys)
    assert code == 0, output
    config = yaml.safe_load(output)
    method = registry.lookup("method", config["model"]["class_path"])
    if "--config" not in args:
        defaults = {name: p.default for name, p in inspect.signature(method).parameters.items() if name != "data_spec"}
        assert config["model"]["init_args"] == json.loads(json.dumps(defaults))  # tuples print as lists
        assert config["evaluation"]["attacks"] is None  # every registered attack, as configured by default
    else:  # a config's attack list is its own, not merged item by item with the quickstart's
        assert [a["init_args"]["epochs"] for a in config["evaluation"]["attacks"][:1]] == [20]


def test_plain_fit_is_the_quickstart(capsys):
    code, output = run_bench(["fit", "--print_config"], capsys)
    assert code == 0
    assert "bench.modules.SplitNetwork" in output and "lr: 0.003" in output and "epochs: 200" in output


def test_shipped_configs_are_found_by_name(capsys):
    code, output = run_bench(["fit", "--config", "quickstart", "--print_config"], capsys)
    assert code == 0
    assert "bench.modules.SplitNetwork" in output and "bench.datamodules.Digits" in output


def test_model_and_data_by_short_name(capsys):
    code, output = run_bench(["fit", "--model", "SplitNetwork", "--data", "Digits", "--print_config"], capsys)
    assert code == 0 and "class_path: bench.modules.split_network.SplitNetwork" in output


@pytest.mark.parametrize(
    "args, message",
    [
        (["fit", "--model", "Nope"], "unknown method 'Nope'"),
        (["fit", "--data", "Nope"], "unknown datamodule 'Nope'"),
        (["fit", "--config", "no_such_config"], "no shipped config"),
        (["fit", "--model.network", "vgg9", "--trainer.logger", "false"], "too small"),
        (["fit", "--model.network", "resnet9000", "--trainer.logger", "false"], "unknown network"),
        (["fit", "--model.lr", "-1", "--trainer.logger", "false"], "lr must be positive"),
        (
            [
                "fit",
                "--data",
                "MNIST",
                "--data.data_dir",
                "{tmp}",
                "--data.download",
                "false",
                "--trainer.logger",
                "false",
            ],
            "download is off",
        ),
        (["evaluate", "{tmp}/missing.ckpt"], "not found"),
        (["evaluate", "{tmp}/corrupt.ckpt"], "cannot read checkpoint"),
        (["leaderboard", "--records", "{tmp}/nowhere"], "no records"),
        (["frobnicate"], "unknown command"),
    ],
)
def test_bad_input_gets_one_clear_line_and_no_record(args, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "corrupt.ckpt").write_bytes(b"PK\x03\x04 definitely not a checkpoint")
    code, output = run_bench([arg.replace("{tmp}", str(tmp_path)) for arg in args], capsys)
    assert code == 1
    errors = [line for line in output.splitlines() if line.startswith("bench: error:")]
    assert len(errors) == 1 and message in errors[0], output[-2000:]
    assert "bench.errors.BenchError" not in output  # caught and printed as one line, not as a traceback
    assert not list(tmp_path.rglob("*.json"))


def test_misspelled_config_key_is_rejected(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, output = run_bench(["fit", "--model.learning_rate", "0.1"], capsys)
    assert code != 0 and "learning_rate" in output
    assert not list(tmp_path.rglob("*.json"))


def test_nan_loss_stops_with_a_clear_error_and_no_record(tmp_path, monkeypatch):
    import lightning as L

    from bench.callbacks import PrivacyEvaluation
    from bench.datamodules import Digits
    from bench.errors import BenchError
    from bench.modules import SplitNetwork

    datamodule = Digits(pool_limit=32, batch_size=16)
    module = SplitNetwork(data_spec=datamodule.spec)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(module.classifier[-1], "forward", lambda x: x.sum(1, keepdim=True).expand(-1, 10) * float("nan"))
        trainer = L.Trainer(
            max_epochs=1,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            callbacks=[PrivacyEvaluation(records_dir=str(tmp_path / "records"), leaderboard_dir=None)],
        )
        with pytest.raises(
            BenchError, match="cross-entropy loss became NaN or infinite by step .*; lower the learning rate"
        ):
            trainer.fit(module, datamodule)
    assert not list((tmp_path / "records").glob("*.json"))  # the folder was checked for writability before training
