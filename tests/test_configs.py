"""Every shipped config parses (no misspelled keys), and the ones whose data is here run a tiny fit."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import registry
from bench.cli import main
from bench.records import load_records

SHARED_MNIST = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "mnist"


@pytest.mark.parametrize("name", sorted(registry.configs()))
def test_shipped_config_parses(name, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "--config", name, "--print_config"])
    assert exit_.value.code in (0, None)
    assert "class_path" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.skipif(not SHARED_MNIST.exists(), reason="needs ../shared/datasets/mnist (the real MNIST test set)")
def test_mnist_shared_config_runs_tiny(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    main(["fit", "--config", "dnn/mnist_shared", "--data.data_dir", str(SHARED_MNIST), "--data.pool_limit", "256",
          "--trainer.max_epochs", "1", "--trainer.logger", "false", "--trainer.enable_progress_bar", "false",
          "--evaluation.attacks", '[{"class_path": "FeatureInversion", "init_args": {"epochs": 1, "progress": false}}]'])
    record = load_records([tmp_path / "runs" / "leaderboard" / "records"]).records[0]
    assert record["dataset"]["name"] == "mnist_t10k" and record["dataset"]["spec"]["image_shape"] == [1, 28, 28]
    assert record["privacy"][0]["config"]["decoder"] == "mirror"
