"""Result records: validated, written atomically under unique names, read leniently."""

from __future__ import annotations

import copy
import json
import math
import multiprocessing
import os
from pathlib import Path

import pytest

from bench.records import (
    MAX_RECORD_BYTES,
    SCHEMA_VERSION,
    RecordError,
    load_records,
    new_record_id,
    utc_now,
    validate_record,
    write_record,
)


def make_record(**overrides) -> dict:
    """A minimal record that passes :func:`validate_record`."""
    record = {
        "schema_version": SCHEMA_VERSION,
        "record_id": new_record_id(),
        "created": utc_now(),
        "method": {
            "name": "SplitNetwork",
            "class": "bench.modules.SplitNetwork",
            "label": "Split (lenet)",
            "network": "lenet",
            "threat_models": ["feature_release"],
            "hparams": {"lr": 0.01},
        },
        "dataset": {
            "name": "digits",
            "class": "bench.datamodules.Digits",
            "seed": 0,
            "pool_sizes": {"train": 718, "val": 179, "test": 359, "nonmember": 269, "attacker": 269},
            "spec": {},
        },
        "seed": 0,
        "evaluation_seed": 1234,
        "config": {"model": {}, "data": {}, "trainer": {}},
        "run": {"world_size": 1, "effective_batch": 32, "precision": "32-true", "config_names": [], "budget": None},
        "utility": {"accuracy": 0.91},
        "privacy": [
            {
                "attack": "feature_inversion",
                "threat_model": "feature_release",
                "config": {"epochs": 1},
                "metrics": {"mse": 0.05, "ssim": 0.4},
                "directions": {"mse": "higher", "ssim": "lower"},
                "primary_metric": "ssim",
            }
        ],
        "cost": {"parameters": 1000, "nonzero_parameters": 990, "released_bytes_per_sample": 256, "fit_seconds": 1.5},
        "paper": None,
        "software": {"bench": "0.1.0", "torch": "2", "lightning": "2", "python": "3"},
        "wandb": None,
        "artifacts": {},
    }
    record.update(overrides)
    return record


def _everything_in(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


# ----------------------------------------------------------------------------- round trip
def test_the_helper_record_is_valid():
    validate_record(make_record())


def test_write_then_load_round_trips(tmp_path):
    record = make_record()
    path = write_record(record, tmp_path / "records")
    assert path.parent == tmp_path / "records" and path.suffix == ".json" and path.exists()
    assert record["record_id"][:8] in path.name and "digits" in path.name and "SplitNetwork" in path.name
    loaded = load_records([tmp_path / "records"])
    assert loaded.problems == []
    assert loaded.records == [record]
    assert loaded.paths == [path]
    assert _everything_in(tmp_path / "records") == [path.name]  # no temporary file left behind


def test_load_records_accepts_files_and_folders_and_ignores_missing_paths(tmp_path):
    paths = [write_record(make_record(), tmp_path / "a"), write_record(make_record(), tmp_path / "b" / "nested")]
    loaded = load_records([paths[0], tmp_path / "b", tmp_path / "does-not-exist"])
    assert loaded.problems == [] and sorted(loaded.paths) == sorted(paths)
    assert {r["record_id"] for r in loaded.records} == {json.loads(p.read_text())["record_id"] for p in paths}


def test_non_json_values_are_serialised(tmp_path):
    np = pytest.importorskip("numpy")
    torch = pytest.importorskip("torch")
    record = make_record(
        utility={"accuracy": np.float32(0.5), "top5": torch.tensor(0.75)}, artifacts={"grid": tmp_path / "grid.png"}
    )
    record["config"]["shape"] = (1, 8, 8)
    write_record(record, tmp_path)
    loaded = load_records([tmp_path]).records[0]
    assert loaded["utility"] == {"accuracy": 0.5, "top5": 0.75}
    assert loaded["artifacts"] == {"grid": str(tmp_path / "grid.png")}
    assert loaded["config"]["shape"] == [1, 8, 8]


def test_nan_and_infinite_metrics_become_null(tmp_path):
    record = make_record(utility={"accuracy": float("nan"), "loss": float("inf")})
    record["privacy"][0]["metrics"]["psnr"] = float("-inf")
    record["privacy"][0]["directions"]["psnr"] = "lower"
    record["cost"]["fit_seconds"] = math.nan
    path = write_record(record, tmp_path)
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    json.loads(text, parse_constant=lambda name: pytest.fail(f"non-standard JSON constant {name}"))
    loaded = load_records([tmp_path])
    assert loaded.problems == []
    stored = loaded.records[0]
    assert stored["utility"] == {"accuracy": None, "loss": None}
    assert stored["privacy"][0]["metrics"]["psnr"] is None
    assert stored["privacy"][0]["metrics"]["mse"] == 0.05
    assert stored["cost"]["fit_seconds"] is None
    assert record["utility"]["loss"] == float("inf")  # the caller's record is left as it was


def test_duplicate_record_id_is_refused_and_keeps_the_first(tmp_path):
    record = make_record()
    path = write_record(record, tmp_path)
    before = path.read_text()
    clash = copy.deepcopy(record)
    clash["utility"]["accuracy"] = 0.1
    with pytest.raises(RecordError, match="unique"):
        write_record(clash, tmp_path)
    assert path.read_text() == before
    assert _everything_in(tmp_path) == [path.name]


# ----------------------------------------------------------------------------- validation
def _without(key):
    record = make_record()
    del record[key]
    return record


def _privacy(**entry_overrides):
    record = make_record()
    record["privacy"][0].update(entry_overrides)
    return record


def _privacy_missing(key):
    record = make_record()
    del record["privacy"][0][key]
    return record


INVALID = {
    "missing utility": _without("utility"),
    "missing record_id": _without("record_id"),
    "missing privacy": _without("privacy"),
    "utility is a list": make_record(utility=[0.9]),
    "utility value is a string": make_record(utility={"accuracy": "0.9"}),
    "cost value is a dict": make_record(cost={"parameters": {"n": 3}}),
    "record_id is an int": make_record(record_id=12345678),
    "schema_version is a string": make_record(schema_version="1"),
    "schema from the future": make_record(schema_version=SCHEMA_VERSION + 1),
    "privacy is a dict": make_record(privacy={"attack": "x"}),
    "method without name": make_record(method={"label": "x"}),
    "method label not a string": make_record(method={"name": "x", "label": 3}),
    "dataset without name": make_record(dataset={"seed": 0}),
    "bad direction": _privacy(directions={"mse": "up", "ssim": "lower"}),
    "privacy metric is a string": _privacy(metrics={"mse": "low"}),
    "privacy entry is a list": make_record(privacy=[["feature_inversion"]]),
    "privacy entry without metrics": _privacy_missing("metrics"),
    "privacy entry without directions": _privacy_missing("directions"),
    "privacy entry without attack": _privacy_missing("attack"),
    # every field the leaderboard reads has its type checked, not only its presence
    "schema version 0": make_record(schema_version=0),
    "schema version true": make_record(schema_version=True),
    "method.hparams null": make_record(method={**make_record()["method"], "hparams": None}),
    "method.hparams a list": make_record(method={**make_record()["method"], "hparams": [1]}),
    "seed a list": make_record(seed=[0]),
    "dataset.seed a dict": make_record(dataset={**make_record()["dataset"], "seed": {"a": 1}}),
    "training a string": make_record(training="yes"),
    "training.epochs a string": make_record(training={"epochs": "2"}),
    "config.data a list": make_record(config={"data": [1]}),
    "config.data.init_args a string": make_record(config={"data": {"init_args": "x"}}),
    "paper a list": make_record(paper=[0.9]),
    "paper.source a number": make_record(paper={"accuracy": 0.9, "source": 3}),
    "degenerate a string": make_record(utility={"accuracy": 0.1, "degenerate": "yes"}),
    "attack name a number": _privacy(attack=3),
    "threat model null": _privacy(threat_model=None),
    "attack config a list": _privacy(config=[1]),
    "primary metric a list": _privacy(primary_metric=["mse"]),
    "artifacts a list": make_record(artifacts=["a.png"]),
}


@pytest.mark.parametrize("record", list(INVALID.values()), ids=list(INVALID))
def test_invalid_records_raise_and_write_nothing(tmp_path, record):
    with pytest.raises(RecordError):
        validate_record(record)
    directory = tmp_path / "records"
    with pytest.raises(RecordError):
        write_record(record, directory)
    assert _everything_in(directory) == []
    # an existing folder stays empty too, temporary files included
    directory.mkdir(exist_ok=True)
    with pytest.raises(RecordError):
        write_record(record, directory)
    assert _everything_in(directory) == []


@pytest.mark.parametrize("value", [None, [1, 2], "record", 3])
def test_a_record_must_be_an_object(value):
    with pytest.raises(RecordError, match="JSON object"):
        validate_record(value)


@pytest.mark.parametrize("directions", ["higher", ["higher", "lower"], None])
def test_non_object_directions_raise_record_error(directions):
    with pytest.raises(RecordError):
        validate_record(_privacy(directions=directions))


def test_load_records_skips_a_file_with_non_object_directions(tmp_path):
    good = write_record(make_record(), tmp_path)
    (tmp_path / "bad.json").write_text(json.dumps(_privacy(directions="higher")))
    loaded = load_records([tmp_path])
    assert loaded.paths == [good]
    assert [path.name for path, _ in loaded.problems] == ["bad.json"]


# ----------------------------------------------------------------------------- lenient loading
def test_bad_files_are_reported_and_skipped(tmp_path):
    good = [write_record(make_record(), tmp_path) for _ in range(3)]
    complete = good[0].read_text()
    (tmp_path / "truncated.json").write_text(complete[: len(complete) // 2])
    (tmp_path / "list.json").write_text("[1, 2, 3]\n")
    (tmp_path / "other.json").write_text(json.dumps({"name": "not a record"}))
    (tmp_path / "future.json").write_text(json.dumps(make_record(schema_version=SCHEMA_VERSION + 1)))
    (tmp_path / "binary.json").write_bytes(b"\xff\xfe\x00garbage")
    (tmp_path / ".hidden.json").write_text("{")  # hidden files (temporary ones) are never read
    (tmp_path / "notes.txt").write_text("not json at all")
    loaded = load_records([tmp_path])
    assert sorted(loaded.paths) == sorted(good)
    assert len(loaded.records) == 3
    problems = {path.name: message for path, message in loaded.problems}
    assert set(problems) == {"truncated.json", "list.json", "other.json", "future.json", "binary.json"}
    assert "missing key" in problems["other.json"]
    assert "JSON object" in problems["list.json"]
    assert "newer" in problems["future.json"]


# ----------------------------------------------------------------------------- atomicity
@pytest.mark.parametrize("failing", ["replace", "fsync"])
def test_a_failing_write_leaves_no_partial_record_and_no_temporary_file(tmp_path, monkeypatch, failing):
    earlier = write_record(make_record(), tmp_path)

    def boom(*args, **kwargs):
        raise OSError(f"simulated failure in os.{failing}")

    monkeypatch.setattr(os, failing, boom)
    with pytest.raises(OSError, match="simulated"):
        write_record(make_record(), tmp_path)
    monkeypatch.undo()
    assert _everything_in(tmp_path) == [earlier.name]
    loaded = load_records([tmp_path])
    assert loaded.problems == [] and loaded.paths == [earlier]


def test_an_interrupt_mid_write_also_cleans_up(tmp_path, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_record(make_record(), tmp_path)
    assert _everything_in(tmp_path) == []


# ----------------------------------------------------------------------------- concurrent writers
def _write_many(directory: str, writer: int, count: int) -> None:
    for index in range(count):
        record = make_record(utility={"accuracy": index / count, "writer": writer})
        write_record(record, directory)


def test_concurrent_writers_lose_nothing(tmp_path):
    writers, per_writer = 4, 25
    directory = tmp_path / "shared"
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    context = multiprocessing.get_context(method)
    processes = [
        context.Process(target=_write_many, args=(str(directory), writer, per_writer)) for writer in range(writers)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=60)
    assert [process.exitcode for process in processes] == [0] * writers
    loaded = load_records([directory])
    assert loaded.problems == []
    assert len(loaded.records) == writers * per_writer
    assert len({record["record_id"] for record in loaded.records}) == writers * per_writer
    assert len(set(loaded.paths)) == writers * per_writer
    by_writer = {}
    for record in loaded.records:
        by_writer.setdefault(record["utility"]["writer"], []).append(record["utility"]["accuracy"])
    assert {w: sorted(v) for w, v in by_writer.items()} == {
        w: [i / per_writer for i in range(per_writer)] for w in range(writers)
    }
    assert [name for name in _everything_in(directory) if not name.endswith(".json") or name.startswith(".")] == []


def _hostile_files(directory: Path) -> dict[str, str]:
    """Record files that once crashed the leaderboard, by name -> a word of the expected problem."""
    (directory / "hparams_null.json").write_text(
        json.dumps(make_record(method={**make_record()["method"], "hparams": None}))
    )
    (directory / "nested.json").write_text("[" * 100_000 + "]" * 100_000)
    nested_inside = json.dumps(make_record(artifacts={"deep": 0})).replace(
        '"deep": 0', '"deep": ' + "[" * 50_000 + "]" * 50_000
    )
    (directory / "nested_inside.json").write_text(nested_inside)
    (directory / "version0.json").write_text(json.dumps(make_record(schema_version=0)))
    (directory / "nan.json").write_text(json.dumps(make_record(utility={"accuracy": float("nan")})))
    with (directory / "huge.json").open("wb") as huge:  # sparse: no disk is used
        huge.truncate(MAX_RECORD_BYTES + 1)
    return {
        "hparams_null.json": "method.hparams",
        "nested.json": "nested too deeply",
        "nested_inside.json": "nested too deeply",
        "version0.json": "not supported",
        "nan.json": "NaN",
        "huge.json": "larger than any record",
    }


def test_hostile_record_files_are_one_line_problems(tmp_path):
    good = write_record(make_record(), tmp_path)
    expected = _hostile_files(tmp_path)
    loaded = load_records([tmp_path])
    assert loaded.paths == [good]
    problems = {path.name: message for path, message in loaded.problems}
    assert set(problems) == set(expected)
    for name, word in expected.items():
        assert word in problems[name] and "\n" not in problems[name] and len(problems[name]) < 300, (
            name,
            problems[name],
        )


def test_a_bad_record_never_breaks_the_leaderboard_command(tmp_path, capsys):
    from bench.cli import main

    records = tmp_path / "records"
    records.mkdir()
    write_record(make_record(), records)
    expected = _hostile_files(records)
    main(["leaderboard", "--records", str(records), "--out", str(tmp_path / "board")])
    captured = capsys.readouterr()
    warnings = [line for line in captured.err.splitlines() if line.startswith("bench: warning: skipped ")]
    assert len(warnings) == len(expected) and len(captured.err.splitlines()) == len(expected)
    assert "leaderboard of 1 rows" in captured.out


# ----------------------------------------------------------------------------- the typed record (schema 2)
SHIPPED = Path(__file__).resolve().parent.parent / "leaderboard" / "records"


def test_every_shipped_record_reads_and_round_trips_and_schema_1_ones_migrate():
    from bench.records import Record

    files = sorted(SHIPPED.glob("*.json"))
    loaded = load_records([SHIPPED])
    assert loaded.problems == [] and len(loaded.models) == len(files) > 0
    for path, record in zip(loaded.paths, loaded.models):
        raw = json.loads(path.read_text())
        assert record.schema_version == SCHEMA_VERSION == 2
        if raw["schema_version"] == SCHEMA_VERSION:  # written by today's code: read back exactly as written
            assert record.to_dict() == raw, path.name
            continue
        assert raw["schema_version"] == 1
        written = record.to_dict()
        facts = written.pop("run")
        assert {**written, "schema_version": 1} == raw, path.name  # nothing lost, nothing added but the run facts
        assert facts["world_size"] >= 1 and facts["precision"].endswith(("-true", "-mixed"))
        assert Record.parse(record.to_dict()) == record  # schema 2 reads back to the same record


def test_the_migration_derives_the_run_facts_as_the_leaderboard_did():
    from bench.records import migrate_v1

    record = make_record(schema_version=1)
    del record["run"]
    record["config"] = {
        "config": ["/somewhere/bench/configs/dnn/mnist.yaml", "mine.yaml"],
        "data": {"init_args": {"batch_size": 16}},
        "trainer": {"devices": 2, "num_nodes": 2, "accumulate_grad_batches": 3, "precision": "bf16", "max_steps": 500},
    }
    assert migrate_v1(record)["run"] == {
        "world_size": 4,
        "effective_batch": 192,
        "precision": "bf16-mixed",
        "config_names": ["dnn/mnist", "mine"],
        "budget": {"unit": "steps", "value": 500},
    }
    record["training"] = {"epochs": 3, "world_size": 8}
    facts = migrate_v1(record)["run"]
    assert facts["world_size"] == 8 and facts["budget"] == {"unit": "epochs", "value": 3}


def test_a_schema_2_record_without_run_facts_is_refused():
    record = make_record()
    del record["run"]
    with pytest.raises(RecordError, match="run must be"):
        validate_record(record)
    with pytest.raises(RecordError, match="run.world_size"):
        validate_record(make_record(run={**make_record()["run"], "world_size": "2"}))


def test_a_failed_attack_is_an_entry_with_its_error_and_no_metrics(tmp_path):
    failed = make_record()
    failed["privacy"].append(
        {
            "attack": "nasr",
            "threat_model": "black_box_outputs",
            "metrics": {},
            "directions": {},
            "error": "RuntimeError: out of memory",
        }
    )
    (record,) = load_records([write_record(failed, tmp_path)]).models
    assert [entry.attack for entry in record.failed_attacks] == ["nasr"] and record.privacy[0].error is None
    with pytest.raises(RecordError, match="error"):
        validate_record(_privacy(error=["not", "a", "line"]))


def test_the_documented_json_schema_is_the_models():
    from bench.records import record_schema

    documented = Path(__file__).resolve().parent.parent / "docs" / "record.schema.json"
    assert json.loads(documented.read_text()) == record_schema(), (
        "regenerate: python -m bench.records > docs/record.schema.json"
    )
    assert {"run", "privacy", "method", "schema_version"} <= set(record_schema()["properties"])


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_only_regular_files_are_read_as_records(tmp_path):
    good = write_record(make_record(), tmp_path)
    os.mkfifo(tmp_path / "fifo.json")  # reading it would block forever
    (tmp_path / "zero.json").symlink_to("/dev/zero")  # reading it would never end
    loaded = load_records([tmp_path])
    assert loaded.paths == [good]
    problems = {path.name: message for path, message in loaded.problems}
    assert set(problems) == {"fifo.json", "zero.json"}
    assert all("not a regular file" in message and "\n" not in message for message in problems.values())
