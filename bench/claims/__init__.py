"""The papers' claims as data: one small YAML file per paper, evaluated against result records.

A claims file states each claim of a paper that the suite measures as a comparison of values read
from records; :func:`evaluate_claims` says for each whether our records reproduce it (yes / no /
partly / not run at this scale). The language is declarative and tiny: nothing in a claims file is
executed, every key is checked against the grammar below before anything is evaluated, and a file
that breaks it is reported in one line and skipped.

Grammar (every key not listed is an error)::

    paper: str                      # the citation shown as the section heading
    claims:                         # a non-empty list of
      - claim: str                  # one sentence, as the paper states it
        paper: str | number         # the paper's number(s), with table or figure
        check: COMPARISON | {all: [COMPARISON, ...]}
        note: str                   # optional: what differs in our setting
    COMPARISON = {left: OPERAND, op: "<" | "<=" | ">" | ">=", right: OPERAND}
    OPERAND    = number | {method: str, label: str, dataset: str, experiment: str,
                           where: {hparam: value}, value: PATH, factor: number, offset: number,
                           reduce: one | max | min | mean}
    PATH       = utility.KEY | cost.KEY | privacy.ATTACK.METRIC | worst_case.THREAT_MODEL.METRIC

An operand selects records (``method``: the record's ``method.name``, ``label``: its row label,
``where``: hyper-parameters that must be equal) and reads one value from each; the value of a
setting is its mean over seeds, and the operand is ``factor * value + offset``. When several
settings match, ``reduce`` says how to combine them (``one``, the default, refuses to choose).
``worst_case.THREAT_MODEL.METRIC`` is the best any adversary of that threat model achieved on
METRIC (diagnostics never count), following each attack's declared direction.

A comparison is *not run* when an operand matches no record. ``all`` is yes when every comparison
holds, no when none does, partly otherwise, and not run when none of them could be evaluated.

A yes or a no is only as good as the numbers behind it: where the caller can read intervals, each operand
carries its 95% interval (the record's own for one seed, e.g. a Clopper-Pearson interval of a rate; the
t-interval of the mean over seeds for several; a constant's is itself), and a verdict one of whose comparisons
has overlapping intervals is *not significant* (:attr:`Verdict.significant` False): the order it states is not
established either way.
"""

from __future__ import annotations

import math
import re
import warnings
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence

import yaml

from bench.deprecation import SUITE_METHODS, BenchDeprecationWarning, current_hparams

YES, NO, PARTLY, NOT_RUN = "yes", "no", "partly", "not run at this scale"
#: the coverage of the intervals a comparison is judged with
CONFIDENCE = 0.95
OPERATORS: dict[str, Callable[[float, float], bool]] = {
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
}
OPERATOR_SIGNS = {"<": "<", "<=": "≤", ">": ">", ">=": "≥"}
REDUCERS = ("one", "max", "min", "mean")
# a METRIC may hold dots of its own (tpr_at_0.1pct_fpr): everything after the attack or threat model is the metric
_PATH = re.compile(r"^(utility|cost)\.[^.\s]+$|^(privacy|worst_case)\.[^.\s]+\.\S+$")
_FILE_KEYS, _CLAIM_KEYS = {"paper", "claims"}, {"claim", "paper", "check", "note"}
_COMPARISON_KEYS = {"left", "op", "right"}
_OPERAND_KEYS = {"method", "label", "dataset", "experiment", "where", "value", "factor", "offset", "reduce"}
_MAX_FILE_BYTES = 256 * 1024


class ClaimsError(ValueError):
    """A claims file that does not follow the grammar."""


@dataclass(frozen=True)
class Operand:
    value: Optional[str] = None  # a PATH; None for a constant
    constant: Optional[float] = None
    method: Optional[str] = None
    label: Optional[str] = None
    dataset: Optional[str] = None
    experiment: Optional[str] = None
    where: tuple[tuple[str, Any], ...] = ()
    factor: float = 1.0
    offset: float = 0.0
    reduce: str = "one"


@dataclass(frozen=True)
class Comparison:
    left: Operand
    op: str
    right: Operand


@dataclass(frozen=True)
class Claim:
    claim: str
    paper: str
    comparisons: tuple[Comparison, ...]
    note: Optional[str] = None


@dataclass(frozen=True)
class ClaimsFile:
    paper: str
    claims: tuple[Claim, ...]
    source: str  # the file name, for messages


@dataclass
class Verdict:
    claim: Claim
    status: str
    ours: str  # what we measured, one comparison after another
    reasons: list[str] = field(default_factory=list)  # why a comparison could not be evaluated
    scales: list[str] = field(default_factory=list)  # the scales of the settings that were compared
    #: False: some comparison's intervals overlap; True: every comparison with intervals has them apart (and one
    #: has); None: no comparison could be tested (an operand without an interval)
    significant: Optional[bool] = None

    @property
    def status_text(self) -> str:
        """The status, with '(not significant)' when an order it rests on is within the intervals."""
        return f"{self.status} (not significant)" if self.significant is False else self.status


# ---------------------------------------------------------------------------------------------- parsing
def _require(condition: bool, where: str, message: str) -> None:
    if not condition:
        raise ClaimsError(f"{where}: {message}")


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _keys(section: Any, allowed: set[str], required: set[str], where: str) -> None:
    _require(isinstance(section, dict), where, f"must be a mapping, got {type(section).__name__}")
    unknown = sorted(set(map(str, section)) - allowed)
    _require(not unknown, where, f"unknown key(s) {unknown}; allowed: {sorted(allowed)}")
    missing = sorted(required - set(section))
    _require(not missing, where, f"missing key(s) {missing}")


def _operand(raw: Any, where: str) -> Operand:
    if _number(raw):
        return Operand(constant=float(raw))
    _keys(raw, _OPERAND_KEYS, {"value"}, where)
    path = raw["value"]
    _require(
        isinstance(path, str) and bool(_PATH.match(path)),
        where,
        f"value must be utility.KEY, cost.KEY, privacy.ATTACK.METRIC or worst_case.THREAT_MODEL.METRIC, got {path!r}",
    )
    for key in ("method", "label", "dataset", "experiment"):
        _require(raw.get(key) is None or isinstance(raw[key], str), where, f"{key} must be a string")
    _require(
        any(raw.get(key) for key in ("method", "label", "experiment")),
        where,
        "select records with at least one of method, label or experiment",
    )
    where_ = raw.get("where") or {}
    _require(isinstance(where_, dict), where, "where must be a mapping of hyper-parameter: value")
    for key, value in where_.items():
        _require(
            value is None or isinstance(value, (str, int, float, bool)),
            where,
            f"where.{key} must be a plain value, got {type(value).__name__}",
        )
    if isinstance(raw.get("method"), str):  # records are read under the current names: so are the claims' settings
        current = current_hparams(f"{SUITE_METHODS}{raw['method']}", where_)
        if current != where_:
            warnings.warn(
                f"{where}: where {where_} uses deprecated names; write {current}", BenchDeprecationWarning, stacklevel=2
            )
            where_ = current
    for key in ("factor", "offset"):
        _require(raw.get(key) is None or _number(raw[key]), where, f"{key} must be a number")
    reduce = raw.get("reduce", "one")
    _require(reduce in REDUCERS, where, f"reduce must be one of {list(REDUCERS)}, got {reduce!r}")
    return Operand(
        value=path,
        method=raw.get("method"),
        label=raw.get("label"),
        dataset=raw.get("dataset"),
        experiment=raw.get("experiment"),
        where=tuple(sorted((str(k), v) for k, v in where_.items())),
        factor=float(raw.get("factor", 1.0)),
        offset=float(raw.get("offset", 0.0)),
        reduce=reduce,
    )


def _comparison(raw: Any, where: str) -> Comparison:
    _keys(raw, _COMPARISON_KEYS, _COMPARISON_KEYS, where)
    _require(raw["op"] in OPERATORS, where, f"op must be one of {list(OPERATORS)}, got {raw['op']!r}")
    return Comparison(_operand(raw["left"], f"{where}.left"), raw["op"], _operand(raw["right"], f"{where}.right"))


def parse_claims(text: str, source: str = "<claims>") -> ClaimsFile:
    """Parse and validate one claims file; raise :class:`ClaimsError` with the first problem."""
    try:
        data = yaml.safe_load(text)  # plain data only: no tags, no objects
    except yaml.YAMLError as error:
        raise ClaimsError(f"{source}: not valid YAML ({str(error).splitlines()[0]})") from None
    _keys(data, _FILE_KEYS, _FILE_KEYS, source)
    _require(isinstance(data["paper"], str) and data["paper"].strip() != "", source, "paper must be a non-empty string")
    _require(isinstance(data["claims"], list) and len(data["claims"]) > 0, source, "claims must be a non-empty list")
    claims = []
    for index, raw in enumerate(data["claims"]):
        where = f"{source}: claims[{index}]"
        _keys(raw, _CLAIM_KEYS, {"claim", "paper", "check"}, where)
        _require(isinstance(raw["claim"], str), where, "claim must be a sentence")
        _require(isinstance(raw["paper"], str) or _number(raw["paper"]), where, "paper must be a string or a number")
        _require(raw.get("note") is None or isinstance(raw["note"], str), where, "note must be a string")
        check = raw["check"]
        if isinstance(check, dict) and set(check) == {"all"}:
            _require(
                isinstance(check["all"], list) and len(check["all"]) > 0, where, "check.all must be a non-empty list"
            )
            comparisons = tuple(_comparison(c, f"{where}.check.all[{i}]") for i, c in enumerate(check["all"]))
        else:
            comparisons = (_comparison(check, f"{where}.check"),)
        claims.append(Claim(raw["claim"].strip(), str(raw["paper"]), comparisons, raw.get("note")))
    return ClaimsFile(data["paper"].strip(), tuple(claims), source)


def load_claims(path: str | Path) -> ClaimsFile:
    path = Path(path)
    try:
        if path.stat().st_size > _MAX_FILE_BYTES:
            raise ClaimsError(f"{path.name}: larger than {_MAX_FILE_BYTES // 1024} KiB; a claims file is a few claims")
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise ClaimsError(f"{path.name}: cannot be read ({error})") from None
    return parse_claims(text, path.name)


def shipped_claims() -> list[Path]:
    """The claims files that ship with bench (one per paper), in name order."""
    folder = resources.files(__name__)
    return sorted(
        (Path(str(entry)) for entry in folder.iterdir() if entry.name.endswith(".yaml")), key=lambda p: p.name
    )


# ---------------------------------------------------------------------------------------------- evaluation
@dataclass(frozen=True)
class Setting:
    """One leaderboard setting (seeds of one row), as the claims see it."""

    method: str
    label: str
    dataset: str
    experiment: str
    hparams: dict[str, Any]
    records: tuple[Any, ...]  # as the ValueReader reads them (the leaderboard's: typed bench.records.Record)
    scale: str = ""  # what the records ran at (data, budget), said beside the verdicts
    tables: frozenset = frozenset()  # the leaderboard experiments (tables) the setting's records sit in


#: reads a PATH from one record; None where the record does not report it
ValueReader = Callable[[Any, str], Optional[float]]
#: reads the 95% interval of a PATH's value from one record (the record's own); None where it has none
IntervalReader = Callable[[Any, str], Optional[tuple[float, float]]]
Interval = tuple[float, float]


@dataclass(frozen=True)
class _Value:
    number: float
    shown: str
    interval: Optional[Interval]  # the 95% interval of ``number``; None where unknown


def _matches(operand: Operand, setting: Setting) -> bool:
    if operand.method is not None and operand.method != setting.method:
        return False
    if operand.label is not None and operand.label != setting.label:
        return False
    if operand.dataset is not None and operand.dataset != setting.dataset:
        return False
    if operand.experiment is not None and operand.experiment != setting.experiment:
        return False
    return all(key in setting.hparams and _same(setting.hparams[key], value) for key, value in operand.where)


def _same(ours: Any, wanted: Any) -> bool:
    if _number(ours) and _number(wanted):
        return math.isclose(float(ours), float(wanted), rel_tol=1e-9, abs_tol=1e-12)
    return ours == wanted


class _NotRun(Exception):
    def __init__(self, message: str, ambiguous: bool = False) -> None:
        super().__init__(message)
        self.ambiguous = ambiguous  # records exist, but the claims file does not say which setting it means


def _value(
    operand: Operand,
    settings: Sequence[Setting],
    read: ValueReader,
    scales: Optional[list[str]] = None,
    read_interval: Optional[IntervalReader] = None,
) -> _Value:
    """The operand's number, how we show it and its interval; raise _NotRun saying why there is none."""
    if operand.constant is not None:
        return _Value(operand.constant, _fmt(operand.constant), (operand.constant, operand.constant))
    means, intervals, used = [], [], []
    for setting in settings:
        if not _matches(operand, setting):
            continue
        read_from = [(record, v) for record in setting.records if (v := read(record, operand.value)) is not None]
        if read_from:
            values = [v for _, v in read_from]
            means.append(sum(values) / len(values))
            intervals.append(_seeds_interval(read_from, operand.value, read_interval))
            used.append(setting.scale)
    selector = " ".join(
        f"{k}={v}"
        for k, v in (("method", operand.method), ("label", operand.label), ("experiment", operand.experiment))
        if v
    )
    if not means:
        raise _NotRun(f"no record of {selector} reports {operand.value}")
    if operand.reduce == "one" and len(means) > 1:
        raise _NotRun(
            f"{len(means)} settings of {selector} report {operand.value}: narrow `where` or set `reduce`",
            ambiguous=True,
        )
    if scales is not None:
        scales += [scale for scale in used if scale and scale not in scales]
    if operand.reduce == "mean":
        value = sum(means) / len(means)
        interval = intervals[0] if len(means) == 1 else None  # a mean over settings has no interval of its own
    else:
        chosen = {"one": 0, "max": means.index(max(means)), "min": means.index(min(means))}[operand.reduce]
        value, interval = means[chosen], intervals[chosen]
    shown = _fmt(value)
    if operand.factor != 1.0:
        shown = f"{_fmt(operand.factor)}×{shown}"
    if operand.offset:
        shown += f" {'+' if operand.offset > 0 else '−'} {_fmt(abs(operand.offset))}"
    if interval is not None:
        low, high = sorted(operand.factor * bound + operand.offset for bound in interval)
        interval = (low, high)
        shown += f" [{_fmt(low)}, {_fmt(high)}]"
    return _Value(operand.factor * value + operand.offset, shown, interval)


def _seeds_interval(
    read_from: Sequence[tuple[Any, float]], path: str, read_interval: Optional[IntervalReader]
) -> Optional[Interval]:
    """The 95% interval of a setting's value: its record's own for one seed, the t-interval of the mean over
    several seeds."""
    if read_interval is None:
        return None
    if len(read_from) == 1:
        return read_interval(read_from[0][0], path)
    return mean_interval([value for _, value in read_from])


def mean_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> Interval:
    """The two-sided Student-t interval of the mean of two values or more (seeds as independent draws); the
    leaderboard's rankings use the same."""
    from scipy import stats

    mean = sum(values) / len(values)
    spread = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
    half = float(stats.t.ppf(0.5 + confidence / 2, len(values) - 1)) * spread / math.sqrt(len(values))
    return mean - half, mean + half


def _fmt(value: float) -> str:
    if value != 0 and (abs(value) >= 1e4 or abs(value) < 1e-3):
        return f"{value:.2e}"
    return f"{value:#.3g}".rstrip(".")


def _tables(operand: Operand, settings: Sequence[Setting], read: ValueReader) -> set[str]:
    """The leaderboard tables holding a setting that matches ``operand`` and reports its value."""
    return set().union(
        *(
            setting.tables
            for setting in settings
            if _matches(operand, setting) and any(read(record, operand.value) is not None for record in setting.records)
        )
    )


def _comparable(comparison: Comparison, settings: Sequence[Setting], read: ValueReader) -> list[Sequence[Setting]]:
    """The groups of settings a comparison is read in: one per leaderboard table both operands were measured in
    (numbers from one experiment compare), or all settings when they share none."""
    operands = [operand for operand in (comparison.left, comparison.right) if operand.constant is None]
    if not operands:
        return [settings]
    shared = set.intersection(*(_tables(operand, settings, read) for operand in operands))
    return [[setting for setting in settings if table in setting.tables] for table in sorted(shared)] or [settings]


def evaluate_claim(
    claim: Claim, settings: Sequence[Setting], read: ValueReader, read_interval: Optional[IntervalReader] = None
) -> Verdict:
    outcomes, shown, reasons, scales, apart = [], [], [], [], []
    for comparison in claim.comparisons:
        read_in, why_not = [], None
        for group in _comparable(comparison, settings, read):
            try:
                group_scales: list[str] = []
                left = _value(comparison.left, group, read, group_scales, read_interval)
                right = _value(comparison.right, group, read, group_scales, read_interval)
            except _NotRun as why:
                why_not = why
                continue
            read_in.append((OPERATORS[comparison.op](left.number, right.number), left, right, group_scales))
        if not read_in:
            reasons.append(str(why_not))
            shown.append(f"– ({why_not})" if why_not.ambiguous else "–")
            continue
        for holds, left, right, group_scales in read_in:  # one outcome per experiment it was read in
            outcomes.append(holds)
            scales += [scale for scale in group_scales if scale not in scales]
            sign = OPERATOR_SIGNS[comparison.op] if holds else "vs"
            text = f"{left.shown} {sign} {right.shown}"
            if left.interval is not None and right.interval is not None:  # a constant's interval is itself
                separated = left.interval[1] < right.interval[0] or right.interval[1] < left.interval[0]
                apart.append(separated)
                text += "" if separated else " (intervals overlap)"
            shown.append(text)
    if not outcomes:
        status = NOT_RUN
    elif all(outcomes) and not reasons:
        status = YES
    elif not any(outcomes):
        status = NO
    else:
        status = PARTLY
    significant = None if not apart else all(apart)
    return Verdict(claim, status, "; ".join(shown), reasons, scales, significant if status in (YES, NO) else None)


def evaluate_claims(
    files: Iterable[ClaimsFile],
    settings: Sequence[Setting],
    read: ValueReader,
    read_interval: Optional[IntervalReader] = None,
) -> list[tuple[ClaimsFile, list[Verdict]]]:
    return [(file, [evaluate_claim(claim, settings, read, read_interval) for claim in file.claims]) for file in files]
