"""Hostile and malformed checkpoints: nothing a file names is imported or called, and every refusal is one line."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import torch
from helpers import run_bench

from bench.datamodules import Digits
from bench.errors import BenchError
from bench.modules import SplitNetwork

# a module whose import alone leaves the marker: naming it in a file must not be enough to import it
HOSTILE_MODULE = """
from pathlib import Path
Path({marker!r}).write_text("imported")

def run(*args, **kwargs):
    Path({marker!r}).write_text("called")

class Evil:
    def __init__(self, *args, **kwargs):
        Path({marker!r}).write_text("called")
"""


class _Payload:
    """Unpickling this runs a shell command: what a hostile pickle does."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return subprocess.run, (["touch", str(self.marker)],)


def _error_line(output: str) -> str:
    errors = [line for line in output.splitlines() if line.startswith("bench: error:")]
    assert len(errors) == 1, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    return errors[0]


def _checkpoint(tmp_path: Path, *, bench_info=None, hparams=None, run_config=None, global_step=10) -> Path:
    """A checkpoint as `bench fit` writes it (the parts `bench evaluate` reads), with fields overridden."""
    datamodule = Digits(pool_limit=24, batch_size=8)
    module = SplitNetwork(data_spec=datamodule.spec)
    info = {
        "method_class": "bench.modules.split_network.SplitNetwork",
        "datamodule_class": "bench.datamodules.digits.Digits",
        "datamodule_hparams": dict(datamodule.hparams),
        "bench_version": "0",
    }
    info.update(bench_info or {})
    if run_config is not None:
        info["run_config"] = run_config
    path = tmp_path / "model.ckpt"
    torch.save(
        {
            "state_dict": module.state_dict(),
            "hyper_parameters": {**dict(module.hparams), **(hparams or {})},
            "bench": info,
            "epoch": 1,
            "global_step": global_step,
        },
        path,
    )
    return path


@pytest.fixture
def hostile(tmp_path, monkeypatch):
    """(marker file, importable hostile module name): the marker exists iff hostile code ran."""
    marker = tmp_path / "pwned"
    (tmp_path / "hostile_module_for_test.py").write_text(HOSTILE_MODULE.format(marker=str(marker)))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    yield marker
    import sys

    sys.modules.pop("hostile_module_for_test", None)


SHELL = {"args": ["touch", "pwned"]}
EVALUATE = ["--evaluation.attacks", "[]", "--evaluation.leaderboard_dir", "null", "--device", "cpu"]


@pytest.mark.parametrize(
    "route",
    [
        {"bench_info": {"datamodule_class": "subprocess.run", "datamodule_hparams": SHELL}},
        {"bench_info": {"method_class": "subprocess.run"}},
        {"bench_info": {"datamodule_class": "os.system", "datamodule_hparams": {"command": "touch pwned"}}},
        {"bench_info": {"datamodule_class": "hostile_module_for_test.Evil"}},
        {"bench_info": {"method_class": "hostile_module_for_test.Evil"}},
        {
            "bench_info": {"datamodule_class": "bench.datamodules.base.PrivacyDataModule"}
        },  # imported, but not a registered class
    ],
    ids=[
        "datamodule=subprocess.run",
        "method=subprocess.run",
        "datamodule=os.system",
        "datamodule=new module",
        "method=new module",
        "abstract base",
    ],
)
def test_evaluate_builds_only_registered_classes(route, hostile, capsys):
    path = _checkpoint(hostile.parent, **route)
    code, output = run_bench(["evaluate", str(path), *EVALUATE], capsys)
    assert code == 1
    assert "not a registered" in _error_line(output)
    assert not hostile.exists(), "a class named by the checkpoint was imported or called"


@pytest.mark.parametrize(
    "attack",
    [
        {"class_path": "subprocess.run", "init_args": SHELL},
        {"class_path": "hostile_module_for_test.Evil"},
        {"class_path": "hostile_module_for_test.run", "init_args": {}},
    ],
    ids=["subprocess.run", "new module", "function of a new module"],
)
def test_evaluate_attacks_only_with_registered_attacks_named_by_the_checkpoint(attack, hostile, capsys):
    path = _checkpoint(hostile.parent, run_config={"evaluation": {"attacks": [attack]}})
    code, output = run_bench(["evaluate", str(path), "--evaluation.leaderboard_dir", "null", "--device", "cpu"], capsys)
    assert code == 1
    assert "run_config.evaluation.attacks[0]" in _error_line(output) and "not a registered attack" in output
    assert not hostile.exists()


def test_evaluate_ignores_an_instantiator_named_by_the_checkpoint(hostile, capsys):
    # Lightning's load_from_checkpoint imports and calls hyper_parameters["_instantiator"]
    path = _checkpoint(hostile.parent, hparams={"_instantiator": "hostile_module_for_test.run"})
    code, output = run_bench(["evaluate", str(path), *EVALUATE, "--evaluation.records_dir", "records"], capsys)
    assert code == 0, output[-3000:]
    assert not hostile.exists()
    assert len(list((hostile.parent / "records").glob("*.json"))) == 1


def test_a_user_named_method_class_is_imported_and_must_be_a_privacy_module(hostile, capsys):
    path = _checkpoint(hostile.parent)
    code, output = run_bench(["evaluate", str(path), *EVALUATE, "--model", "collections.OrderedDict"], capsys)
    assert code == 1 and "it must be a subclass of bench.modules.base.PrivacyModule" in _error_line(output)


@pytest.mark.parametrize("subcommand", ["fit", "validate"])
def test_ckpt_path_never_unpickles_objects(subcommand, hostile, capsys, monkeypatch):
    # even where the environment asks torch to unpickle anything by default
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    path = hostile.parent / "hostile.ckpt"
    torch.save({"state_dict": {}, "payload": _Payload(hostile)}, path)
    code, output = run_bench(
        [subcommand, "--trainer.logger", "false", "--trainer.max_epochs", "1", "--ckpt_path", str(path)], capsys
    )
    assert code == 1
    assert "refusing checkpoint" in _error_line(output)
    assert not hostile.exists()
    code, output = run_bench(["evaluate", str(path)], capsys)
    assert code == 1 and "refusing checkpoint" in _error_line(output)
    assert not hostile.exists()


def test_the_registry_never_imports_a_path_it_was_not_allowed_to(hostile):
    from bench import registry

    with pytest.raises(BenchError, match="not a registered method"):
        registry.resolve_class("method", "hostile_module_for_test.Evil")
    assert not hostile.exists()
    assert registry.resolve_class("method", "bench.modules.SplitNetwork") is SplitNetwork  # an alias already imported
    assert registry.resolve_class("method", "SplitNetwork") is SplitNetwork


def test_records_never_choose_code(hostile):
    from test_records import make_record

    from bench.leaderboard import generate_leaderboard
    from bench.records import write_record

    record = make_record()
    record["method"]["class"] = "hostile_module_for_test.Evil"
    record["config"] = {
        "model": {"class_path": "hostile_module_for_test.Evil", "init_args": {}},
        "evaluation": {"attacks": [{"class_path": "subprocess.run", "init_args": SHELL}]},
    }
    write_record(record, hostile.parent / "records")
    result = generate_leaderboard([hostile.parent / "records"], hostile.parent / "board")
    assert result.rows == 1 and not hostile.exists()


@pytest.mark.parametrize(
    "hparams", [{"_class_path": "hostile_module_for_test.Evil"}, {"_class_path": "subprocess.run", **SHELL}]
)
def test_ckpt_path_cannot_choose_the_model_class(hparams, hostile, capsys):
    # LightningCLI turns the checkpoint's hyper_parameters._class_path into the model's class_path
    path = _checkpoint(hostile.parent, hparams=hparams)
    code, output = run_bench(
        ["fit", "--trainer.logger", "false", "--trainer.max_epochs", "1", "--ckpt_path", str(path)], capsys
    )
    assert code == 1 and "not a registered method" in _error_line(output)
    assert not hostile.exists()


# ----------------------------------------------------------------------------- before the work, and only real results
def _fit(tmp_path, *, datamodule=None, module=None, evaluation=None, **trainer_options):
    """A tiny fit with the harness attached; returns (trainer, evaluation)."""
    import lightning as L

    from bench.callbacks import PrivacyEvaluation

    datamodule = datamodule or Digits(pool_limit=24, batch_size=8)
    module = module or SplitNetwork(data_spec=datamodule.spec)
    evaluation = evaluation or PrivacyEvaluation(
        attacks=[], records_dir=str(tmp_path / "records"), leaderboard_dir=None
    )
    options = dict(
        max_epochs=1,
        limit_train_batches=1,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        num_sanity_val_steps=0,
    )
    trainer = L.Trainer(**{**options, **trainer_options}, callbacks=[evaluation])
    trainer.fit(module, datamodule)
    return trainer, evaluation


@pytest.mark.parametrize("option", ["records_dir", "leaderboard_dir"])
def test_an_unwritable_output_folder_fails_before_training(option, tmp_path):
    from bench.callbacks import PrivacyEvaluation

    (tmp_path / "a_file").write_text("not a folder")
    folders = {
        "records_dir": str(tmp_path / "records"),
        "leaderboard_dir": str(tmp_path / "board"),
        option: str(tmp_path / "a_file" / "out"),
    }
    module = SplitNetwork(data_spec=Digits(pool_limit=24).spec)
    with pytest.raises(BenchError, match=f"--evaluation.{option} .* is not writable"):
        _fit(tmp_path, module=module, evaluation=PrivacyEvaluation(attacks=[], **folders))
    assert module.global_step == 0, "the check must come before training"


@pytest.mark.parametrize(
    "attacker_share, attacks, message",
    [
        (0.001, [], "the harness cannot run on these pools: attacker pool 1 \\(needs 2\\)"),
        (0.002, ["LossThreshold"], "attack loss_threshold cannot run on these pools: attacker pool 3 \\(needs 4\\)"),
    ],
)
def test_too_small_pools_fail_before_training(attacker_share, attacks, message, tmp_path):
    from bench import registry
    from bench.callbacks import PrivacyEvaluation

    datamodule = Digits(
        batch_size=8, fractions={"train": 0.5, "val": 0.1, "test": 0.2, "nonmember": 0.1, "attacker": attacker_share}
    )
    module = SplitNetwork(data_spec=datamodule.spec)
    evaluation = PrivacyEvaluation(
        attacks=[registry.attacks()[name]() for name in attacks],
        records_dir=str(tmp_path / "records"),
        leaderboard_dir=None,
    )
    with pytest.raises(BenchError, match=message):
        _fit(tmp_path, datamodule=datamodule, module=module, evaluation=evaluation)
    assert module.global_step == 0


def test_zero_epochs_is_refused_unless_asked(tmp_path):
    from bench.callbacks import PrivacyEvaluation
    from bench.records import load_records

    with pytest.raises(BenchError, match="--trainer.max_epochs 0: the model would not train"):
        _fit(tmp_path, max_epochs=0)
    assert not list((tmp_path / "records").glob("*.json"))
    evaluation = PrivacyEvaluation(
        attacks=[], records_dir=str(tmp_path / "records"), leaderboard_dir=None, allow_untrained=True
    )
    _fit(tmp_path, max_epochs=0, evaluation=evaluation)
    (record,) = load_records([tmp_path / "records"]).records
    assert record["training"]["global_step"] == 0 and record["utility"]["degenerate"] is True


def test_a_run_at_chance_level_is_marked_degenerate(tmp_path):
    from bench.records import load_records

    datamodule = Digits(pool_limit=24, batch_size=8)
    _fit(tmp_path, datamodule=datamodule, module=SplitNetwork(data_spec=datamodule.spec, lr=1e-9))
    (record,) = load_records([tmp_path / "records"]).records
    labels = datamodule.pool("test").labels
    assert record["utility"]["chance_accuracy"] == pytest.approx(labels.bincount().max().item() / len(labels))
    assert record["utility"]["degenerate"] is True


def test_the_chance_level_rule():
    from bench.callbacks.privacy_evaluation import _chance_level

    datamodule = Digits(pool_limit=100)  # ten balanced-ish classes: chance about 0.1-0.2, two standard errors above it
    chance = _chance_level(0.5, datamodule, untrained=False)["chance_accuracy"]
    margin = 2 * (chance * (1 - chance) / 100) ** 0.5
    assert _chance_level(chance + margin + 0.01, datamodule, untrained=False)["degenerate"] is False
    assert _chance_level(chance + margin - 0.01, datamodule, untrained=False)["degenerate"] is True
    assert _chance_level(0.99, datamodule, untrained=True)["degenerate"] is True


def test_a_bad_record_in_the_folder_never_costs_a_run_its_record_or_summary(tmp_path, capsys):
    import json

    from test_records import make_record

    from bench.callbacks import PrivacyEvaluation

    records = tmp_path / "records"
    records.mkdir()
    bad = make_record()
    bad["method"]["hparams"] = None
    (records / "bad.json").write_text(json.dumps(bad))
    (records / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    evaluation = PrivacyEvaluation(attacks=[], records_dir=str(records), leaderboard_dir=str(tmp_path / "board"))
    _fit(tmp_path, evaluation=evaluation)
    captured = capsys.readouterr()
    assert evaluation.last_record_path.is_file()
    assert "result record:" in captured.out and "leaderboard:" in captured.out
    warnings = [line for line in captured.err.splitlines() if "skipped malformed record" in line]
    assert len(warnings) == 2 and "method.hparams" in " ".join(warnings) and "nested too deeply" in " ".join(warnings)


# ----------------------------------------------------------------------------- every error is one line
def _bad_inputs(tmp: Path) -> None:
    import numpy as np

    np.save(tmp / "objects.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    np.save(tmp / "labels.npy", np.arange(10) % 3)
    np.save(tmp / "images.npy", np.zeros((10, 8, 8), dtype=np.uint8))
    (tmp / "truncated.npy").write_bytes((tmp / "images.npy").read_bytes()[:100])
    np.save(tmp / "float_labels.npy", np.linspace(0, 1, 10))
    (tmp / "truncated.ckpt").write_bytes(b"PK\x03\x04 not a whole zip")
    torch.save({"weights": torch.zeros(3)}, tmp / "plain.ckpt")  # a torch file, but not a Lightning checkpoint
    torch.save({"state_dict": {}, "payload": _Payload(tmp / "pwned")}, tmp / "hostile.ckpt")
    (tmp / "broken.yaml").write_text("model:\n  init_args:\n    lr: [0.1,\n")
    _checkpoint(tmp)  # model.ckpt, of a SplitNetwork


LOCAL = ["fit", "--data", "LocalFolder", "--data.data_dir", "{tmp}", "--trainer.logger", "false"]
BAD_INPUT = {
    ".npy of objects": (
        [*LOCAL, "--data.images", "objects.npy", "--data.labels", "labels.npy"],
        1,
        "holds Python objects",
    ),
    "truncated .npy": (
        [*LOCAL, "--data.images", "truncated.npy", "--data.labels", "labels.npy"],
        1,
        "truncated or not a .npy",
    ),
    "float labels": (
        [*LOCAL, "--data.images", "images.npy", "--data.labels", "float_labels.npy"],
        1,
        "non-negative integers",
    ),
    "--ckpt_path missing": (["fit", "--trainer.logger", "false", "--ckpt_path", "{tmp}/missing.ckpt"], 1, "not found"),
    "--ckpt_path truncated": (
        ["fit", "--trainer.logger", "false", "--ckpt_path", "{tmp}/truncated.ckpt"],
        1,
        "cannot read checkpoint",
    ),
    "--ckpt_path not Lightning": (
        ["fit", "--trainer.logger", "false", "--ckpt_path", "{tmp}/plain.ckpt"],
        1,
        "not a Lightning checkpoint",
    ),
    "--ckpt_path hostile pickle": (
        ["fit", "--trainer.logger", "false", "--ckpt_path", "{tmp}/hostile.ckpt"],
        1,
        "refusing checkpoint",
    ),
    "--ckpt_path URL": (
        ["fit", "--trainer.logger", "false", "--ckpt_path", "http://example.com/x.ckpt"],
        1,
        "only local files",
    ),
    "--ckpt_path of another method": (
        ["fit", "--model", "RAN", "--trainer.logger", "false", "--ckpt_path", "{tmp}/model.ckpt"],
        1,
        "was written by bench.modules.split_network.SplitNetwork, but this run's --model is bench.modules.ran.RAN",
    ),
    "evaluate hostile pickle": (["evaluate", "{tmp}/hostile.ckpt"], 1, "refusing checkpoint"),
    "misspelled --model.lrr": (
        ["fit", "--model.lrr", "0.1"],
        2,
        "SplitNetwork has no argument 'lrr'; did you mean lr?",
    ),
    "misspelled RAN key": (
        ["fit", "--model", "RAN", "--model.lamm", "0.1"],
        2,
        "RAN has no argument 'lamm'; did you mean lam?",
    ),
    "unknown attack class": (
        ["fit", "--evaluation.attacks", '[{"class_path": "FeatureInvertion"}]'],
        2,
        "unknown attack class 'FeatureInvertion'; did you mean FeatureInversion",
    ),
    "wrong type": (["fit", "--trainer.max_epochs", "abc"], 2, "--trainer.max_epochs: expected int or null, got 'abc'"),
    "unknown option": (["fit", "--trainer.maxepochs", "3"], 2, "unrecognized arguments: --trainer.maxepochs"),
    "YAML syntax error": (["fit", "--config", "{tmp}/broken.yaml"], 1, "broken.yaml, line 4, column 1: not valid YAML"),
    "zero epochs": (["fit", "--trainer.max_epochs", "0", "--trainer.logger", "false"], 1, "the model would not train"),
    "attacker pool of 1": (
        [
            "fit",
            "--data.fractions",
            '{"train": 0.5, "val": 0.1, "test": 0.2, "nonmember": 0.1, "attacker": 0.001}',
            "--trainer.logger",
            "false",
        ],
        1,
        "attacker pool 1 (needs 2)",
    ),
    "unwritable records_dir": (
        ["fit", "--evaluation.records_dir", "{tmp}/images.npy/records", "--trainer.logger", "false"],
        1,
        "--evaluation.records_dir {tmp}/images.npy/records is not writable",
    ),
    "misspelled command": (["fitt"], 1, "unknown command 'fitt'; did you mean 'fit'?"),
}


@pytest.mark.parametrize("args, code, message", list(BAD_INPUT.values()), ids=list(BAD_INPUT))
def test_bad_input_is_one_line_before_any_work(args, code, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _bad_inputs(tmp_path)
    exit_code, output = run_bench([arg.replace("{tmp}", str(tmp_path)) for arg in args], capsys)
    assert exit_code == code, output[-3000:]
    line = _error_line(output)
    assert message.replace("{tmp}", str(tmp_path)) in line, line
    assert len(output.strip().splitlines()) == 1, output[-3000:]  # nothing but that line
    assert not (tmp_path / "pwned").exists() and not list(tmp_path.rglob("*.json"))
    assert not list(tmp_path.rglob("*.ckpt*")) or all(p.parent == tmp_path for p in tmp_path.rglob("*.ckpt"))


def test_verbose_adds_the_full_parser_message(capsys):
    code, output = run_bench(["fit", "--model.lrr", "0.1", "--verbose"], capsys)
    assert code == 2 and output.startswith("bench: error: --model.lrr") and "Does not validate" in output


def test_help_lists_every_command(capsys):
    from bench.cli import COMMANDS

    for args in ([], ["--help"], ["-h"]):
        code, output = run_bench(args, capsys)
        assert code == 0
        listed = [
            line.split()[0]
            for line in output.splitlines()
            if line.startswith("  ") and not line.strip().startswith("-")
        ]
        assert listed == list(COMMANDS)
        commands = {"fit", "validate", "test", "predict", "evaluate", "audit", "leaderboard", "list", "sweep"}
        assert set(COMMANDS) == commands


def test_a_checkpoint_written_by_bench_fit_resumes_through_the_command_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    quick = [
        "fit",
        "--trainer.logger",
        "false",
        "--trainer.limit_train_batches",
        "2",
        "--trainer.limit_val_batches",
        "1",
        "--data.pool_limit",
        "24",
        "--evaluation.enabled",
        "false",
    ]
    code, output = run_bench([*quick, "--trainer.max_epochs", "1"], capsys)
    assert code == 0, output[-3000:]
    last = tmp_path / "runs" / "checkpoints" / "last.ckpt"
    assert last.is_file()
    code, output = run_bench([*quick, "--trainer.max_epochs", "2", "--ckpt_path", str(last)], capsys)
    assert code == 0, output[-3000:]
    assert torch.load(last, weights_only=True)["epoch"] == 1


# ----------------------------------------------------------------------------- --ckpt_path never chooses code
# every route that reads a checkpoint: what it names is only looked up among registered classes, never imported
QUICK = [
    "--trainer.logger",
    "false",
    "--trainer.max_epochs",
    "1",
    "--trainer.limit_train_batches",
    "1",
    "--trainer.limit_val_batches",
    "1",
    "--data.pool_limit",
    "24",
    "--evaluation.enabled",
    "false",
]
EVIL = "hostile_module_for_test.Evil"


def _weights_only_checkpoint(path: Path, hyper_parameters: dict, bench_info=None, method=SplitNetwork) -> Path:
    """A plain-data checkpoint of a ``method`` on Digits whose hyper-parameters (and bench metadata) are given."""
    import lightning

    module = method(data_spec=Digits(pool_limit=24).spec)
    raw = {
        "state_dict": module.state_dict(),
        "hyper_parameters": hyper_parameters,
        "epoch": 0,
        "global_step": 1,
        "pytorch-lightning_version": lightning.__version__,
    }
    if bench_info is not None:
        raw["bench"] = bench_info
    torch.save(raw, path)
    return path


def _refused(args, hostile, capsys) -> str:
    code, output = run_bench(args, capsys)
    assert not hostile.exists(), f"a class named by the checkpoint was imported ({hostile.read_text()})"
    assert code != 0, output[-3000:]
    return _error_line(output)


def _splitnetwork_hparams(**changes) -> dict:
    return {
        "_class_path": "bench.modules.SplitNetwork",
        "network": "lenet5",
        "lr": 0.003,
        "weight_decay": 0.0,
        "_instantiator": "lightning.pytorch.cli.instantiate_module",
        **changes,
    }


HOSTILE_HPARAMS = {
    "class_path": {"class_path": EVIL},
    "class_path with init_args": {"class_path": EVIL, "init_args": {"lr": 0.1}},
    "_class_path": {"_class_path": EVIL, "lr": 0.1},
    "nested data_spec class_path": _splitnetwork_hparams(data_spec={"class_path": EVIL, "init_args": {}}),
    "nested class_path in a list": _splitnetwork_hparams(noise=[{"class_path": EVIL}]),
    "nested _instantiator": _splitnetwork_hparams(data_spec={"_instantiator": "hostile_module_for_test.run"}),
    "nested init_args": _splitnetwork_hparams(data_spec={"init_args": {"name": "x"}}),
    "class_path not a string": {"class_path": {"class_path": EVIL}},
}


@pytest.mark.parametrize("subcommand", ["fit", "validate", "test", "predict"])
@pytest.mark.parametrize("hparams", list(HOSTILE_HPARAMS.values()), ids=list(HOSTILE_HPARAMS))
def test_ckpt_path_hyper_parameters_never_import(subcommand, hparams, hostile, capsys):
    path = _weights_only_checkpoint(hostile.parent / "hostile.ckpt", hparams)
    line = _refused([subcommand, *QUICK, "--ckpt_path", str(path)], hostile, capsys)
    assert "a checkpoint may only name registered classes" in line, line


def test_ckpt_path_bench_metadata_names_only_registered_methods(hostile, capsys):
    info = {"method_class": EVIL, "datamodule_class": "bench.datamodules.digits.Digits"}
    path = _weights_only_checkpoint(hostile.parent / "hostile.ckpt", _splitnetwork_hparams(), bench_info=info)
    line = _refused(["validate", *QUICK, "--ckpt_path", str(path)], hostile, capsys)
    assert f"bench.method_class names '{EVIL}', not a registered method" in line, line


def test_datamodule_hyper_parameters_name_only_registered_datamodules(hostile, capsys):
    path = hostile.parent / "hostile.ckpt"
    _weights_only_checkpoint(path, _splitnetwork_hparams())
    raw = torch.load(path, weights_only=True)
    torch.save({**raw, "datamodule_hyper_parameters": {"_class_path": EVIL}}, path)
    line = _refused(["validate", *QUICK, "--ckpt_path", str(path)], hostile, capsys)
    assert "datamodule_hyper_parameters._class_path" in line and "not a registered datamodule" in line, line


@pytest.mark.parametrize("keyword", ["last", "best", "hpc"])
def test_a_file_named_like_a_lightning_shorthand_is_not_read(keyword, hostile, capsys):
    # LightningCLI reads a file named `last` in the working directory, while the trainer resolves `last` itself
    _weights_only_checkpoint(hostile.parent / keyword, {"_class_path": EVIL})
    line = _refused(["fit", *QUICK, "--ckpt_path", keyword], hostile, capsys)
    assert f"--ckpt_path {keyword}: Lightning reads '{keyword}' as a shorthand" in line, line
    line = _refused(["fit", *QUICK, "--ckpt_path", f"./{keyword}"], hostile, capsys)  # the file itself: checked
    assert "not a registered method" in line, line


def test_the_checkpoint_lightning_resolves_last_to_is_checked_as_it_is_loaded(hostile, capsys):
    code, output = run_bench(["fit", *QUICK], capsys)  # runs/checkpoints/last.ckpt of a SplitNetwork
    assert code == 0, output[-3000:]
    last = hostile.parent / "runs" / "checkpoints" / "last.ckpt"
    raw = torch.load(last, weights_only=True)
    torch.save({**raw, "hyper_parameters": {**raw["hyper_parameters"], "data_spec": {"class_path": EVIL}}}, last)
    line = _refused(["fit", *QUICK, "--trainer.max_epochs", "2", "--ckpt_path", "last"], hostile, capsys)
    assert "last.ckpt: hyper_parameters.data_spec.class_path names" in line, line
    torch.save({**raw, "bench": {**raw["bench"], "method_class": "bench.modules.ran.RAN"}}, last)
    line = _refused(["validate", *QUICK, "--ckpt_path", "last"], hostile, capsys)
    swapped = "written by bench.modules.ran.RAN, but this run's --model is bench.modules.split_network.SplitNetwork"
    assert swapped in line, line


def test_a_checkpoint_cannot_swap_the_method_typed_on_the_command_line(hostile, capsys):
    # Lightning's form {class_path, init_args} of another registered method: the command line's method stays
    from bench.modules import RAN

    swap = {"class_path": "bench.modules.ran.RAN", "init_args": {}}
    path = _weights_only_checkpoint(hostile.parent / "swap.ckpt", swap, method=RAN)
    for subcommand in ("validate", "fit"):
        line = _refused([subcommand, "--model", "SplitNetwork", *QUICK, "--ckpt_path", str(path)], hostile, capsys)
        swapped = f"written by {RAN.__module__}.RAN, but this run's --model is bench.modules.split_network.SplitNetwork"
        assert swapped in line, line
        assert not (hostile.parent / "runs").exists(), "nothing may run"


def test_a_checkpoints_plain_hyper_parameters_still_resume(hostile, capsys):
    import yaml

    code, output = run_bench(["fit", *QUICK, "--model.lr", "0.0123"], capsys)
    assert code == 0, output[-3000:]
    last = hostile.parent / "runs" / "checkpoints" / "last.ckpt"
    code, output = run_bench(["validate", *QUICK, "--ckpt_path", str(last)], capsys)
    assert code == 0, output[-3000:]
    saved = yaml.safe_load((hostile.parent / "runs" / "config.yaml").read_text())
    assert saved["model"]["init_args"]["lr"] == 0.0123  # read from the checkpoint, as LightningCLI does


def test_python_m_bench_cli_in_a_sweep_point_never_runs_a_module_beside_the_checkpoint(tmp_path, monkeypatch):
    # a requeued or rerun sweep point runs `python -m bench.cli fit ... --ckpt_path <its last.ckpt>`, and `python -m`
    # puts the working directory on sys.path: a module there is one import away
    from bench.sweeps import node_capacity
    from bench.sweeps.grid import Point
    from bench.sweeps.node import run_on_node

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).resolve().parents[1]))
    marker = tmp_path / "pwned"
    (tmp_path / "evilmod.py").write_text(HOSTILE_MODULE.format(marker=str(marker)))
    point = Point(1, ["fit", *QUICK], {"trainer": {}}, "a" * 64, tmp_path / "point")
    point.last_checkpoint.parent.mkdir(parents=True)
    _weights_only_checkpoint(point.last_checkpoint, {"class_path": "evilmod.Evil"})
    (outcome,) = run_on_node([point], node_capacity(jobs=1, gpus=[]), threads=1, resume=True, report=lambda line: None)
    log = point.log.read_text()
    assert not marker.exists(), "evilmod.py ran"
    assert outcome.status == "failed", log[-3000:]
    assert "hyper_parameters.class_path names 'evilmod.Evil'" in _error_line(log)
