"""One privacy-utility plot per experiment: worst-case privacy against utility, the Pareto front marked."""

from __future__ import annotations

import io
from typing import Optional

import numpy as np

from bench.leaderboard.experiments import _Experiment
from bench.leaderboard.records import pareto_front
from bench.leaderboard.tables import _clip_to, _mean, _row_worst_case, _std, _utility_key


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
    palette, markers = colormaps["tab10"], "osD^v<>ph*P"
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


def _plot(experiment: _Experiment) -> Optional[bytes]:
    """Utility against each worst-case column, one point per row with seed error bars, the Pareto front drawn."""
    # Figure + the Agg canvas directly, not pyplot: no global backend switch for whoever imported us,
    # and no pyplot figure registry to leak figures into when called again and again
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.ticker import LogFormatter, ScalarFormatter

    utility = _utility_key(experiment)
    if utility is None or not experiment.families:
        return None
    # one legend entry per row: the label, and what tells rows of the same label apart
    names_of = {
        id(row): row.label
        if not experiment.differences[i]
        else _clip_to(f"{row.label} ({experiment.differences[i]})", 48)
        for i, row in enumerate(experiment.rows)
    }
    panels = []
    for family in experiment.families:
        points = []
        for row in experiment.rows:
            xs = row.values(lambda r: r.utility.get(utility))
            worst = _row_worst_case(row, experiment.threat_model, family)
            if xs and worst is not None:
                y = float(np.mean(worst.values))
                # error bars: the std over seeds, or a single seed's own interval
                spread = (
                    [[y - worst.interval[0]], [worst.interval[1] - y]]
                    if worst.interval is not None
                    else _std(worst.values) or 0.0
                )
                points.append((row, float(np.mean(xs)), _std(xs) or 0.0, y, spread))
        if points:
            panels.append((family, points))
    if not panels:
        return None
    labels = list(dict.fromkeys(names_of[id(row)] for _, points in panels for row, *_ in points))
    method_of = {names_of[id(row)]: row.runs[0].method.name for _, points in panels for row, *_ in points}
    style = plot_styles(labels, method_of)
    legend_inches = 0.8 + 0.065 * max(len(label) for label in labels + ["Pareto front"])  # 8 pt text beside the axes
    figure = Figure(figsize=(5.2 * len(panels) + legend_inches, 4.6))
    drew_front = False
    FigureCanvasAgg(figure)
    for p, (family, points) in enumerate(panels):
        axes = figure.add_subplot(1, len(panels), p + 1)
        for row, x, sx, y, sy in points:
            color, marker, face = style[names_of[id(row)]]
            axes.errorbar(
                x,
                y,
                xerr=sx or None,
                yerr=sy if isinstance(sy, list) else sy or None,
                fmt=marker,
                color=color,
                markerfacecolor=face,
                markersize=7,
                capsize=3,
                elinewidth=1,
                zorder=3,
            )
        front = pareto_front([(x, y) for _, x, _, y, _ in points], True, family.direction == "higher")
        if len(points) > 1 and front:
            drew_front = True
            xy = sorted((points[i][1], points[i][3]) for i in front)
            axes.plot(*zip(*xy), color="0.35", linestyle="--", linewidth=1.2, zorder=2)
            axes.scatter(*zip(*xy), s=190, facecolors="none", edgecolors="0.35", linewidths=1.2, zorder=2)
        ys = [y for *_, y, _ in points]
        if min(ys) > 0 and max(ys) / min(ys) > 10:  # the metric spans decades
            axes.set_yscale("log")
            axes.yaxis.set_major_formatter(ScalarFormatter())
            axes.yaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.5)))
        if family.direction == "lower":
            axes.invert_yaxis()  # up is always more private
        attacks = sorted(
            {a for row, *_ in points if (w := _row_worst_case(row, experiment.threat_model, family)) for a in w.attacks}
        )
        axes.set_xlabel(f"{utility} (→ better)")
        axes.set_ylabel(f"worst-case {family.metric} (↑ more private)")
        axes.set_title(
            f"strongest of: {', '.join(attacks)}"
            if len(", ".join(attacks)) < 60
            else f"strongest of {len(attacks)} adversaries",
            fontsize=9,
        )
        axes.grid(True, alpha=0.3)
        axes.margins(x=0.08, y=0.1)
    handles = [
        Line2D(
            [],
            [],
            linestyle="none",
            marker=style[label][1],
            color=style[label][0],
            markerfacecolor=style[label][2],
            markersize=7,
            label=label,
        )
        for label in labels
    ]
    if drew_front:
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
    figure.legend(handles=handles, loc="center right", fontsize=8, frameon=False)
    figure.suptitle(f"{experiment.name} ({experiment.threat_model})", fontsize=10)
    figure.tight_layout(rect=(0, 0, 1 - legend_inches / figure.get_figwidth(), 1))
    figure.savefig(buffer := io.BytesIO(), format="png", dpi=100, metadata={"Software": None})
    return buffer.getvalue()
