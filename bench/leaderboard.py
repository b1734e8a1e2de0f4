"""The leaderboard: result records in, a README.md of tables, a CSV and accuracy-vs-privacy plots out.

Records are grouped by (threat model, dataset) and aggregated into one row per
(method label, network, training budget), so that runs with different seeds become one row with
mean ± sample std. Nothing here knows any method: every column comes from the records themselves,
including which way each privacy metric means *more* privacy. The output carries no timestamps,
so the same records always give the same bytes and the folder can be kept under version control.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from bench.records import load_records

UTILITY_ONLY = "utility only"
MISSING = "–"
_BASE_CSV = ["threat_model", "dataset", "method", "network", "epochs", "max_steps", "seeds", "accuracy_mean", "accuracy_std"]
_COST_CSV = ["released_bytes_per_sample", "parameters", "attack_setting"]


@dataclass
class LeaderboardResult:
    markdown: Path
    csv: Path
    plots: list[Path]
    problems: list[tuple[Path, str]]  # malformed records that were skipped, and why
    rows: int


def pareto_front(points: Sequence[tuple[float, float]], x_higher_better: bool = True,
                 y_higher_better: bool = True) -> list[int]:
    """Indices (ascending) of the points no other point dominates; equal points all stay."""
    sx, sy = (1.0 if x_higher_better else -1.0), (1.0 if y_higher_better else -1.0)
    order = sorted(range(len(points)), key=lambda i: (-sx * points[i][0], -sy * points[i][1]))
    front, best_y = [], -math.inf  # best_y: the best y among points strictly better in x
    for _, same_x in itertools.groupby(order, key=lambda i: sx * points[i][0]):
        same_x = list(same_x)
        top = sy * points[same_x[0]][1]  # sorted best-first within equal x
        front += [i for i in same_x if sy * points[i][1] == top and top > best_y]
        best_y = max(best_y, top)
    return sorted(front)


@dataclass(frozen=True)
class _Column:
    header: str
    csv_name: str  # the CSV gets <csv_name>_mean/_std, or <csv_name> alone for counts
    value: Callable[[dict], Any]
    better: Optional[str]  # "higher", "lower", or None (never bold)
    paper_key: Optional[str] = None
    count: bool = False  # sizes: thousands separators, and a spread only when seeds disagree


@dataclass
class _Row:
    label: str
    network: str
    budget: Optional[tuple[str, int]]  # ("epochs", n) or ("steps", n)
    attack_setting: str  # canonical JSON of method, data and attack settings: only equal settings are averaged
    records: list[dict]

    def values(self, column: _Column) -> list[float]:
        values = (column.value(record) for record in self.records)
        return [float(v) for v in values if isinstance(v, (int, float)) and math.isfinite(v)]

    def mean(self, column: _Column) -> Optional[float]:
        return float(np.mean(values)) if (values := self.values(column)) else None

    def paper(self, key: str) -> Optional[float]:
        for record in self.records:
            value = (record.get("paper") or {}).get(key)
            if isinstance(value, (int, float)):
                return float(value)
        return None


@dataclass
class _Group:
    threat_model: Optional[str]  # None: records without privacy entries
    dataset: str
    rows: list[_Row]
    columns: list[_Column]
    attacks: dict[str, dict[str, Any]]  # attack -> {"metrics": [...], "directions": {...}, "primary": str}

    @property
    def heading(self) -> str:
        return f"{self.threat_model or UTILITY_ONLY} / {self.dataset}"


def _entries(record: dict, threat_model: str) -> dict[str, dict]:
    """The record's privacy entries of one threat model by attack; the first of an attack wins."""
    entries: dict[str, dict] = {}
    for entry in record["privacy"]:
        if str(entry["threat_model"]) == threat_model:
            entries.setdefault(str(entry["attack"]), entry)
    return entries


def _budget(record: dict) -> Optional[tuple[str, int]]:
    """The epochs actually trained (records say so since they carry `training`), else the configured budget."""
    training = record.get("training")
    if isinstance(training, dict) and isinstance(training.get("epochs"), int):
        return "epochs", training["epochs"]
    trainer = record["config"].get("trainer")
    trainer = trainer if isinstance(trainer, dict) else {}
    # Lightning spells "no limit" as None or -1
    for key, kind in (("max_epochs", "epochs"), ("max_steps", "steps")):
        value = trainer.get(key)
        if isinstance(value, int) and value >= 0:
            return kind, value
    return None


#: hyper-parameters that say where data lives or how fast it loads, not what is measured
_NOT_A_SETTING = {"data_spec", "network", "data_dir", "download", "num_workers", "eval_batch_size"}


def _arguments(section: Any) -> dict[str, Any]:
    arguments = section.get("hparams", section.get("init_args", {})) if isinstance(section, dict) else {}
    return {key: value for key, value in arguments.items() if not key.startswith("_") and key not in _NOT_A_SETTING}


def _setting(record: dict, threat_model: Optional[str]) -> str:
    """Everything that must agree for records to be seeds of one row: method and data arguments, attack configs."""
    entries = _entries(record, threat_model) if threat_model else {}
    setting = {f"model.{key}": value for key, value in _arguments(record["method"]).items()}
    setting.update({f"data.{key}": value for key, value in _arguments(record["config"].get("data", {})).items()
                    if key != "seed"})
    for attack, entry in entries.items():
        setting.update({f"{attack}.{key}": value for key, value in (entry.get("config") or {}).items()})
    return json.dumps(setting, sort_keys=True, default=str)


def _setting_differences(rows: list["_Row"]) -> list[str]:
    """Per row, the settings that tell it apart from rows of the same method, network and budget.

    Empty when no two rows share those: then the label says everything.
    """
    siblings: dict[tuple, list[int]] = {}
    for index, row in enumerate(rows):
        siblings.setdefault((row.label, row.network, row.budget), []).append(index)
    differences = [""] * len(rows)
    for members in siblings.values():
        if len(members) < 2:
            continue
        flat = {i: json.loads(rows[i].attack_setting) for i in members}
        varying = sorted({key for one in flat.values() for key in one
                          if len({json.dumps(other.get(key)) for other in flat.values()}) > 1})
        for i in members:
            differences[i] = ", ".join(f"{key}={json.dumps(flat[i].get(key))}" for key in varying)
    return differences if any(differences) else []


def _text(value: Any) -> str:
    return MISSING if value is None else value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def _build_group(threat_model: Optional[str], dataset: str, records: list[dict]) -> _Group:
    attacks: dict[str, dict[str, Any]] = {}
    for record in records:
        for attack, entry in (_entries(record, threat_model) if threat_model else {}).items():
            info = attacks.setdefault(attack, {"metrics": [], "directions": {}, "primary": entry.get("primary_metric")})
            info["metrics"] += [m for m in entry["metrics"] if m not in info["metrics"]]
            for metric, direction in entry["directions"].items():
                info["directions"].setdefault(metric, direction)
    attacks = dict(sorted(attacks.items()))
    columns = [_Column("Accuracy", "accuracy", lambda r: r["utility"].get("accuracy"), "higher", "accuracy")]
    for attack, info in attacks.items():
        for metric in info["metrics"]:
            value = lambda r, a=attack, m=metric: _entries(r, threat_model).get(a, {}).get("metrics", {}).get(m)  # noqa: E731
            columns.append(_Column(f"{attack}: {metric}", f"{attack}.{metric}", value,
                                   info["directions"].get(metric), f"{attack}.{metric}"))
    columns += [
        _Column("Released B/sample", "released_bytes_per_sample", lambda r: r["cost"].get("released_bytes_per_sample"), "lower", count=True),
        _Column("Params", "parameters", lambda r: r["cost"].get("parameters"), "lower", count=True),
    ]
    # columns that only some methods fill: shown where a record of the group has them
    if any((r["cost"].get("compression_ratio") or 1) > 1 for r in records):  # pruned models
        columns.append(_Column("Compression (x)", "compression_ratio", lambda r: r["cost"].get("compression_ratio"), "higher",
                               "compression_ratio"))
    if any(r["cost"].get("dp_epsilon") is not None for r in records):  # DP training: its guarantee at dp_delta
        columns.append(_Column("DP epsilon", "dp_epsilon", lambda r: r["cost"].get("dp_epsilon"), "lower", "dp_epsilon"))
    keyed: dict[tuple, dict[Any, dict]] = {}
    for record in sorted(records, key=lambda r: (r["created"], r["record_id"])):
        key = (record["method"]["label"], _text(record["method"].get("network")), _budget(record),
               _setting(record, threat_model))
        # one record per seed: a re-evaluation of the same run replaces the older record instead of posing as a seed
        seed = (record.get("seed"), record["dataset"].get("seed"))
        keyed.setdefault(key, {})[seed if record.get("seed") is not None else record["record_id"]] = record
    # seed and id order, so that "the first record" (paper values, plot colour) never depends on file names
    by_seed = lambda r: (r.get("seed") is None, r.get("seed") if isinstance(r.get("seed"), int) else 0, r["record_id"])  # noqa: E731
    rows = [_Row(*key, sorted(found.values(), key=by_seed)) for key, found in keyed.items()]
    rows.sort(key=lambda row: (row.label, row.network, row.budget is None, row.budget or ("", 0), row.attack_setting))
    return _Group(threat_model, dataset, rows, columns, attacks)


def _groups(records: list[dict]) -> list[_Group]:
    grouped: dict[tuple[Optional[str], str], list[dict]] = {}
    for record in records:
        threat_models = sorted({str(entry["threat_model"]) for entry in record["privacy"]}) or [None]
        for threat_model in threat_models:
            grouped.setdefault((threat_model, record["dataset"]["name"]), []).append(record)
    order = sorted(grouped, key=lambda key: (key[0] is None, key[0] or "", key[1]))  # utility-only tables last
    return [_build_group(tm, dataset, grouped[(tm, dataset)]) for tm, dataset in order]


def _number(value: float, count: bool = False) -> str:
    if count or abs(value) >= 999.5:  # .3g would switch to 1e+03 notation from here on
        return f"{value:,.0f}"
    return f"{value:#.3g}".rstrip(".")  # '#' keeps trailing zeros, so a column lines up (0.980, not 0.98)


def _spread(std: float, mean_text: str) -> str:
    """The std to the precision the mean is shown with, which is all that precision supports."""
    if "e" in mean_text:
        return f"{std:.1e}"
    decimals = len(mean_text.split(".")[1]) if "." in mean_text else 0
    return f"{std:,.{decimals}f}"


def _cell(row: _Row, column: _Column, best: bool) -> str:
    values = row.values(column)
    text = MISSING
    if values:
        text = _number(float(np.mean(values)), column.count)
        std = float(np.std(values, ddof=1)) if len(values) > 1 else None
        if std is not None and not (column.count and std == 0):
            text += f" ± {_spread(std, text)}"
        if best:
            text = f"**{text}**"
    paper = row.paper(column.paper_key) if column.paper_key else None
    return text if paper is None else f"{text} (paper {_number(paper)})"


def _best_rows(group: _Group, column: _Column) -> set[int]:
    means = {i: m for i, row in enumerate(group.rows) if (m := row.mean(column)) is not None}
    if column.better not in ("higher", "lower") or len(means) < 2:
        return set()
    target = (max if column.better == "higher" else min)(means.values())
    # seeds averaged in a different order may differ in the last bit: that is still a tie
    return {i for i, m in means.items() if math.isclose(m, target, rel_tol=1e-9, abs_tol=1e-12)}


def _escape_pipes(text: str) -> str:
    return text.replace("|", "\\|")


def _table(group: _Group) -> list[str]:
    # rows attacked differently are never averaged together; a column then says how they differ
    differences = _setting_differences(group.rows)
    headers = ["Method", "Network"] + (["Setting"] if differences else []) + ["Epochs", "Seeds"]
    headers += [c.header for c in group.columns]
    left = 3 if differences else 2
    lines = ["| " + " | ".join(map(_escape_pipes, headers)) + " |",
             "|" + "|".join([":---"] * left + ["---:"] * (len(headers) - left)) + "|"]
    best = {column.header: _best_rows(group, column) for column in group.columns}
    for i, row in enumerate(group.rows):
        budget = MISSING if row.budget is None else str(row.budget[1]) + (" steps" if row.budget[0] == "steps" else "")
        cells = [row.label, row.network] + ([differences[i]] if differences else []) + [budget, str(len(row.records))]
        cells += [_cell(row, column, i in best[column.header]) for column in group.columns]
        lines.append("| " + " | ".join(map(_escape_pipes, cells)) + " |")
    return lines


def _notes(group: _Group) -> list[str]:
    notes = []
    arrows = [f"{attack}: " + ", ".join(f"{m} {'↑' if info['directions'].get(m) == 'higher' else '↓'}"
                                         for m in info["metrics"] if m in info["directions"])
              for attack, info in group.attacks.items() if set(info["metrics"]) & set(info["directions"])]
    if arrows:
        notes.append("More private: " + "; ".join(arrows) + ". Bold: the best mean of a column "
                     "(accuracy higher, privacy metrics as above, cost lower).")
    sources = []
    for row in group.rows:
        papers = [r["paper"] for r in row.records if r.get("paper")]
        if any(row.paper(c.paper_key) is not None for c in group.columns if c.paper_key):
            sources.append(f"{row.label}: {next((p['source'] for p in papers if p.get('source')), 'source not given')}")
    if sources:
        notes.append("Paper values in parentheses, from " + "; ".join(sources) + ".")
    return notes


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)


def _plot(group: _Group, attack: str) -> Optional[bytes]:
    """Accuracy against the attack's primary metric, one point per row, the Pareto front drawn; PNG bytes."""
    # Figure + the Agg canvas directly, not pyplot: no global backend switch for whoever imported us,
    # and no pyplot figure registry to leak figures into when called again and again
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    info = group.attacks[attack]
    if not info["metrics"]:
        return None
    metric = info["primary"] if info["primary"] in info["metrics"] else info["metrics"][0]
    x_col = group.columns[0]
    y_col = next(c for c in group.columns if c.csv_name == f"{attack}.{metric}")
    points = [(row, row.mean(x_col), row.mean(y_col)) for row in group.rows]
    points = [(row, x, y) for row, x, y in points if x is not None and y is not None]
    if not points:
        return None
    figure = Figure(figsize=(6.4, 4.8))
    axes = FigureCanvasAgg(figure).figure.add_subplot()
    names = sorted({row.records[0]["method"]["name"] for row, _, _ in points})
    palette = colormaps["tab10"]
    for name in names:
        mine = [(x, y) for row, x, y in points if row.records[0]["method"]["name"] == name]
        axes.scatter(*zip(*mine), color=palette(names.index(name) % 10), label=name, zorder=3)
    for row, x, y in points:
        axes.annotate(row.label, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
    direction = info["directions"].get(metric)
    if direction in ("higher", "lower"):
        front = pareto_front([(x, y) for _, x, y in points], True, direction == "higher")
        front_xy = sorted((points[i][1], points[i][2]) for i in front)
        axes.plot(*zip(*front_xy), color="0.4", linestyle="--", marker="o", markersize=11,
                  markerfacecolor="none", label="Pareto front", zorder=2)
    if all(y > 0 for _, _, y in points):
        axes.set_yscale("log")
    arrow = {"higher": " (higher: more private)", "lower": " (lower: more private)"}.get(direction, "")
    axes.set_xlabel("accuracy (higher is better)")
    axes.set_ylabel(f"{attack}: {metric}{arrow}")
    axes.set_title(f"{group.dataset}, {group.threat_model}: {attack}")
    axes.grid(True, alpha=0.3)
    axes.margins(x=0.12, y=0.12)  # room for the labels of the extreme points
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(buffer := io.BytesIO(), format="png", dpi=100, metadata={"Software": None})
    return buffer.getvalue()


def _write_atomic(path: Path, data: bytes) -> None:
    # Records may finish at the same time and each regenerates the leaderboard: a reader (or a
    # concurrent writer) must only ever see a whole file
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}-", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _csv(groups: list[_Group]) -> bytes:
    metric_names = list(dict.fromkeys(c.csv_name for g in groups for c in g.columns[1:] if not c.count))
    header = _BASE_CSV + [f"{n}_{s}" for n in metric_names for s in ("mean", "std")] + _COST_CSV
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, header, restval="", lineterminator="\n")
    writer.writeheader()
    for group in groups:
        for row in group.rows:
            line: dict[str, Any] = {
                "threat_model": group.threat_model or "", "dataset": group.dataset, "method": row.label,
                "network": row.network if row.network != MISSING else "", "seeds": len(row.records),
                "epochs": row.budget[1] if row.budget and row.budget[0] == "epochs" else "",
                "max_steps": row.budget[1] if row.budget and row.budget[0] == "steps" else "",
                "attack_setting": row.attack_setting,
            }
            for column in group.columns:
                values = row.values(column)
                if values and column.count:
                    mean = float(np.mean(values))
                    line[column.csv_name] = int(mean) if mean.is_integer() else mean
                elif values:
                    line[f"{column.csv_name}_mean"] = float(np.mean(values))
                    line[f"{column.csv_name}_std"] = float(np.std(values, ddof=1)) if len(values) > 1 else ""
            writer.writerow(line)
    return buffer.getvalue().encode()


def _shown_path(path: Path, locations: list[Path], out_dir: Path) -> str:
    """A problem file's path without machine-specific prefixes, so the README stays reproducible."""
    for base, prefix in [(out_dir, None)] + [(loc, loc.name) for loc in locations if loc.is_dir()]:
        try:
            relative = path.resolve().relative_to(base.resolve())
        except ValueError:
            continue
        return str(Path(prefix, relative) if prefix else relative)
    return path.name


def generate_leaderboard(record_locations: Sequence[str | Path], out_dir: str | Path,
                         title: str = "bench leaderboard") -> LeaderboardResult:
    """Read the records under ``record_locations``; write README.md, leaderboard.csv and plots/ into ``out_dir``."""
    out_dir = Path(out_dir)
    (out_dir / "plots").mkdir(parents=True, exist_ok=True)
    locations = [Path(location) for location in record_locations]
    loaded = load_records(locations)
    groups = _groups(loaded.records)
    count = len(loaded.records)
    lines = [f"# {title}", "", f"Generated by `bench leaderboard` from {count} record{'s' if count != 1 else ''}"
             + (f" ({len(loaded.problems)} malformed, skipped: see the end)." if loaded.problems else "."), ""]
    if not groups:
        lines += ["No records yet. Train and evaluate a method with `bench fit` (see `bench fit --help`): each "
                  "evaluation writes one JSON record; then run `bench leaderboard` again.", ""]
    plots = []
    for group in groups:
        lines += [f"## {group.heading}", ""] + _table(group) + [""]
        lines += [line for note in _notes(group) for line in (note, "")]
        for attack in group.attacks:
            png = _plot(group, attack)
            if png is None:
                continue
            name = f"{_safe(group.threat_model)}__{_safe(group.dataset)}__{_safe(attack)}.png"
            _write_atomic(out_dir / "plots" / name, png)
            plots.append(out_dir / "plots" / name)
            lines += [f"![{attack} against accuracy on {group.dataset}](plots/{name})", ""]
    if loaded.problems:
        lines += ["## Skipped records", ""]
        lines += [f"- `{_shown_path(path, locations, out_dir)}`: {reason}" for path, reason in loaded.problems] + [""]
    markdown, table = out_dir / "README.md", out_dir / "leaderboard.csv"
    _write_atomic(markdown, "\n".join(lines).rstrip("\n").encode() + b"\n")
    _write_atomic(table, _csv(groups))
    return LeaderboardResult(markdown, table, plots, list(loaded.problems), sum(len(g.rows) for g in groups))
