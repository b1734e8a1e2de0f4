"""The leaderboard: result records in; a README.md, a CSV and privacy-utility plots out.

What a reader gets, in page order:

1. **Scorecard.** Per paper, each claim the suite measures (from ``bench/claims/*.yaml``, see
   :mod:`bench.claims`): the paper's number, ours, and whether it was reproduced.
2. **One section per threat model, one table and one plot per experiment.** An experiment is a set
   of rows that may be ranked against each other: records that name the same ``experiment``, or
   else records with the same dataset and pools, training budget (epochs), world size, effective
   batch size and precision whose common attacks ran with the same configuration. Inside an
   experiment a row is one setting (method, network, every hyper-parameter, attack configurations,
   world size, effective batch, precision); its seeds are averaged (mean ± sample std).
3. **The verdict is the worst case.** The headline table gives per row: utility, the
   *worst-case privacy* (the best result any adversary of the threat model achieved, i.e. the
   least private value of the attack's primary metric, following the direction the attack
   declares) and the attack that achieved it, cost, and seeds. The worst case is taken per seed
   and then averaged over seeds. Attacks are only compared on the same metric: adversaries whose
   primary metrics differ (e.g. a mean reconstruction error and the largest similarity over a
   released training set) each give their own worst-case column. Diagnostics (``role:
   diagnostic``: attacks that use the method's own training-time parts) never enter the verdict;
   they are shown apart, under each experiment's per-attack detail.
4. **Is the ranking significant?** (:mod:`bench.leaderboard.significance`) Under each table, the rows most private
   first, each step called significant only when a paired test over matched seeds or the intervals say so.
5. **DP-SGD as the reference** (:mod:`bench.leaderboard.dpsgd`): each row dominated by some DP-SGD row on the same
   data or not; the DP-SGD frontier drawn on the plots (:mod:`bench.leaderboard.plots`: no one-point plots,
   experiments that differ only in attack settings on one plot, chance and cap lines).

Nothing here names a method or one method's metric: utility comes from ``utility``, privacy columns
and directions from what each attack declares (``primary_metric``, ``directions``), cost from the
harness's cost fields plus the entries a method declares in ``method.headline_cost`` (its
``training_report`` keys) or that the paper reports for the run. Records flagged degenerate (a run
at chance accuracy) are left out of the tables by default; an attack that stopped at its maximum
budget without converging (``details.converged: false``) is flagged where it is shown. The output
carries no timestamps: the same records always give the same bytes.
"""

from __future__ import annotations

import contextlib
import csv
import io
import itertools
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from bench.claims import ClaimsError, load_claims, shipped_claims
from bench.errors import BenchError
from bench.leaderboard.dpsgd import dominated_by_dpsgd, reference_rows
from bench.leaderboard.experiments import _canonical, _Experiment, _experiments, worst_case  # noqa: F401 (public)
from bench.leaderboard.plots import _front, _plot
from bench.leaderboard.records import (  # noqa: F401 (public)
    _THREAT_MODEL_TITLES,
    MAX_LINE_CHARS,
    MAX_TABLE_COLUMNS,
    NOT_CONVERGED,
    PARETO,
    LeaderboardResult,
    _read,
    _safe,
    pareto_front,
)
from bench.leaderboard.scorecard import _scorecard
from bench.leaderboard.significance import ranking_lines
from bench.leaderboard.tables import (
    _attack_names,
    _code,
    _details,
    _escape,
    _experiment_intro,
    _headline,
    _no_markup,
    _notes,
    _row_worst_case,
    _std,
)
from bench.records import load_records
from bench.threat_models import ThreatModel


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


def _output_folder(out_dir: Path) -> None:
    """``out_dir`` is (or can become) a folder: checked before any record is read, so a bad --out costs nothing."""
    if out_dir.exists() and not out_dir.is_dir():
        raise BenchError(
            f"leaderboard folder {out_dir} is a file; give a folder (--out) for README.md, leaderboard.csv and plots/"
        )
    try:
        (out_dir / "plots").mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise BenchError(
            f"cannot create the leaderboard folder {out_dir} ({error.strerror or error}); give a folder "
            "you can write to (--out)"
        ) from None


@contextlib.contextmanager
def _exclusive(folder: Path):
    """One generation at a time writes into ``folder``: two at once would delete each other's plots."""
    try:
        import fcntl
    except ImportError:  # no advisory locks here (Windows): each file is still replaced whole
        yield
        return
    handle = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released on close, also if this process dies
        yield
    finally:
        os.close(handle)


def _publish(out_dir: Path, pngs: dict[str, bytes], markdown: bytes, table: bytes) -> None:
    """Plots first, then the page and CSV, then the plots no page links any more: the page's plots always exist."""
    plots_dir = out_dir / "plots"
    try:
        with _exclusive(out_dir):
            plots_dir.mkdir(exist_ok=True)
            for name, png in pngs.items():
                _write_atomic(plots_dir / name, png)
            _write_atomic(out_dir / "README.md", markdown)
            _write_atomic(out_dir / "leaderboard.csv", table)
            for stale in plots_dir.glob("*.png"):  # plots of experiments that no longer exist
                if stale.name not in pngs:
                    stale.unlink(missing_ok=True)
    except OSError as error:
        raise BenchError(
            f"cannot write the leaderboard into {out_dir} ({error.strerror or error}); give a folder you "
            "can write to (--out)"
        ) from None


def _csv(experiments: list[_Experiment]) -> bytes:
    """Long enough to hold everything: one line per row, every utility, worst-case, attack metric and cost."""
    columns: dict[str, None] = {}
    lines = []
    for experiment in experiments:
        dominated = dominated_by_dpsgd(experiment, reference_rows(experiment, experiments))
        for i, row in enumerate(experiment.rows):
            line: dict[str, Any] = {
                "threat_model": experiment.threat_model,
                "experiment": experiment.name,
                "dataset": _text(row.setting.get("dataset")),
                "method": row.label,
                "network": _text(row.setting.get("network")),
                "seeds": len(row.runs),
                "setting": row.key,
            }
            budget = row.setting.get("epochs")
            line["epochs"] = budget[1] if budget and budget[0] == "epochs" else ""
            line["max_steps"] = budget[1] if budget and budget[0] == "steps" else ""
            line["dominated_by_dpsgd"] = {True: "yes", False: "no"}.get(dominated.get(i), "")
            # `bench audit`: a model (or scores) from elsewhere, comparable only within its own experiment
            line["external"] = "yes" if any(run.model.external is not None for run in row.runs) else "no"
            values: dict[str, list[float]] = {}
            for run in row.runs:
                for key, value in run.utility.items():
                    values.setdefault(f"utility.{key}", []).append(value)
                for entry in run.entries_of(experiment.threat_model).values():
                    for metric, value in entry.metrics.items():
                        values.setdefault(f"{entry.attack}.{metric}", []).append(value)
                for key, value in run.cost.items():
                    values.setdefault(f"cost.{key}", []).append(value)
            for family in experiment.families:
                worst = _row_worst_case(row, experiment.threat_model, family)
                if worst is not None:
                    values[f"worst_case.{family.metric}"] = worst.values
                    line[f"worst_case.{family.metric}_attack"] = _attack_names(worst)
                    columns[f"worst_case.{family.metric}_attack"] = None
            for key, found in sorted(values.items()):
                line[f"{key}_mean"] = float(np.mean(found))
                line[f"{key}_std"] = _std(found) if len(found) > 1 else ""
                columns[f"{key}_mean"] = columns[f"{key}_std"] = None
            lines.append(line)
    base = [
        "threat_model",
        "experiment",
        "dataset",
        "method",
        "network",
        "epochs",
        "max_steps",
        "seeds",
        "dominated_by_dpsgd",
        "external",
    ]
    ordered = sorted(
        columns, key=lambda c: (not c.startswith("utility."), not c.startswith("worst_case."), c.startswith("cost."), c)
    )
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, base + ordered + ["setting"], restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows(lines)
    return buffer.getvalue().encode()


def _text(value: Any) -> str:
    return "" if value is None else value if isinstance(value, str) else _canonical(value)


def _listed(path: Path, reason: str, locations: list[Path], out_dir: Path) -> str:
    """A left-out or skipped record as a list item.

    Its reason (a label, a problem naming a value) is text, not markup.
    """
    return f"- `{_code(_shown_path(path, locations, out_dir))}`: {_no_markup(reason).replace(chr(10), ' ')}"


def _shown_path(path: Path, locations: list[Path], out_dir: Path) -> str:
    """A problem file's path without machine-specific prefixes, so the README stays reproducible."""
    for base, prefix in [(out_dir, None)] + [(loc, loc.name) for loc in locations if loc.is_dir()]:
        try:
            relative = path.resolve().relative_to(base.resolve())
        except ValueError:
            continue
        return str(Path(prefix, relative) if prefix else relative)
    return path.name


def generate_leaderboard(
    record_locations: Sequence[str | Path],
    out_dir: str | Path,
    title: str = "bench leaderboard",
    claims: Optional[Sequence[str | Path]] = None,
    include_degenerate: bool = False,
) -> LeaderboardResult:
    """Read the records under ``record_locations``; write README.md, leaderboard.csv and plots/ into ``out_dir``.

    ``claims``: claims files for the scorecard (None: the ones bench ships; [] for none).
    ``include_degenerate``: also rank runs flagged degenerate (at chance accuracy).
    """
    out_dir = Path(out_dir)
    _output_folder(out_dir)
    locations = [Path(location) for location in record_locations]
    loaded = load_records(locations)
    problems = list(loaded.problems)
    runs, left_out = _ranked_runs(loaded, include_degenerate, problems)
    claims_files = _claims_files(claims, problems)
    experiments = _experiments(runs)
    lines = _title_lines(title, len(loaded.models), problems, left_out)
    lines += _scorecard(claims_files, runs, _placements(experiments))
    lines += _reading_guide(experiments)
    sections, plots, pngs = _experiment_sections(experiments, out_dir / "plots")
    lines += sections
    lines += _left_out_and_skipped(left_out, problems, locations, out_dir)
    markdown, table = out_dir / "README.md", out_dir / "leaderboard.csv"
    _publish(out_dir, pngs, "\n".join(lines).rstrip("\n").encode() + b"\n", _csv(experiments))
    return LeaderboardResult(markdown, table, plots, problems, sum(len(e.rows) for e in experiments), left_out)


def _ranked_runs(loaded, include_degenerate: bool, problems: list) -> tuple[list, list]:
    """The loaded records as runs to rank, and the degenerate ones left out (path, reason); a record that cannot
    be read as a run is added to ``problems``."""
    runs, left_out = [], []
    for record, path in zip(loaded.models, loaded.paths):
        try:
            run = _read(record, path)
        except (KeyError, TypeError, ValueError, AttributeError) as error:  # one bad record never breaks the board
            problems.append((path, f"unusable record: {error}"))
            continue
        if record.degenerate and not include_degenerate:
            left_out.append((path, f"{record.method.label}: flagged degenerate (accuracy at chance)"))
            continue
        runs.append(run)
    return runs, left_out


def _claims_files(claims: Optional[Sequence[str | Path]], problems: list) -> list:
    """The claims files for the scorecard (None: the shipped ones); one that fails to load is added to ``problems``."""
    claims_files = []
    for claims_path in shipped_claims() if claims is None else [Path(c) for c in claims]:
        try:
            claims_files.append(load_claims(claims_path))
        except ClaimsError as error:
            problems.append((Path(claims_path), str(error)))
    return claims_files


def _title_lines(title: str, count: int, problems: list, left_out: list) -> list[str]:
    remarks = ([f"{len(problems)} skipped (see the end)"] if problems else []) + (
        [f"{len(left_out)} degenerate run{'s' if len(left_out) != 1 else ''} left out"] if left_out else []
    )
    return [
        f"# {title}",
        "",
        f"Generated by `bench leaderboard` from {count} record{'s' if count != 1 else ''}"
        + (": " + ", ".join(remarks) if remarks else "")
        + ".",
        "",
    ]


def _placements(experiments: list) -> dict[int, set[str]]:
    """Which experiments (tables) each run sits in: a claim compares numbers from one experiment where it can."""
    placed: dict[int, set[str]] = {}
    for experiment in experiments:
        for row in experiment.rows:
            for run in row.runs:
                placed.setdefault(id(run), set()).add(f"{experiment.threat_model}: {experiment.name}")
    return placed


def _reading_guide(experiments: list) -> list[str]:
    """How to read the tables (where any has a ranked family), or what to do when there are no records."""
    lines = []
    if any(e.families for e in experiments):
        lines += [
            "How to read the tables: one table per experiment (rows that may be ranked against each other). "
            "*Worst-case*: the best any adversary of the threat model achieved on the attacks' primary metric "
            "(diagnostics never count), taken per seed and then averaged (mean ± std over seeds; [low, high]: "
            f"the record's interval for a single seed), with the attack that achieved it. ↑/↓: higher/lower is "
            f"more private. {PARETO}: on the privacy-utility Pareto front. Bold: the best in its column. "
            f"{NOT_CONVERGED}: the attack stopped at its maximum budget without converging. Per-attack "
            "results, diagnostics and the configs that produced each experiment are under its detail.",
            "",
        ]
    if not experiments:
        lines += [
            "No records yet. Train and evaluate a method with `bench fit` (see `bench fit --help`): each "
            "evaluation writes one JSON record; then run `bench leaderboard` again.",
            "",
        ]
    return lines


def _experiment_sections(experiments: list, plots_dir: Path) -> tuple[list[str], list[Path], dict[str, bytes]]:
    """One section per threat model, one subsection per experiment: (lines, plot paths, PNGs by file name)."""
    lines, plots, pngs = [], [], {}
    verdicts = {id(e): dominated_by_dpsgd(e, reference_rows(e, experiments)) for e in experiments}
    figures = _figures(experiments, verdicts)
    for name, png in dict.fromkeys((name, png) for name, png, _ in figures.values() if png is not None):
        pngs[name] = png
        plots.append(plots_dir / name)
    for threat_model, group in itertools.groupby(experiments, key=lambda e: e.threat_model):
        lines += [f"## {_THREAT_MODEL_TITLES.get(threat_model, threat_model)}", ""]
        if threat_model in {t.value for t in ThreatModel}:
            lines += [f"Threat model: {ThreatModel(threat_model).description}.", ""]
        for experiment in group:
            lines += _experiment_lines(experiment, verdicts[id(experiment)], figures[id(experiment)])
    return lines, plots, pngs


def _figures(experiments: list, verdicts: dict) -> dict[int, tuple[str, Optional[bytes], Optional[_Experiment]]]:
    """Per experiment (by id): its plot's file name, the PNG (None: no plot, e.g. one point) and the experiment
    whose section shows it when the plot is shared with siblings that differ only in attack settings."""
    figures = {}
    for experiment in experiments:
        if id(experiment) in figures:
            continue
        members = [experiment]
        if experiment.siblings_key is not None:
            members = [e for e in experiments if e.siblings_key == experiment.siblings_key]
        references = list({id(r): r for e in members for r in reference_rows(e, experiments)}.values())
        png = _plot(members, references, [verdicts[id(e)] for e in members])
        name = f"{experiment.slug}.png" if len(members) == 1 else f"{_group_slug(members)}.png"
        for member in members:
            figures[id(member)] = (name, png, experiment if member is not experiment else None)
    return figures


def _group_slug(members: list) -> str:
    first = members[0]
    base = first.name.removesuffix(" · " + first.attack_settings)
    return f"{_safe(first.threat_model)}__{re.sub('_+', '_', _safe(base)).strip('_')}__attack_settings"


def _experiment_lines(experiment, verdicts: dict, figure: tuple) -> list[str]:
    """One experiment's subsection, with its plot (or a pointer to the one it shares with its siblings)."""
    lines = [f"### {_escape(experiment.name)}", "", _experiment_intro(experiment), ""]
    front = _front(experiment)
    lines += _headline(experiment, front, verdicts) + [""]
    lines += ranking_lines(experiment)
    lines += [line for note in _notes(experiment, verdicts) for line in (note, "")]
    name, png, shown_under = figure
    if png is not None and shown_under is None:
        title = experiment.name
        if experiment.siblings_key is not None:
            title = title.removesuffix(" · " + experiment.attack_settings) + ", every attack setting"
        alt = _escape(title)
        alt = alt.replace("[", "(").replace("]", ")")
        lines += [f"![worst-case privacy against utility: {alt}](plots/{name})", ""]
        if experiment.siblings_key is not None:
            lines += [
                "Plotted together with the experiments below that differ only in attack settings (a marker per "
                "setting, a colour per method).",
                "",
            ]
    elif png is not None:
        lines += [
            f"Plotted with the other attack settings under *{_escape(shown_under.name)}* ([plot](plots/{name})).",
            "",
        ]
    if experiment.attacks or any(run.configs or run.revision for row in experiment.rows for run in row.runs):
        lines += _details(experiment)
    return lines


def _left_out_and_skipped(left_out: list, problems: list, locations: list[Path], out_dir: Path) -> list[str]:
    lines = []
    if left_out:
        lines += [
            "## Left out",
            "",
            "Runs flagged degenerate are not ranked (`bench leaderboard --include_degenerate` shows them):",
            "",
        ]
        lines += [_listed(path, reason, locations, out_dir) for path, reason in left_out] + [""]
    if problems:
        lines += ["## Skipped", ""]
        lines += [_listed(path, reason, locations, out_dir) for path, reason in problems] + [""]
    return lines
