"""`bench sweep`: a shipped sweep expands to one `bench fit` per grid point, and its records make the trade-off plot."""

from __future__ import annotations

import csv
import os
import subprocess
import sys

import pytest

from bench import registry
from bench.cli import expand_sweep, main
from bench.errors import BenchError


def test_every_shipped_sweep_expands_to_shipped_configs():
    for name, path in registry.sweeps().items():
        commands = expand_sweep(str(path))
        assert commands, name
        for command in commands:
            assert command[:2] == ["fit", "--config"] and os.path.exists(command[2])


def test_grid_points_become_command_line_overrides():
    commands = expand_sweep(str(registry.sweeps()["ran_mnist_shared"]))
    lams = [command[command.index("--model.lam") + 1] for command in commands if "--model.lam" in command]
    assert lams == ["0.01", "0.1", "0.3", "0.5", "0.9"]
    assert len(commands) == 1 + 5 + 5 + 5


@pytest.mark.parametrize("content, message", [
    ("runs: []", "non-empty list"),
    ("runs:\n  - grid: {model.lam: [0.1]}", "needs a `config`"),
    ("runs:\n  - config: ran/tiny\n    grid: {model.lam: []}", "non-empty list of values"),
    ("runs:\n  - config: no/such/config", "no config file"),
    ("runs: [", "cannot read sweep"),
])
def test_bad_sweeps_are_explained(content, message, tmp_path):
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(content)
    with pytest.raises(BenchError, match=message):
        expand_sweep(str(sweep))


def test_dry_run_prints_every_command(capsys):
    main(["sweep", "ran_tiny", "--dry_run", "--trainer.max_epochs", "1"])
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("bench sweep [")]
    assert len(lines) == 5 and all(line.endswith("--trainer.max_epochs 1") for line in lines)


@pytest.mark.slow
def test_tiny_sweep_fills_the_leaderboard_with_the_trade_off(tmp_path):
    attacks = '[{"class_path": "FeatureInversion", "init_args": {"epochs": 2, "progress": false}}, {"class_path": "OwnDecoder"}]'
    run = subprocess.run([sys.executable, "-m", "bench.cli", "sweep", "ran_tiny", "--trainer.max_epochs", "1",
                          "--data.pool_limit", "96", "--trainer.logger", "false", "--trainer.enable_progress_bar", "false",
                          "--evaluation.attacks", attacks], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    rows = list(csv.DictReader((tmp_path / "runs" / "leaderboard" / "leaderboard.csv").open()))
    methods = {row["method"] for row in rows}
    assert methods == {"DNN", "RAN (lam=0.1)", "RAN (lam=0.9)", "Noisy (noise_factor=0.5)", "DNN(resized) (noise_factor=0.5)"}
    # RAN's own decoder is reported beside the separately trained one
    ran = next(row for row in rows if row["method"] == "RAN (lam=0.1)")
    assert ran["own_decoder.mse_mean"] and ran["feature_inversion.mse_mean"]
    assert (tmp_path / "runs" / "leaderboard" / "plots" / "feature_release__digits__feature_inversion.png").is_file()
