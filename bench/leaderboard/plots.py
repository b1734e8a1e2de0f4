"""Privacy-utility plots: worst-case privacy against utility, one panel per worst-case column.

One plot per experiment, or one for a group of experiments that differ only in their attacks' settings (e.g. the
RAN paper's Figure 3: RAN, Noisy and DNN(resized) attacked with differently configured decoders), never a plot of
a single point. Each panel marks the Pareto front (one experiment), the metric's chance level or cap where it has
one, and the DP-SGD frontier: the most accurate DP-SGD row per epsilon on the same data, the reference every
defense must beat (:mod:`bench.leaderboard.dpsgd`), with each other defense marked dominated by it or not.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from bench.leaderboard.dpsgd import frontier_rows
from bench.leaderboard.experiments import _Experiment, _Family, _Row
from bench.leaderboard.records import _Entry, pareto_front
from bench.leaderboard.tables import _clip_to, _mean, _number, _row_worst_case, _std, _utility_key

#: a TPR at a fixed FPR is at chance when it equals that FPR
_TPR_AT_FPR = re.compile(r"tpr_at_([0-9.]+)pct_fpr$")
_REFERENCE_STYLE = {"color": "0.45", "linestyle": ":", "linewidth": 1.1, "zorder": 1}
_DOMINATED_COLOR = "tab:red"
_MARKERS = "osD^v<>ph*P"


def reference_lines(metric: str, entries: Sequence[_Entry] = ()) -> list[tuple[float, str]]:
    """(value, label) of the chance level or cap of ``metric``, where it has one; ``entries``: the attacks' records,
    for a chance level that depends on the run (an identification rate's 1 / gallery size)."""
    stated = sorted({e.chances[metric] for e in entries if metric in e.chances})
    if stated:
        chance = stated[-1]  # galleries of other sizes: the highest chance any row had
        return [(chance, f"chance ({'≤ ' if len(stated) > 1 else ''}{_number(chance)}: 1 / gallery)")]
    if metric == "attack_accuracy" or metric.endswith("auc"):
        return [(0.5, "chance (0.5)")]
    if found := _TPR_AT_FPR.search(metric):
        fpr = float(found.group(1)) / 100
        return [(fpr, f"chance: TPR = FPR ({_number(fpr)})")]
    if metric.endswith("ssim"):
        return [(1.0, "cap: identical images (1)")]
    if metric in ("mse", "mae"):
        return [(0.0, "exact reconstruction (0)")]
    if metric.endswith("epsilon"):
        return [(0.0, "no measured leakage (ε = 0)")]
    return []


def _front(experiment: _Experiment) -> set[int]:
    """Rows on the Pareto front of utility vs the first worst-case column."""
    utility = _utility_key(experiment)
    if utility is None or not experiment.families:
        return set()
    family = experiment.families[0]
    points, indices = [], []
    for i, row in enumerate(experiment.rows):
        x = _mean(row.values(lambda r: r.utility.get(utility)))
        w = _row_worst_case(row, experiment.threat_model, family)
        if x is not None and w is not None:
            points.append((x, float(np.mean(w.values))))
            indices.append(i)
    if len(points) < 2:
        return set()
    return {indices[i] for i in pareto_front(points, True, family.direction == "higher")}


def plot_styles(labels: list[str], method_of: dict[str, str]) -> dict[str, tuple]:
    """label -> (colour, marker, marker face), one distinct style per label: with few labels a colour each and the
    marker for the method; with many one colour per method and a marker per setting (open markers past 11)."""
    from matplotlib import colormaps

    names = sorted(set(method_of.values()))
    palette, markers = colormaps["tab10"], _MARKERS
    style = {}  # label -> (colour, marker, marker face: the colour, or "none" for an open marker)
    if len(labels) <= 10:  # few rows: a colour each, the marker says the method
        for k, label in enumerate(labels):
            color = palette(k)
            style[label] = (color, markers[names.index(method_of[label]) % len(markers)], color)
    else:  # one colour per method, one marker per setting within it (open markers past the 11 filled ones)
        for name in names:
            mine = [label for label in labels if method_of[label] == name]
            base = palette(names.index(name) % 10)
            for k, label in enumerate(mine):
                cycle = k // len(markers)  # filled, open, then both again in a darker shade of the method's colour
                shade = 0.55 ** (cycle // 2)
                color = (base[0] * shade, base[1] * shade, base[2] * shade, 1.0)
                style[label] = (color, markers[k % len(markers)], color if cycle % 2 == 0 else "none")
    return style


def _series(label: str) -> tuple[str, str]:
    """'RAN (lam=0.5)' -> ('RAN', 'lam=0.5'): the curve a row belongs to in a combined plot, and its point's note."""
    found = re.fullmatch(r"(.+?) \((.*)\)", label)
    return (found.group(1), found.group(2)) if found else (label, "")


def _swept(labels: Sequence[str]) -> dict[str, Optional[str]]:
    """curve -> the one setting its rows sweep ('RAN (lam=0.5)', 'RAN (lam=0.9)' -> 'lam'), else None."""
    keys: dict[str, set] = {}
    for label in labels:
        curve, note = _series(label)
        found = re.fullmatch(r"([\w.]+)=([^,]+)", note)
        keys.setdefault(curve, set()).add(found.group(1) if found else None)
    return {curve: next(iter(found)) if len(found) == 1 else None for curve, found in keys.items()}


def _note(label: str, swept: dict[str, Optional[str]]) -> str:
    """A point's note in a combined plot: the swept setting's value (its name is in the legend), or the settings."""
    curve, note = _series(label)
    return note.split("=", 1)[1] if swept.get(curve) else note


@dataclass
class _Point:
    row: _Row
    experiment: int  # index into the figure's experiments
    x: float
    sx: float
    y: float
    sy: object  # a std, or [[below], [above]] from the record's interval
    dominated: Optional[bool]  # by some DP-SGD row; None: not compared (a DP-SGD row itself, or no reference)


@dataclass
class _Panel:
    family: _Family
    points: list[_Point]
    frontier: list[tuple[float, float, float]]  # (accuracy, worst case, epsilon), ascending in epsilon
    lines: list[tuple[float, str]]


def _point(row: _Row, threat_model: str, family: _Family, utility: str) -> Optional[tuple[float, float, float, object]]:
    xs = row.values(lambda r: r.utility.get(utility))
    worst = _row_worst_case(row, threat_model, family)
    if not xs or worst is None:
        return None
    y = float(np.mean(worst.values))
    # error bars: the std over seeds, or a single seed's own interval
    std = _std(worst.values) or 0.0
    spread = (  # an interval that does not hold its own mean (a record written by hand) draws no bar on that side
        [[max(0.0, y - worst.interval[0])], [max(0.0, worst.interval[1] - y)]]
        if worst.interval is not None
        # seeds that never went below zero (a rate, an epsilon, an error) draw no bar below it
        else [[min(std, y) if min(worst.values) >= 0 else std], [std]]
    )
    return float(np.mean(xs)), _std(xs) or 0.0, y, spread


def _panels(
    experiments: Sequence[_Experiment], references: Sequence[_Row], dominated: Sequence[dict[int, Optional[bool]]]
) -> tuple[Optional[str], list[_Panel]]:
    utility = next((u for e in experiments if (u := _utility_key(e)) is not None), None)
    if utility is None:
        return None, []
    threat_model = experiments[0].threat_model
    frontier = frontier_rows(references, utility)
    panels = []
    for family in dict.fromkeys(f for e in experiments for f in e.families):
        points = [
            _Point(row, k, *found, dominated[k].get(i))
            for k, experiment in enumerate(experiments)
            if family in experiment.families
            for i, row in enumerate(experiment.rows)
            if (found := _point(row, threat_model, family, utility)) is not None
        ]
        on_curve = [
            (row, found[0], found[2], epsilon)
            for epsilon, row in frontier
            if (found := _point(row, threat_model, family, utility)) is not None
        ]
        curve = [(x, y, epsilon) for _, x, y, epsilon in on_curve]
        # a plot compares: at least two points, the DP-SGD frontier's own included
        if len({id(p.row) for p in points} | {id(row) for row, *_ in on_curve}) < 2 or not points:
            continue
        entries = [e for experiment in experiments for row in experiment.rows for run in row.runs for e in run.entries]
        panels.append(_Panel(family, points, curve, reference_lines(family.metric, entries)))
    return utility, panels


def _plot(
    experiments: _Experiment | Sequence[_Experiment],
    references: Sequence[_Row] = (),
    dominated: Optional[Sequence[dict[int, Optional[bool]]]] = None,
) -> Optional[bytes]:
    """Utility against each worst-case column of one experiment, or of experiments that differ only in their
    attacks' settings (one plot; the legend says which point was measured with which); None for a plot of one point.

    ``references``: the DP-SGD rows the experiments are measured against (their frontier is drawn);
    ``dominated``: per experiment, row index -> dominated by DP-SGD (True/False) or not compared (None)."""
    # Figure + the Agg canvas directly, not pyplot: no global backend switch for whoever imported us,
    # and no pyplot figure registry to leak figures into when called again and again
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    experiments = [experiments] if isinstance(experiments, _Experiment) else list(experiments)
    dominated = [{} for _ in experiments] if dominated is None else list(dominated)
    utility, panels = _panels(experiments, references, dominated)
    if not panels:
        return None
    combined = len(experiments) > 1
    style_of, handles = (_combined_styles if combined else _single_styles)(experiments, panels)
    drew = {"front": False, "frontier": False, "compared": set(), "dominated": set()}  # rows, over all panels
    legend_labels = [h.get_label() for h in handles] + ["DP-SGD frontier (best accuracy per ε)", "dominated by DP-SGD"]
    legend_inches = 0.8 + 0.065 * max(len(label) for label in legend_labels)  # 8 pt text beside the axes
    figure = Figure(figsize=((6.4 if combined else 5.2) * len(panels) + legend_inches, 4.6 + 0.6 * combined))
    FigureCanvasAgg(figure)
    for p, panel in enumerate(panels):
        axes = figure.add_subplot(1, len(panels), p + 1)
        _draw_panel(axes, panel, experiments, style_of, combined, drew)
        axes.set_xlabel(f"{utility} (→ better)")
    handles += _extra_handles(drew)
    figure.legend(handles=handles, loc="center right", fontsize=8, frameon=False)
    title = experiments[0].name if not combined else _common_name(experiments)
    figure.suptitle(f"{title} ({experiments[0].threat_model})", fontsize=10)
    figure.tight_layout(rect=(0, 0, 1 - legend_inches / figure.get_figwidth(), 1))
    figure.savefig(buffer := io.BytesIO(), format="png", dpi=100, metadata={"Software": None})
    return buffer.getvalue()


def _common_name(experiments: Sequence[_Experiment]) -> str:
    base = experiments[0].name.removesuffix(" · " + experiments[0].attack_settings)
    return f"{base}: {len(experiments)} attack settings"


def _row_name(experiment: _Experiment, index: int) -> str:
    row, difference = experiment.rows[index], experiment.differences[index]
    return row.label if not difference else _clip_to(f"{row.label} ({difference})", 48)


def _single_styles(experiments, panels):
    """One experiment: a style and a legend entry per row."""
    from matplotlib.lines import Line2D

    (experiment,) = experiments
    names = {id(row): _row_name(experiment, i) for i, row in enumerate(experiment.rows)}
    labels = list(dict.fromkeys(names[id(p.row)] for panel in panels for p in panel.points))
    method_of = {names[id(p.row)]: p.row.runs[0].method.name for panel in panels for p in panel.points}
    style = plot_styles(labels, method_of)
    handles = [
        Line2D([], [], linestyle="none", marker=m, color=c, markerfacecolor=f, markersize=7, label=label)
        for label in labels
        for c, m, f in [style[label]]
    ]
    return (lambda point: style[names[id(point.row)]]), handles


def _combined_styles(experiments, panels):
    """Several experiments: a colour per curve (the row's label without its settings) and a marker per experiment
    (its attack settings), each explained once in the legend."""
    from matplotlib import colormaps
    from matplotlib.lines import Line2D

    palette = colormaps["tab10"]
    curves = sorted({_series(p.row.label)[0] for panel in panels for p in panel.points})
    colour = {curve: palette(k % 10) for k, curve in enumerate(curves)}
    used = sorted({p.experiment for panel in panels for p in panel.points})
    swept = _swept([p.row.label for panel in panels for p in panel.points])
    handles = [  # a colour per method, with the setting its points are annotated with
        Line2D([], [], color=colour[curve], linewidth=5, label=curve + (f" ({swept[curve]})" if swept[curve] else ""))
        for curve in curves
    ]
    handles += [
        Line2D(
            [],
            [],
            linestyle="none",
            marker=_MARKERS[k % len(_MARKERS)],
            color="0.3",
            markerfacecolor="none",
            markersize=7,
            label=_clip_to(f"attacks: {experiments[k].attack_settings}", 70),
        )
        for k in used
    ]

    def style(point: _Point) -> tuple:
        color = colour[_series(point.row.label)[0]]
        return color, _MARKERS[point.experiment % len(_MARKERS)], color

    return style, handles


def _draw_panel(axes, panel: _Panel, experiments, style_of, combined: bool, drew: dict) -> None:
    family, points = panel.family, panel.points
    _draw_points(axes, points, style_of, drew)
    if combined:
        _draw_curves(axes, points, style_of)
    elif len(points) > 1 and (front := pareto_front([(p.x, p.y) for p in points], True, family.direction == "higher")):
        drew["front"] = True
        xy = sorted((points[i].x, points[i].y) for i in front)
        axes.plot(*zip(*xy), color="0.35", linestyle="--", linewidth=1.2, zorder=2)
        axes.scatter(*zip(*xy), s=190, facecolors="none", edgecolors="0.35", linewidths=1.2, zorder=2)
    if panel.frontier:
        drew["frontier"] = True
        xs, ys, epsilons = zip(*panel.frontier)
        axes.plot(xs, ys, color="black", marker="s", markersize=5, linewidth=1.4, zorder=3)
        for x, y, epsilon in panel.frontier:
            axes.annotate(f"ε={epsilon:g}", (x, y), xytext=(4, -10), textcoords="offset points", fontsize=7)
    _draw_reference_lines(axes, panel)
    if family.direction == "lower":
        axes.invert_yaxis()  # up is always more private
    tm = experiments[0].threat_model
    attacks = sorted({a for p in points if (w := _row_worst_case(p.row, tm, family)) for a in w.attacks})
    axes.set_ylabel(f"worst-case {family.metric} (↑ more private)")
    axes.set_title(
        f"strongest of: {', '.join(attacks)}"
        if len(", ".join(attacks)) < 60
        else f"strongest of {len(attacks)} adversaries",
        fontsize=9,
    )
    axes.grid(True, alpha=0.3)
    axes.margins(x=0.08, y=0.1)


def _draw_points(axes, points: list[_Point], style_of, drew: dict) -> None:
    """Each row with its seed error bars, crossed out where DP-SGD dominates it."""
    for point in points:
        color, marker, face = style_of(point)
        axes.errorbar(
            point.x,
            point.y,
            xerr=point.sx or None,
            yerr=point.sy if isinstance(point.sy, list) else point.sy or None,
            fmt=marker,
            color=color,
            markerfacecolor=face,
            markersize=7,
            capsize=3,
            elinewidth=1,
            zorder=3,
        )
        if point.dominated is not None:
            drew["compared"].add((point.experiment, id(point.row)))
        if point.dominated:
            drew["dominated"].add((point.experiment, id(point.row)))
            axes.scatter(point.x, point.y, marker="x", s=120, color=_DOMINATED_COLOR, linewidths=1.6, zorder=4)


def _draw_curves(axes, points: list[_Point], style_of) -> None:
    """The rows of one method measured with one attack setting, each with its setting, joined in order of utility
    where they sweep one setting (not where they are variants: 'bias-free encoder')."""

    swept = _swept([p.row.label for p in points])

    curves: dict[tuple, list[_Point]] = {}
    for point in points:
        curves.setdefault((_series(point.row.label)[0], point.experiment), []).append(point)
    for members in curves.values():
        members.sort(key=lambda p: p.x)
        if len(members) > 1 and swept[_series(members[0].row.label)[0]]:  # one setting swept: a curve, as in Figure 3
            axes.plot([p.x for p in members], [p.y for p in members], color=style_of(members[0])[0], alpha=0.5)
        for p in members:
            if note := _note(p.row.label, swept):
                axes.annotate(note, (p.x, p.y), xytext=(4, 4), textcoords="offset points", fontsize=6)


def _draw_reference_lines(axes, panel: _Panel) -> None:
    """A log scale where the values span decades, then the metric's chance level or cap, labelled on the line."""
    from matplotlib.ticker import LogFormatter, ScalarFormatter
    from matplotlib.transforms import blended_transform_factory

    ys = [p.y for p in panel.points] + [y for _, y, _ in panel.frontier]
    log = min(ys) > 0 and max(ys) / min(ys) > 10
    if log:
        axes.set_yscale("log")
        axes.yaxis.set_major_formatter(ScalarFormatter())
        axes.yaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.5)))
    elif max(ys) - min(ys) <= 1e-12 * max(1.0, abs(ys[0])):
        # every row at one value (e.g. audit epsilon 0 for each DP-SGD point): matplotlib would zoom into a 1e-17
        # band whose ticks read like real differences; show a band around the value instead
        half = max(0.1 * abs(ys[0]), 0.1)
        axes.set_ylim(ys[0] - half, ys[0] + half)
    across = blended_transform_factory(axes.transAxes, axes.transData)
    for value, label in panel.lines:
        if log and value <= 0:
            continue
        axes.axhline(value, **_REFERENCE_STYLE)
        axes.text(0.99, value, label, transform=across, ha="right", va="bottom", fontsize=7, color="0.35")


def _extra_handles(drew: dict) -> list:
    from matplotlib.lines import Line2D

    handles = []
    if drew["front"]:
        handles.append(
            Line2D(
                [],
                [],
                color="0.35",
                linestyle="--",
                marker="o",
                markerfacecolor="none",
                markersize=11,
                label="Pareto front",
            )
        )
    if drew["frontier"]:
        handles.append(
            Line2D([], [], color="black", marker="s", markersize=5, label="DP-SGD frontier (best accuracy per ε)")
        )
    if drew["compared"]:  # verdicts on the first panel's metric and the others together: the table's column
        handles.append(
            Line2D(
                [],
                [],
                linestyle="none",
                marker="x",
                color=_DOMINATED_COLOR,
                markersize=9,
                label=f"dominated by DP-SGD ({len(drew['dominated'])} of {len(drew['compared'])} rows)",
            )
        )
    return handles
