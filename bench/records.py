"""Result records: one JSON file per evaluation, written atomically, read leniently.

Every file is written under a unique name through a temporary file in the same folder and an
``os.replace``, so concurrent writers never collide and a reader never sees half a record. A
record that fails validation is reported and skipped by :func:`load_records`, never fatal.

Schema (version 1), the keys every record has:

``schema_version``  int, 1
``record_id``       unique id (hex)
``created``         ISO-8601 UTC time the record was written; ``started``/``finished`` bracket the evaluation
``method``          {name, class, label, network, threat_models, capabilities, hparams}
``dataset``         {name, class, seed, pool_sizes, spec}
``seed``            the training seed (``seed_everything``), or null
``evaluation_seed`` the harness's fixed seed
``training``        what was trained: {epochs, global_step, world_size, limit_train_batches, checkpoint}, or null
``config``          the full configuration of the run (model, data, trainer, evaluation)
``utility``         {accuracy: top-1 on the test pool, ...}; for attribute vectors (spec task "multilabel")
                    accuracy = 1 - mean_attribute_error, with attribute_accuracy/<name> per attribute
``privacy``         list of {attack, class, threat_model, role, config, metrics, directions, primary_metric, details};
                    ``role``: "adversary" (the threat model's attacker) or "diagnostic" (uses the method's own
                    parts; never the privacy verdict); records without it are read as adversaries;
                    ``directions[m]`` is "higher" or "lower": which way metric m means *more* privacy;
                    ``details``: what the attack decided at run time (e.g. the decoder it fell back to)
``skipped_attacks`` (optional) list of {attack, threat_model, class, reason}: attacks of the method's threat
                    models that do not handle its task (e.g. membership inference on attributes)
``cost``            {parameters, nonzero_parameters, released_bytes_per_sample, raw_bytes_per_sample,
                    client_flops_per_sample, fit_seconds, evaluation_seconds}
``paper``           null or {metric name: the paper's reported value, "source": where it was reported}
``software``        {bench, git_revision, torch, lightning, python}
``wandb``           null or {project, entity, run_id, url, mode, dir}
``artifacts``       {name: path of a file written beside the record (reconstruction grids, ...)}
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

SCHEMA_VERSION = 1
#: the versions this bench reads (version 0 never existed in a release: a record saying so is not ours)
SUPPORTED_SCHEMA_VERSIONS = frozenset({1})
#: where a user's records and leaderboard go unless told otherwise: their own results, not the suite's shipped
#: leaderboard (``leaderboard/records``, which changes only when a run or ``bench leaderboard`` is pointed at it)
DEFAULT_RECORDS_DIR = "runs/leaderboard/records"
DEFAULT_LEADERBOARD_DIR = "runs/leaderboard"
#: records are a few tens of kB; a file much larger than any record is refused before it is parsed
MAX_RECORD_BYTES = 16 * 2**20

_REQUIRED: dict[str, type | tuple[type, ...]] = {
    "schema_version": int,
    "record_id": str,
    "created": str,
    "method": dict,
    "dataset": dict,
    "config": dict,
    "utility": dict,
    "privacy": list,
    "cost": dict,
    "software": dict,
}


class RecordError(ValueError):
    """A record that does not follow the schema."""


def new_record_id() -> str:
    return uuid.uuid4().hex


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def validate_record(record: Any) -> None:
    """Raise :class:`RecordError` saying what is wrong with ``record``.

    Every field the leaderboard reads is checked for its type, not only its presence, so that one
    malformed record is reported and skipped instead of breaking the leaderboard (and every later run).
    """
    try:
        _validate(record)
    except RecursionError:  # a structure nested too deeply to walk
        raise RecordError("nested too deeply") from None


def _validate(record: Any) -> None:
    if not isinstance(record, dict):
        raise RecordError(f"a record is a JSON object, got {type(record).__name__}")
    for key, kind in _REQUIRED.items():
        if key not in record:
            raise RecordError(f"missing key '{key}'")
        if not isinstance(record[key], kind) or isinstance(record[key], bool):
            raise RecordError(f"'{key}' must be {getattr(kind, '__name__', kind)}, got {type(record[key]).__name__}")
    version = record["schema_version"]
    if version > SCHEMA_VERSION:
        raise RecordError(f"schema version {version} is newer than this bench ({SCHEMA_VERSION}); upgrade bench")
    if version not in SUPPORTED_SCHEMA_VERSIONS:
        raise RecordError(f"schema version {version} is not supported (this bench reads {sorted(SUPPORTED_SCHEMA_VERSIONS)})")
    method, dataset = record["method"], record["dataset"]
    for key in ("name", "label"):
        _expect(method.get(key), str, f"method.{key}")
    _expect(method.get("hparams", {}), dict, "method.hparams")
    _expect(dataset.get("name"), str, "dataset.name")
    for key, section in (("seed", record), ("seed", dataset)):
        _expect(section.get(key), (int, type(None)), "seed" if section is record else "dataset.seed")
    _expect(record.get("training"), (dict, type(None)), "training")
    for key in ("epochs", "global_step", "world_size"):
        _expect((record.get("training") or {}).get(key), (int, type(None)), f"training.{key}")
    for key in ("model", "data", "trainer", "evaluation"):
        _expect(record["config"].get(key), (dict, type(None)), f"config.{key}")
    for key in ("model", "data"):
        init_args = (record["config"].get(key) or {}).get("init_args")
        _expect(init_args, (dict, type(None)), f"config.{key}.init_args")
    paper = record.get("paper")
    _expect(paper, (dict, type(None)), "paper")
    _expect((paper or {}).get("source"), (str, type(None)), "paper.source")
    for section in ("utility", "cost"):
        _check_numbers(record[section], section)
    _expect(record["utility"].get("accuracy"), (int, float, type(None)), "utility.accuracy")
    _expect(record["utility"].get("degenerate", False), bool, "utility.degenerate")
    _expect(record.get("artifacts", {}), dict, "artifacts")
    for index, entry in enumerate(record["privacy"]):
        where = f"privacy[{index}]"
        if not isinstance(entry, dict):
            raise RecordError(f"{where} must be an object")
        for key in ("attack", "threat_model", "metrics", "directions"):
            if key not in entry:
                raise RecordError(f"{where} is missing '{key}'")
        for key in ("attack", "threat_model"):
            _expect(entry[key], str, f"{where}.{key}")
        _expect(entry.get("primary_metric"), (str, type(None)), f"{where}.primary_metric")
        _expect(entry.get("config"), (dict, type(None)), f"{where}.config")
        _check_numbers(entry["metrics"], f"{where}.metrics")
        if entry.get("role", "adversary") not in ("adversary", "diagnostic"):
            raise RecordError(f"{where}.role must be 'adversary' or 'diagnostic', got {entry.get('role')!r}")
        if not isinstance(entry["directions"], dict):
            raise RecordError(f"{where}.directions must be an object, got {type(entry['directions']).__name__}")
        bad = {m: d for m, d in entry["directions"].items() if d not in ("higher", "lower")}
        if bad:
            raise RecordError(f"{where}.directions must be 'higher' or 'lower', got {bad}")


def _expect(value: Any, kind: type | tuple[type, ...], where: str) -> None:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        names = " or ".join("null" if k is type(None) else k.__name__ for k in kinds)
        raise RecordError(f"{where} must be {names}, got {type(value).__name__}")


def _check_numbers(values: Any, where: str) -> None:
    if not isinstance(values, dict):
        raise RecordError(f"{where} must be an object")
    for key, value in values.items():
        if value is not None and not isinstance(value, (int, float)):
            raise RecordError(f"{where}.{key} must be a number or null, got {type(value).__name__}")
        if isinstance(value, float) and not math.isfinite(value):
            raise RecordError(f"{where}.{key} must be finite, got {value}")


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):  # numpy and torch scalars/arrays
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (set, tuple)):
        return list(value)
    return repr(value)


def _finite_or_none(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN; a missing value is what it means
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite_or_none(v) for v in value]
    return value


def record_filename(record: dict[str, Any]) -> str:
    stamp = record["created"].replace(":", "").replace("-", "").split("+")[0]
    safe = lambda text: "".join(c if c.isalnum() or c in "_." else "_" for c in str(text))[:40]  # noqa: E731
    return f"{stamp}-{safe(record['dataset']['name'])}-{safe(record['method']['name'])}-{record['record_id'][:8]}.json"


def write_record(record: dict[str, Any], directory: str | Path) -> Path:
    """Validate ``record`` and write it atomically into ``directory``; return its path."""
    record = _finite_or_none(json.loads(json.dumps(record, default=_json_default)))
    validate_record(record)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / record_filename(record)
    if path.exists():
        raise RecordError(f"{path} already exists: record ids must be unique")
    handle, temporary = tempfile.mkstemp(prefix=".record-", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(handle, "w") as stream:
            json.dump(record, stream, indent=2, sort_keys=True, allow_nan=False)
            stream.write("\n")
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def read_record(file: str | Path) -> dict[str, Any]:
    """One record file, parsed and validated; any problem is a :class:`RecordError` of one line."""
    file = Path(file)
    try:
        size = file.stat().st_size
        if size > MAX_RECORD_BYTES:
            raise RecordError(f"{size / 2**20:.0f} MiB is larger than any record ({MAX_RECORD_BYTES // 2**20} MiB at most)")
        record = json.loads(file.read_text(encoding="utf-8"), parse_constant=_reject_constant)
    except RecursionError:
        raise RecordError("nested too deeply") from None
    except (OSError, ValueError) as error:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise RecordError(str(error).splitlines()[0] if str(error) else type(error).__name__) from None
    validate_record(record)
    return record


def _reject_constant(name: str) -> Any:
    raise RecordError(f"{name} is not a number a record may hold (JSON has no NaN or Infinity; bench writes null)")


@dataclass
class LoadedRecords:
    records: list[dict[str, Any]]
    paths: list[Path]
    problems: list[tuple[Path, str]]  # (file, what is wrong), for files that were skipped


def load_records(paths: Iterable[str | Path]) -> LoadedRecords:
    """Read every ``*.json`` record under the given files or folders; skip and report bad ones."""
    files: list[Path] = []
    for location in map(Path, paths):
        if location.is_dir():
            files += sorted(p for p in location.rglob("*.json") if not p.name.startswith("."))
        elif location.exists():
            files.append(location)
    loaded = LoadedRecords([], [], [])
    for file in files:
        try:
            record = read_record(file)
        except RecordError as error:
            loaded.problems.append((file, str(error)))
            continue
        loaded.records.append(record)
        loaded.paths.append(file)
    return loaded
