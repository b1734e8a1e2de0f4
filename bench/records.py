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
    """Raise :class:`RecordError` saying what is wrong with ``record``."""
    if not isinstance(record, dict):
        raise RecordError(f"a record is a JSON object, got {type(record).__name__}")
    for key, kind in _REQUIRED.items():
        if key not in record:
            raise RecordError(f"missing key '{key}'")
        if not isinstance(record[key], kind):
            raise RecordError(f"'{key}' must be {getattr(kind, '__name__', kind)}, got {type(record[key]).__name__}")
    if record["schema_version"] > SCHEMA_VERSION:
        raise RecordError(f"schema version {record['schema_version']} is newer than this bench ({SCHEMA_VERSION}); upgrade bench")
    for key in ("name", "label"):
        if not isinstance(record["method"].get(key), str):
            raise RecordError(f"method.{key} must be a string")
    if not isinstance(record["dataset"].get("name"), str):
        raise RecordError("dataset.name must be a string")
    for section in ("utility", "cost"):
        _check_numbers(record[section], section)
    for index, entry in enumerate(record["privacy"]):
        if not isinstance(entry, dict):
            raise RecordError(f"privacy[{index}] must be an object")
        for key in ("attack", "threat_model", "metrics", "directions"):
            if key not in entry:
                raise RecordError(f"privacy[{index}] is missing '{key}'")
        _check_numbers(entry["metrics"], f"privacy[{index}].metrics")
        if entry.get("role", "adversary") not in ("adversary", "diagnostic"):
            raise RecordError(f"privacy[{index}].role must be 'adversary' or 'diagnostic', got {entry.get('role')!r}")
        if not isinstance(entry["directions"], dict):
            raise RecordError(f"privacy[{index}].directions must be an object, got {type(entry['directions']).__name__}")
        bad = {m: d for m, d in entry["directions"].items() if d not in ("higher", "lower")}
        if bad:
            raise RecordError(f"privacy[{index}].directions must be 'higher' or 'lower', got {bad}")


def _check_numbers(values: Any, where: str) -> None:
    if not isinstance(values, dict):
        raise RecordError(f"{where} must be an object")
    for key, value in values.items():
        if value is not None and not isinstance(value, (int, float)):
            raise RecordError(f"{where}.{key} must be a number or null, got {type(value).__name__}")


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
            record = json.loads(file.read_text())
            validate_record(record)
        except (OSError, json.JSONDecodeError, RecordError, UnicodeDecodeError) as error:
            loaded.problems.append((file, str(error)))
            continue
        loaded.records.append(record)
        loaded.paths.append(file)
    return loaded
