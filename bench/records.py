"""Result records: one JSON file per evaluation, a typed :class:`Record`, written atomically, read leniently.

The schema is the :class:`Record` model, exported as JSON Schema in ``docs/record.schema.json`` (regenerate it
with ``python -m bench.records``). A record is validated once when it is built (model construction,
which :func:`write_record` does) and once when it is read (:func:`read_record`); schema 1 records are
read through :func:`migrate_v1`, which adds the run facts (``run``) that schema 2 records carry from
their evaluation.

Every file is written under a unique name through a temporary file in the same folder and an
``os.replace``, so concurrent writers never collide and a reader never sees half a record. A
record that fails validation is reported and skipped by :func:`load_records`, never fatal.

Schema (version 2), the keys every record has:

``schema_version``  int, 2 (1: read through :func:`migrate_v1`)
``record_id``       unique id (hex)
``created``         ISO-8601 UTC time the record was written; ``started``/``finished`` bracket the evaluation
``method``          {name, class, label, network, threat_models, capabilities, hparams}
``dataset``         {name, class, seed, pool_sizes, spec}
``seed``            the training seed (``seed_everything``), or null
``evaluation_seed`` the harness's fixed seed
``training``        what was trained: {epochs, global_step, world_size, limit_train_batches, checkpoint}, or null
``run``             the run facts the leaderboard groups by: {world_size, effective_batch, precision, config_names,
                    budget: {unit: "epochs" | "steps", value} or null}
``config``          the full configuration of the run (model, data, trainer, evaluation)
``utility``         {accuracy: top-1 on the test pool, ...}; for attribute vectors (spec task "multilabel")
                    accuracy = 1 - mean_attribute_error, with attribute_accuracy/<name> per attribute
``privacy``         list of {attack, class, threat_model, role, config, metrics, directions, primary_metric, details,
                    error}; ``role``: "adversary" (the threat model's attacker) or "diagnostic" (uses the method's own
                    parts; never the privacy verdict); records without it are read as adversaries;
                    ``directions[m]`` is "higher" or "lower": which way metric m means *more* privacy;
                    ``details``: what the attack decided at run time (e.g. the decoder it fell back to);
                    ``error``: "ExceptionType: first line" of an attack that failed (its metrics are empty)
``skipped_attacks`` (optional) list of {attack, threat_model, class, reason}: attacks of the method's threat
                    models that do not handle its task (e.g. membership inference on attributes)
``cost``            {parameters, nonzero_parameters, released_bytes_per_sample, raw_bytes_per_sample,
                    client_flops_per_sample, fit_seconds, evaluation_seconds; with membership attacks
                    shadow_models_trained and shadow_pool_offline / shadow_pool_online: the models of the evaluation's
                    shared shadow pools}
``paper``           null or {metric name: the paper's reported value, "source": where it was reported}
``software``        {bench, git_revision, torch, lightning, python}
``wandb``           null or {project, entity, run_id, url, mode, dir}
``artifacts``       {name: path of a file written beside the record (reconstruction grids, ...)}
``experiment``      (optional) the leaderboard experiment the run belongs to
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
from typing import Any, Iterable, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from bench.errors import irregular_kind

SCHEMA_VERSION = 2
#: the versions this bench reads (version 0 never existed in a release: a record saying so is not ours)
SUPPORTED_SCHEMA_VERSIONS = frozenset({1, 2})
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
    """Raise :class:`RecordError` saying what is wrong with ``record`` (a dict, as read from JSON).

    Every field the leaderboard reads is checked for its type, not only its presence, so that one
    malformed record is reported and skipped instead of breaking the leaderboard (and every later run).
    """
    Record.parse(record)


def _check_structure(record: Any) -> None:
    """The checks behind :class:`Record`'s validation: one line naming the field, as earlier benches wrote them."""
    try:
        _validate(record)
    except RecursionError:  # a structure nested too deeply to walk
        raise RecordError("nested too deeply") from None


def _validate(record: Any) -> None:
    if not isinstance(record, dict):
        raise RecordError(f"a record is a JSON object, got {type(record).__name__}")
    _check_required_keys(record)
    version = record["schema_version"]
    _check_schema_version(version)
    _check_setting(record)
    _check_results(record)
    for index, entry in enumerate(record["privacy"]):
        _check_privacy_entry(entry, f"privacy[{index}]")
    if version >= 2:
        _check_run_facts(record.get("run"))


def _check_required_keys(record: dict) -> None:
    for key, kind in _REQUIRED.items():
        if key not in record:
            raise RecordError(f"missing key '{key}'")
        if not isinstance(record[key], kind) or isinstance(record[key], bool):
            raise RecordError(f"'{key}' must be {getattr(kind, '__name__', kind)}, got {type(record[key]).__name__}")


def _check_schema_version(version: int) -> None:
    if version > SCHEMA_VERSION:
        raise RecordError(f"schema version {version} is newer than this bench ({SCHEMA_VERSION}); upgrade bench")
    if version not in SUPPORTED_SCHEMA_VERSIONS:
        raise RecordError(
            f"schema version {version} is not supported (this bench reads {sorted(SUPPORTED_SCHEMA_VERSIONS)})"
        )


def _check_setting(record: dict) -> None:
    """What was run: method, dataset, seeds, training, config and paper."""
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


def _check_results(record: dict) -> None:
    """Utility, cost and artifacts (the privacy entries are checked one by one)."""
    for section in ("utility", "cost"):
        _check_numbers(record[section], section)
    _expect(record["utility"].get("accuracy"), (int, float, type(None)), "utility.accuracy")
    _expect(record["utility"].get("degenerate", False), bool, "utility.degenerate")
    _expect(record.get("artifacts", {}), dict, "artifacts")


def _check_privacy_entry(entry: Any, where: str) -> None:
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
    _expect(entry.get("error"), (str, type(None)), f"{where}.error")


def _check_run_facts(run: Any) -> None:
    _expect(run, dict, "run")
    _expect(run.get("world_size"), int, "run.world_size")
    _expect(run.get("effective_batch"), (int, type(None)), "run.effective_batch")
    _expect(run.get("precision"), str, "run.precision")
    _expect(run.get("config_names"), list, "run.config_names")
    _expect(run.get("budget"), (dict, type(None)), "run.budget")


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


def plain_json(value: Any) -> Any:
    """``value`` as JSON would hold it: tensors and paths converted, NaN and infinities null."""
    return _finite_or_none(json.loads(json.dumps(value, default=_json_default)))


# ----------------------------------------------------------------------------- run facts (schema 2), and schema 1
_PRECISIONS = {"32": "32-true", "16": "16-mixed", "bf16": "bf16-mixed", "64": "64-true"}


def precision_name(value: Any) -> str:
    """Lightning's precision spellings, one name each (None: the default, 32-true)."""
    text = "32" if value is None else str(value)
    return _PRECISIONS.get(text, text)


def _mapping(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def _positive_int(value: Any) -> Optional[int]:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def config_names(config: dict[str, Any]) -> list[str]:
    """The shipped config names (or file names) a run was started with (``--config`` files, in order)."""
    names = []
    files = config.get("config")
    for item in files if isinstance(files, list) else [files] if isinstance(files, str) else []:
        text = str(item).replace("\\", "/")
        text = text.split("/bench/configs/", 1)[1] if "/bench/configs/" in text else text.rsplit("/", 1)[-1]
        names.append(text[:-5] if text.endswith(".yaml") else text)
    return names


def _world_size_v1(training: dict, trainer: dict) -> int:
    for source in (training, trainer):
        if _positive_int(source.get("world_size")):
            return source["world_size"]
    devices, nodes = _positive_int(trainer.get("devices")), _positive_int(trainer.get("num_nodes", 1))
    return devices * nodes if devices and nodes else 1


def _budget_v1(training: dict, trainer: dict) -> Optional[dict[str, Any]]:
    """The epochs actually trained (records say so since they carry `training`), else the configured budget."""
    epochs = training.get("epochs")
    if isinstance(epochs, int) and not isinstance(epochs, bool):
        return {"unit": "epochs", "value": epochs}
    for key, unit in (("max_epochs", "epochs"), ("max_steps", "steps")):  # Lightning: None or -1 is no limit
        value = trainer.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return {"unit": unit, "value": value}
    return None


def effective_batch(batch_size: Any, world_size: int, accumulate: Any) -> Optional[int]:
    """Samples per optimizer step: the per-device batch times the devices times the accumulated batches."""
    accumulate = _positive_int(accumulate) or 1
    return (
        batch_size * world_size * accumulate
        if isinstance(batch_size, int) and not isinstance(batch_size, bool)
        else None
    )


def run_facts_from_config(config: dict[str, Any], training: Optional[dict[str, Any]]) -> dict[str, Any]:
    """The run facts of a schema 1 record (or a checkpoint's run), derived from its configuration as the
    leaderboard derived them before records carried them."""
    trainer = _mapping(config.get("trainer"))
    world = _world_size_v1(_mapping(training), trainer)
    batch = _mapping(_mapping(config.get("data")).get("init_args")).get("batch_size")
    return {
        "world_size": world,
        "effective_batch": effective_batch(batch, world, trainer.get("accumulate_grad_batches", 1)),
        "precision": precision_name(trainer.get("precision")),
        "config_names": config_names(config),
        "budget": _budget_v1(_mapping(training), trainer),
    }


def migrate_v1(record: dict[str, Any]) -> dict[str, Any]:
    """A schema 1 record as schema 2: the same fields, and ``run`` derived from its configuration."""
    return {**record, "schema_version": 2, "run": run_facts_from_config(record["config"], record.get("training"))}


# ----------------------------------------------------------------------------- the typed record
class _Open(BaseModel):
    """A section whose other keys are kept as they are (hyper-parameters, specs, details)."""

    model_config = ConfigDict(extra="allow", strict=True, populate_by_name=True)


class MethodInfo(_Open):
    name: str
    label: str
    class_path: Optional[str] = Field(default=None, alias="class")
    network: Any = None
    threat_models: list[str] = Field(default_factory=list)
    capabilities: list[str] = Field(default_factory=list)
    hparams: dict[str, Any] = Field(default_factory=dict)

    @property
    def declared_headline_cost(self) -> tuple[str, ...]:
        """The cost fields the method asks the leaderboard's headline to show (its ``headline_cost``, kept as an
        extra key of the section), () where it asks for none."""
        declared = (self.model_extra or {}).get("headline_cost")
        return tuple(str(field) for field in declared) if isinstance(declared, list) else ()


class DatasetInfo(_Open):
    name: str
    class_path: Optional[str] = Field(default=None, alias="class")
    seed: Optional[int] = None
    pool_sizes: dict[str, Any] = Field(default_factory=dict)

    @property
    def stated_pool_sizes(self) -> Optional[dict[str, Any]]:
        """``pool_sizes`` as the record states it, None where it says nothing (the field's default is {}): the
        leaderboard tells the two apart, as it did when it read the JSON."""
        return self.pool_sizes if "pool_sizes" in self.model_fields_set else None

    @property
    def design_pool_sizes(self) -> Optional[dict[str, Any]]:
        """The stated pool sizes as the run was designed: the train pool without the canaries its data seed happened
        to draw into it (each candidate goes in with probability 1/2, so the count differs from seed to seed), and the
        number of candidates beside it. Records of one design on other data seeds are seeds of one experiment."""
        sizes = self.stated_pool_sizes
        canaries = (self.model_extra or {}).get("canaries")
        if not isinstance(sizes, dict) or not isinstance(canaries, dict):
            return sizes
        train, included, count = sizes.get("train"), canaries.get("included"), canaries.get("count")
        if not all(isinstance(value, int) and not isinstance(value, bool) for value in (train, included, count)):
            return sizes
        if not 0 <= included <= min(train, count):  # not a draw of candidates into this train pool
            return sizes
        return {**sizes, "train": train - included, "canary_candidates": count}


class Training(_Open):
    epochs: Optional[int] = None
    global_step: Optional[int] = None
    world_size: Optional[int] = None
    limit_train_batches: Any = None
    checkpoint: Optional[str] = None


class Budget(_Open):
    unit: Literal["epochs", "steps"]
    value: int


class RunFacts(_Open):
    """What the leaderboard groups runs by, written when the run is evaluated (not re-derived from its config)."""

    world_size: int
    effective_batch: Optional[int] = None
    precision: str
    config_names: list[str] = Field(default_factory=list)
    budget: Optional[Budget] = None


class PrivacyEntry(_Open):
    attack: str
    threat_model: str
    role: Literal["adversary", "diagnostic"] = "adversary"
    class_path: Optional[str] = Field(default=None, alias="class")
    config: Optional[dict[str, Any]] = None
    metrics: dict[str, Any]
    directions: dict[str, Literal["higher", "lower"]]
    primary_metric: Optional[str] = None
    details: Optional[dict[str, Any]] = None
    warnings: list[Any] = Field(default_factory=list)
    #: "ExceptionType: first line" of an attack that failed after training; its metrics are empty
    error: Optional[str] = None
    #: the attack's wall time (training its attackers and shadows included) and the device it ran on; absent in
    #: records written before they were kept
    seconds: Optional[float] = None
    device: Optional[str] = None

    @property
    def adversary(self) -> bool:
        return self.role != "diagnostic"

    @property
    def failed(self) -> bool:
        return self.error is not None


class ExternalInfo(_Open):
    """What ``bench audit`` evaluated that bench did not train, and what it assumed about it (issue 26).

    Such a record is comparable only within its own experiment: its recipe and data split are the user's."""

    kind: Literal["classifier", "split", "scores"]
    #: what the command line named (never read back as code): the factory, the train function
    factory: Optional[str] = None
    weights_sha256: Optional[str] = None
    members: Optional[str] = None
    recipe: Optional[str] = None
    #: a split model's server part (``bench audit --release ... --head``), which gives the record its utility
    head: Optional[str] = None
    head_weights_sha256: Optional[str] = None
    scores: Optional[str] = None
    scores_sha256: Optional[str] = None
    assumptions: list[str] = Field(default_factory=list)


class Record(_Open):
    """One evaluation's result record (schema 2). Build it with :meth:`parse` from a dict, or as a model."""

    schema_version: int = SCHEMA_VERSION
    record_id: str
    created: str
    started: Optional[str] = None
    finished: Optional[str] = None
    method: MethodInfo
    dataset: DatasetInfo
    seed: Optional[int] = None
    evaluation_seed: Optional[int] = None
    training: Optional[Training] = None
    run: RunFacts
    config: dict[str, Any]
    utility: dict[str, Any]
    privacy: list[PrivacyEntry]
    skipped_attacks: list[dict[str, Any]] = Field(default_factory=list)
    cost: dict[str, Any]
    paper: Optional[dict[str, Any]] = None
    software: dict[str, Any]
    wandb: Optional[dict[str, Any]] = None
    artifacts: dict[str, Any] = Field(default_factory=dict)
    experiment: Optional[str] = None
    #: set by ``bench audit``: the model (or scores) came from elsewhere
    external: Optional[ExternalInfo] = None

    @model_validator(mode="before")
    @classmethod
    def _structure(cls, data: Any) -> Any:
        _check_structure(data)  # RecordError is a ValueError: pydantic reports it, parse() gives its line back
        return migrate_v1(data) if data["schema_version"] == 1 else data

    @classmethod
    def parse(cls, data: Any) -> "Record":
        """The record ``data`` (a dict as JSON holds it; schema 1 is migrated) or a one-line :class:`RecordError`."""
        if isinstance(data, Record):
            return data  # validated when it was built
        try:
            return cls.model_validate(data)
        except RecordError:
            raise
        except ValidationError as error:
            raise RecordError(_first_problem(error)) from None
        except RecursionError:
            raise RecordError("nested too deeply") from None

    def to_dict(self) -> dict[str, Any]:
        """The record as JSON holds it: the keys it was given (an absent optional key stays absent)."""
        return self.model_dump(mode="json", by_alias=True, exclude_unset=True)

    @property
    def git_revision(self) -> Optional[str]:
        """The git revision of the bench that wrote the record (``software.git_revision``), None where unknown."""
        revision = self.software.get("git_revision")
        return revision if isinstance(revision, str) else None

    @property
    def paper_source(self) -> Optional[str]:
        """Where the paper reported the values in ``paper`` (``paper.source``), None where it does not say."""
        source = (self.paper or {}).get("source")
        return source if isinstance(source, str) else None

    @property
    def failed_attacks(self) -> list[PrivacyEntry]:
        return [entry for entry in self.privacy if entry.failed]

    @property
    def degenerate(self) -> bool:
        return (self.model_extra or {}).get("degenerate") is True or self.utility.get("degenerate") is True


def _first_problem(error: ValidationError) -> str:
    first = error.errors(include_url=False)[0]
    context = (first.get("ctx") or {}).get("error")
    if isinstance(context, RecordError):
        return str(context)
    where = ".".join(str(part) for part in first["loc"])
    return f"{where}: {first['msg']}" if where else first["msg"]


def record_schema() -> dict[str, Any]:
    """The JSON Schema of :class:`Record` (``docs/record.schema.json``; ``python -m bench.records`` prints it)."""
    schema = Record.model_json_schema(by_alias=True)
    schema["$id"] = f"https://bench/record.schema.v{SCHEMA_VERSION}.json"
    return schema


# ----------------------------------------------------------------------------- files
def record_filename(record: Record) -> str:
    stamp = record.created.replace(":", "").replace("-", "").split("+")[0]
    safe = lambda text: "".join(c if c.isalnum() or c in "_." else "_" for c in str(text))[:40]  # noqa: E731
    return f"{stamp}-{safe(record.dataset.name)}-{safe(record.method.name)}-{record.record_id[:8]}.json"


def write_record(record: Record | dict[str, Any], directory: str | Path) -> Path:
    """Write ``record`` atomically into ``directory``; return its path. A dict is validated (as a :class:`Record`)
    first; a :class:`Record` was validated when it was built."""
    if not isinstance(record, Record):
        record = Record.parse(plain_json(record))
    text = json.dumps(record.to_dict(), indent=2, sort_keys=True, allow_nan=False) + "\n"
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / record_filename(record)
    if path.exists():
        raise RecordError(f"{path} already exists: record ids must be unique")
    handle, temporary = tempfile.mkstemp(prefix=".record-", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(handle, "w") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def read_record(file: str | Path) -> Record:
    """One record file, parsed and validated; any problem is a :class:`RecordError` of one line.

    Only a regular file is opened: a FIFO or a device (a link to /dev/zero) named ``*.json`` would block or
    never end.
    """
    file = Path(file)
    try:
        info = file.stat()
        kind = irregular_kind(info.st_mode)
        if kind is not None:
            raise RecordError(f"{kind} named like a record, not a regular file: not read")
        if info.st_size > MAX_RECORD_BYTES:
            raise RecordError(
                f"{info.st_size / 2**20:.0f} MiB is larger than any record ({MAX_RECORD_BYTES // 2**20} MiB at most)"
            )
        with open(file, "rb") as stream:  # at most one byte past the limit, whatever the file claims
            data = stream.read(MAX_RECORD_BYTES + 1)
        raw = json.loads(data.decode("utf-8"), parse_constant=_reject_constant)
    except RecursionError:
        raise RecordError("nested too deeply") from None
    except (OSError, ValueError) as error:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        if isinstance(error, RecordError):
            raise
        raise RecordError(str(error).splitlines()[0] if str(error) else type(error).__name__) from None
    return Record.parse(raw)


def _reject_constant(name: str) -> Any:
    raise RecordError(f"{name} is not a number a record may hold (JSON has no NaN or Infinity; bench writes null)")


@dataclass
class LoadedRecords:
    models: list[Record]
    paths: list[Path]
    problems: list[tuple[Path, str]]  # (file, what is wrong), for files that were skipped

    @property
    def records(self) -> list[dict[str, Any]]:
        """The records as dicts (schema 2: schema 1 records migrated), for code that reads JSON."""
        return [model.to_dict() for model in self.models]


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
        loaded.models.append(record)
        loaded.paths.append(file)
    return loaded


if __name__ == "__main__":  # python -m bench.records > docs/record.schema.json
    print(json.dumps(record_schema(), indent=2, sort_keys=True))
