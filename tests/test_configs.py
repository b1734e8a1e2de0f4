"""Shipped configs: every one parses (no misspelled keys), is composed of pieces without restating what they or the
classes already say, and the ones whose data is here run a tiny fit."""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path
from typing import Any

import pytest
import yaml

from bench import registry
from bench.cli import DEFAULTS, main
from bench.errors import BenchError
from bench.records import load_records

SHARED_MNIST = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "mnist"
_MISSING = object()


@pytest.mark.parametrize("name", sorted(registry.configs()))
def test_shipped_config_parses(name, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "--config", name, "--print_config"])
    assert exit_.value.code in (0, None)
    assert "class_path" in capsys.readouterr().out


def _signature_defaults(function: Any) -> dict[str, Any]:
    return {
        p.name: p.default
        for p in inspect.signature(function).parameters.values()
        if p.default is not inspect.Parameter.empty
    }


def _class_defaults(class_path: str) -> dict[str, Any]:
    """Init-argument defaults of a shipped class, through the ``**kwargs`` its ``__init__`` forwards to its bases."""
    # the suite's classes, and Lightning's own callbacks (e.g. a ModelCheckpoint that keeps every epoch)
    assert class_path.startswith(("bench.", "lightning.pytorch.callbacks.")), (
        f"shipped configs use the suite's classes and Lightning's callbacks, not {class_path}"
    )
    module_name, _, name = class_path.rpartition(".")
    defaults: dict[str, Any] = {}
    for cls in getattr(importlib.import_module(module_name), name).__mro__:
        if "__init__" in vars(cls):
            defaults = {**_signature_defaults(vars(cls)["__init__"]), **defaults}
    return defaults


def _section_defaults() -> dict[str, dict[str, Any]]:
    import lightning as L

    from bench.callbacks import PrivacyEvaluation

    return {
        "trainer": _signature_defaults(L.Trainer.__init__),
        "evaluation": _signature_defaults(PrivacyEvaluation.__init__),
        "": {"seed_everything": 0},
    }  # LightningCLI's seed_everything_default in bench.cli


def _same(value: Any, default: Any) -> bool:
    """YAML's value equals the Python default (a tuple default reads as a list; 1 and 1.0 are the same number)."""
    return value == (list(default) if isinstance(default, tuple) else default) and isinstance(
        value, (int, float)
    ) == isinstance(default, (int, float))


def _is_class(value: Any) -> bool:
    return isinstance(value, dict) and bool({"class_path", "init_args"} & set(value))


def _restated(setting: dict[str, Any], before: dict[str, Any], defaults: dict[str, Any], where: str) -> list[str]:
    """Keys of ``setting`` whose value is what ``before`` (the pieces under it) or ``defaults`` (the class)
    already give.

    A class node (``class_path``/``init_args``) recurses into its init arguments; without a ``class_path`` it
    adds to the class chosen before it. A class chosen on top of another keeps the arguments of the first that
    it also takes (jsonargparse). Every other value, dicts included (``paper``, ``fractions``), is one value.
    """
    found = []
    for key, value in setting.items():
        path = f"{where}{key}"
        earlier = before.get(key, _MISSING)
        if _is_class(value):
            class_path = value.get("class_path") or (earlier.get("class_path") if _is_class(earlier) else None)
            assert class_path, f"{path} gives init_args, but no class was chosen before"
            class_defaults = _class_defaults(class_path)
            carried = (
                {
                    name: argument
                    for name, argument in (earlier.get("init_args") or {}).items()
                    if name in class_defaults
                }
                if _is_class(earlier)
                else {}
            )
            found += _restated(value.get("init_args") or {}, carried, class_defaults, f"{path}.")
            if (
                _is_class(earlier)
                and earlier.get("class_path") == value.get("class_path")
                and not value.get("init_args")
            ):
                found.append(f"{path} (as its pieces)")
        elif isinstance(value, list) and value and all(_is_class(item) for item in value):
            if value == earlier:
                found.append(f"{path} (as its pieces)")
            for number, item in enumerate(value):
                found += _restated(
                    item.get("init_args") or {}, {}, _class_defaults(item["class_path"]), f"{path}[{number}]."
                )
        elif earlier is not _MISSING:
            if value == earlier:
                found.append(f"{path} (as its pieces)")
        elif key in defaults and _same(value, defaults[key]):
            found.append(f"{path} (the default)")
    return found


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """``update`` on top of ``base`` as jsonargparse applies configs: sections and class nodes merge, values replace."""
    merged = dict(base)
    for key, value in update.items():
        earlier = merged.get(key)
        if _is_class(value) and _is_class(earlier):
            class_path = value.get("class_path", earlier.get("class_path"))
            merged[key] = {
                "class_path": class_path,
                "init_args": {**(earlier.get("init_args") or {}), **(value.get("init_args") or {})},
            }
        elif isinstance(value, dict) and isinstance(earlier, dict) and key in ("trainer", "evaluation"):
            merged[key] = _merge(earlier, value)
        else:
            merged[key] = value
    return merged


SHIPPED = {**{f"pieces/{name}": path for name, path in registry.pieces().items()}, **registry.configs()}


def _restatements(path: Path) -> list[str]:
    chain = registry.composed_configs(str(path))
    before: dict[str, Any] = {} if Path(chain[-1]) == DEFAULTS else yaml.safe_load(DEFAULTS.read_text())
    for piece in chain[:-1]:
        before = _merge(before, yaml.safe_load(Path(piece).read_text()))
    sections = _section_defaults()
    own = {key: value for key, value in (yaml.safe_load(Path(chain[-1]).read_text()) or {}).items() if key != "compose"}
    restated = _restated({key: value for key, value in own.items() if key not in sections}, before, sections[""], "")
    for section in ("trainer", "evaluation"):
        restated += _restated(own.get(section) or {}, before.get(section) or {}, sections[section], f"{section}.")
    return restated


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_no_shipped_config_restates_a_default_or_its_pieces(name):
    restated = _restatements(SHIPPED[name])
    assert not restated, f"{name} restates: {', '.join(restated)}"


def test_the_restatement_check_sees_defaults_and_pieces(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(
        "compose: [ran/tiny]\nmodel:\n  init_args: {lam: 0.5, l1: 0.003, l2: 0.01}\n"
        "trainer:\n  max_epochs: 5\n  max_steps: -1\nevaluation:\n  seed: 1\n"
    )
    assert _restatements(config) == [
        "model.lam (the default)",
        "model.l1 (as its pieces)",
        "trainer.max_epochs (as its pieces)",
        "trainer.max_steps (the default)",
    ]


def test_compose_applies_pieces_in_order_and_the_file_wins(tmp_path):
    (tmp_path / "first.yaml").write_text("trainer:\n  max_epochs: 3\n  max_steps: 7\n")
    (tmp_path / "second.yaml").write_text("compose: [first.yaml, budget/tiny]\ntrainer:\n  max_epochs: 4\n")
    chain = registry.composed_configs(str(tmp_path / "second.yaml"))
    assert chain == [str(tmp_path / "first.yaml"), str(registry.pieces()["budget/tiny"]), str(tmp_path / "second.yaml")]


@pytest.mark.parametrize(
    "content, message",
    [
        ("compose: budget/tiny\n", "must be a list"),
        ("compose: [no/such/piece]\n", "no config file 'no/such/piece'"),
        ("compose: [self.yaml]\n", "includes self.yaml, which includes"),
    ],
)
def test_bad_compose_is_explained(content, message, tmp_path):
    (tmp_path / "self.yaml").write_text(content)
    with pytest.raises(BenchError, match=message):
        registry.composed_configs(str(tmp_path / "self.yaml"))


@pytest.mark.slow
@pytest.mark.skipif(not SHARED_MNIST.exists(), reason="needs ../shared/datasets/mnist (the real MNIST test set)")
def test_mnist_shared_config_runs_tiny(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    main(
        [
            "fit",
            "--config",
            "dnn/mnist_shared",
            "--data.data_dir",
            str(SHARED_MNIST),
            "--data.pool_limit",
            "256",
            "--trainer.max_epochs",
            "1",
            "--trainer.logger",
            "false",
            "--trainer.enable_progress_bar",
            "false",
            "--evaluation.attacks",
            '[{"class_path": "FeatureInversion", "init_args": {"epochs": 1, "progress": false}}]',
        ]
    )
    record = load_records([tmp_path / "runs" / "leaderboard" / "records"]).records[0]
    assert record["dataset"]["name"] == "mnist_t10k" and record["dataset"]["spec"]["image_shape"] == [1, 28, 28]
    entry = record["privacy"][0]  # the default: one decoder of each family, each takes a LeNet-5 release
    assert entry["config"]["decoder"] == "families"
    assert entry["details"]["worst_case_over"] == ["mirror", "upsampling", "unet_small", "affine"]
