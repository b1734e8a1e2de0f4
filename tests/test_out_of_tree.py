"""A method from the user's own package: `bench fit --model mypkg.MyMethod` fits it, attacks it and ranks it."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from bench import registry
from bench.cli import main
from bench.errors import BenchError
from bench.records import load_records
from bench.testing import check_method_contract, tiny_attacks

REPOSITORY = Path(__file__).resolve().parents[1]
PACKAGE = textwrap.dedent('''
    """A user's method, outside the bench repository."""
    import torch
    from torch import nn

    from bench.modules.base import PrivacyModule
    from bench.threat_models import ThreatModel


    class MyMethod(PrivacyModule):
        """A linear client that releases 16 features; a linear server."""

        threat_models = (ThreatModel.FEATURE_RELEASE, ThreatModel.BLACK_BOX_OUTPUTS)

        def __init__(self, features: int = 16, lr: float = 3e-3, data_spec=None):
            super().__init__(data_spec=data_spec, lr=lr)
            channels, height, width = self.spec.image_shape
            self.encoder = nn.Sequential(nn.Flatten(), nn.Linear(channels * height * width, features), nn.ReLU())
            self.server = nn.Linear(features, self.spec.num_classes)

        def release(self, x):
            return self.encoder(x)

        def predict_from_release(self, released):
            return self.server(released)

        def client_network(self):
            return self.encoder


    class NotAMethod(nn.Module):
        pass
''')


@pytest.fixture
def mypkg(tmp_path, monkeypatch):
    (tmp_path / "mypkg.py").write_text(PACKAGE)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    sys.modules.pop("mypkg", None)


def test_a_user_package_method_resolves_only_when_the_user_names_it(mypkg):
    method = registry.resolve_class("method", "mypkg.MyMethod", allow_import=True)
    assert method.__module__ == "mypkg" and method.__name__ == "MyMethod"
    # names read from checkpoints or records never import: an unimported package stays unknown
    with pytest.raises(BenchError, match="unknown method 'otherpkg.Method'"):
        registry.resolve_class("method", "otherpkg.Method")


@pytest.mark.parametrize(
    "name, message",
    [
        (
            "mypkg.NotAMethod",
            "'mypkg.NotAMethod' is not a method: it must be a subclass of bench.modules.base.PrivacyModule",
        ),
        ("mypkg.Missing", "module mypkg has no Missing"),
        ("nosuchpkg.MyMethod", "cannot import method 'nosuchpkg.MyMethod' .*PYTHONPATH"),
        ("bench.modules.base.PrivacyModule", "abstract base"),
    ],
)
def test_what_is_not_a_method_is_refused_in_one_line(mypkg, name, message, capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--model", name, "--print_config"])
    error = capsys.readouterr().err.strip()
    assert error.startswith("bench: error: ") and "\n" not in error
    assert pytest.importorskip("re").search(message, error), error


def test_a_user_package_method_passes_the_contract_test(mypkg, tmp_path):
    method = registry.resolve_class("method", "mypkg.MyMethod", allow_import=True)
    record = check_method_contract(method, tmp_path / "contract")
    applicable = {attack.name for attack in tiny_attacks() if attack.applies_to(method)}
    assert {entry["attack"] for entry in record["privacy"]} == applicable and "feature_inversion" in applicable


@pytest.mark.slow
def test_bench_fit_runs_a_method_from_a_user_package(mypkg):
    out = mypkg / "run"
    environment = {**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": os.pathsep.join([str(mypkg), str(REPOSITORY)])}
    fit = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.cli",
            "fit",
            "--config",
            "budget/tiny",
            "--model",
            "mypkg.MyMethod",
            "--data",
            "Digits",
            "--data.pool_limit",
            "48",
            "--trainer.max_epochs",
            "1",
            "--trainer.logger",
            "false",
            "--trainer.enable_progress_bar",
            "false",
            "--trainer.default_root_dir",
            str(out / "runs"),
            "--evaluation.records_dir",
            str(out / "records"),
            "--evaluation.leaderboard_dir",
            str(out / "leaderboard"),
        ],
        cwd=mypkg,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert fit.returncode == 0, fit.stderr[-3000:]
    record = load_records([out / "records"]).records[0]
    assert record["method"]["class"] == "mypkg.MyMethod"
    method = registry.resolve_class("method", "mypkg.MyMethod", allow_import=True)
    assert {entry["attack"] for entry in record["privacy"]} == {a.name for a in tiny_attacks() if a.applies_to(method)}
    assert "MyMethod" in (out / "leaderboard" / "README.md").read_text()
