"""The papers' claims (bench/claims) evaluated on the leaderboard's settings: the scorecard."""

from __future__ import annotations

from collections import Counter
from typing import Optional

from bench.claims import Setting, evaluate_claims
from bench.leaderboard.experiments import _budget_text, _canonical, _setting, worst_case
from bench.leaderboard.records import MISSING, _Entry, _entry, _finite, _Run
from bench.leaderboard.tables import _escape, _markdown_table, _number
from bench.records import Record


def _claim_settings(runs: list[_Run], placed: dict[int, set[str]]) -> list[Setting]:
    """Rows as the claims select them: one per (label, setting) over every experiment, with the tables they sit in."""
    grouped: dict[str, list[_Run]] = {}
    for run in runs:
        threat_models = sorted({e.threat_model for e in run.entries})
        key = _canonical(
            [
                run.method.label,
                run.experiment,
                {tm: _setting(run, tm) for tm in threat_models} or _setting(run, None),
            ]
        )
        grouped.setdefault(key, []).append(run)
    settings = []
    for key in sorted(grouped):
        members = grouped[key]
        first = members[0]
        seeds: dict[str, _Run] = {}
        for run in sorted(members, key=lambda r: r.read_order):
            seeds[_canonical(run.seed_identity)] = run  # one record per seed: the latest
        settings.append(
            Setting(
                first.method.name,
                first.method.label,
                first.dataset.name,
                first.experiment or "",
                first.method.hparams,
                tuple(run.model for run in seeds.values()),
                _scale(first),
                frozenset().union(*(placed.get(id(run), set()) for run in members)),
            )
        )
    return settings


def _scale(run: _Run) -> str:
    """What a run trained on and for how long, e.g. 'mnist_t10k (4,000 train, 8 epochs)', or with canaries
    'mnist_t10k (1,000 train + 500 canary candidates, 100 epochs)' (the design, the same for every data seed)."""
    sizes = run.dataset.design_pool_sizes or {}
    train, candidates = _finite(sizes.get("train")), _finite(sizes.get("canary_candidates"))
    canaries = f" + {_number(candidates, True)} canary candidates" if candidates is not None else ""
    parts = ([f"{_number(train, True)} train{canaries}"] if train is not None else []) + (
        [_budget_text(run.budget)] if run.budget else []
    )
    return run.dataset.name + (f" ({', '.join(parts)})" if parts else "")


def _claim_entry(record: Record, path: str) -> Optional[tuple[_Entry, str]]:
    """The privacy entry a privacy.ATTACK.METRIC or worst_case.THREAT_MODEL.METRIC path reads, and the metric."""
    section, _, rest = path.partition(".")
    attack_or_tm, _, metric = rest.partition(".")
    entries = [_entry(entry) for entry in record.privacy]
    if section == "privacy":
        entry = next((e for e in entries if e.attack == attack_or_tm), None)
        return None if entry is None else (entry, metric)
    try:
        found = worst_case(entries, attack_or_tm, metric, primary_only=False)
    except ValueError:
        return None
    if found is None:
        return None
    return next(e for e in entries if e.attack == found[1] and e.threat_model == attack_or_tm), metric


def _claim_value(record: Record, path: str) -> Optional[float]:
    section, _, rest = path.partition(".")
    if section in ("utility", "cost"):
        return _finite((record.utility if section == "utility" else record.cost).get(rest))
    found = _claim_entry(record, path)
    return None if found is None else found[0].metrics.get(found[1])


def _claim_interval(record: Record, path: str) -> Optional[tuple[float, float]]:
    """The record's own 95% interval of the value a path reads (the winning adversary's, for a worst case)."""
    if path.partition(".")[0] in ("utility", "cost"):
        return None
    found = _claim_entry(record, path)
    return None if found is None else found[0].intervals.get(found[1])


def _scorecard(claims_files: list, runs: list[_Run], placed: Optional[dict[int, set[str]]] = None) -> list[str]:
    if not claims_files:
        return []
    lines = [
        "## Scorecard: the papers' claims, as our records measure them",
        "",
        "Each claim is a comparison of record values stated in `bench/claims/<paper>.yaml`; *ours* shows the "
        "values compared (mean over seeds), with their 95% intervals where the records have them (a record's own "
        "for one seed, the t-interval of the mean over several). *Not significant*: the intervals of a comparison "
        "the verdict rests on overlap, so the order it states is not established either way. *Not run at this "
        "scale*: no record measures it yet.",
        "",
    ]
    settings = _claim_settings(runs, placed or {})
    for file, verdicts in evaluate_claims(claims_files, settings, _claim_value, _claim_interval):
        counts = Counter(v.status for v in verdicts)
        weak = Counter(v.status for v in verdicts if v.significant is False)
        summary = ", ".join(
            f"{counts[s]} {s}" + (f" ({weak[s]} not significant)" if weak[s] else "")
            for s in ("yes", "partly", "no", "not run at this scale")
            if counts[s]
        )
        scales = sorted({scale for v in verdicts for scale in v.scales})
        measured = f" Ours measured on {_escape('; '.join(scales))}." if scales else ""
        lines += [f"### {file.paper}", "", f"{len(verdicts)} claims: {summary}.{measured}", ""]
        body = [
            [
                v.claim.claim + (f" ({v.claim.note})" if v.claim.note else ""),
                v.claim.paper,
                v.ours or MISSING,
                f"**{v.status}**" if v.status in ("yes", "no") and v.significant is not False else v.status_text,
            ]
            for v in verdicts
        ]
        lines += _markdown_table(["Claim", "Paper", "Ours", "Reproduced?"], body, left=4, clip=False) + [""]
    return lines
