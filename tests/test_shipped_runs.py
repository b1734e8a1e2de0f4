"""What a new user runs first, end to end: every shipped ``*tiny*`` config as shipped, and every registered method on
the embedded default data (``bench fit --model M --data Digits --trainer.max_epochs 2``, every attack of its threat
models at the smallest budget, ``budget/tiny``, on the full pools). Each must exit 0 and leave a record in which every
attack it ran has its result.

These runs take minutes together, so they are their own CI step (``python -m pytest -q -m shipped``, in
``.ci/run``) and stay out of the default test run.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from bench import registry
from bench.cli import main
from bench.records import load_records

pytestmark = pytest.mark.shipped

EMBEDDED_DATA = ("bench.datamodules.Digits",)


def _data_class(config: str) -> str:
    """The DataModule a shipped config ends up with (its pieces first, the file last)."""
    data = None
    for path in registry.composed_configs(config):
        data = ((yaml.safe_load(Path(path).read_text()) or {}).get("data") or {}).get("class_path", data)
    return data or "bench.datamodules.Digits"


TINY_CONFIGS = sorted(name for name in registry.configs() if "tiny" in name.rsplit("/", 1)[-1])


def _run(argv: list[str], tmp_path: Path, monkeypatch) -> dict:
    """``bench ARGV`` in ``tmp_path`` as a user would run it (W&B off: no network here); its one record."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "disabled")
    try:
        main(argv)
    except SystemExit as exit_:  # an error line was printed: the run failed
        pytest.fail(f"bench {' '.join(argv)} exited {exit_.code}")
    loaded = load_records([tmp_path / "runs" / "leaderboard" / "records"])
    assert not loaded.problems and len(loaded.records) == 1, loaded
    record = loaded.records[0]
    assert record["privacy"], "no attack ran"
    for entry in record["privacy"]:
        assert entry.get("metrics") and not entry.get("error"), f"attack {entry['attack']} failed: {entry.get('error')}"
    return record


@pytest.mark.parametrize("config", TINY_CONFIGS)
def test_every_tiny_config_runs_as_shipped(config, tmp_path, monkeypatch):
    if _data_class(config) not in EMBEDDED_DATA:
        pytest.skip(f"{config} needs {_data_class(config)}'s files (a download)")
    _run(["fit", "--config", config], tmp_path, monkeypatch)


@pytest.mark.parametrize("method", sorted(registry.methods()))
def test_every_method_runs_on_the_default_data_with_every_attack(method, tmp_path, monkeypatch):
    record = _run(
        ["fit", "--model", method, "--data", "Digits", "--trainer.max_epochs", "2", "--config", "budget/tiny"],
        tmp_path,
        monkeypatch,
    )
    method_class = registry.methods()[method]
    from bench.testing import tiny_attacks

    expected = {attack.name for attack in tiny_attacks() if attack._offered_by(method_class)}
    skipped = {entry["attack"] for entry in record.get("skipped_attacks") or []}
    assert {entry["attack"] for entry in record["privacy"]} == expected - skipped
