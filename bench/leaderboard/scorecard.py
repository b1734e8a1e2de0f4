"""The papers' claims (bench/claims) evaluated on the leaderboard's settings: the scorecard."""

from __future__ import annotations

from collections import Counter
from typing import Optional

from bench.claims import Setting, evaluate_claims
from bench.leaderboard.experiments import _budget_text, _canonical, _setting, worst_case
from bench.leaderboard.records import MISSING, _entry, _finite, _Run
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
    """What a run trained on and for how long, e.g. 'mnist_t10k (4,000 train, 8 epochs)'."""
    train = _finite(run.dataset.pool_sizes.get("train"))
    parts = ([f"{_number(train, True)} train"] if train is not None else []) + (
        [_budget_text(run.budget)] if run.budget else []
    )
    return run.dataset.name + (f" ({', '.join(parts)})" if parts else "")


def _claim_value(record: Record, path: str) -> Optional[float]:
    section, _, rest = path.partition(".")
    if section in ("utility", "cost"):
        return _finite((record.utility if section == "utility" else record.cost).get(rest))
    attack_or_tm, _, metric = rest.partition(".")
    entries = [_entry(entry) for entry in record.privacy]
    if section == "privacy":
        entry = next((e for e in entries if e.attack == attack_or_tm), None)
        return None if entry is None else entry.metrics.get(metric)
    try:
        found = worst_case(entries, attack_or_tm, metric, primary_only=False)
    except ValueError:
        return None
    return None if found is None else found[0]


def _scorecard(claims_files: list, runs: list[_Run], placed: Optional[dict[int, set[str]]] = None) -> list[str]:
    if not claims_files:
        return []
    lines = [
        "## Scorecard: the papers' claims, as our records measure them",
        "",
        "Each claim is a comparison of record values stated in `bench/claims/<paper>.yaml`; *ours* shows the "
        "values compared (mean over seeds). *Not run at this scale*: no record measures it yet.",
        "",
    ]
    for file, verdicts in evaluate_claims(claims_files, _claim_settings(runs, placed or {}), _claim_value):
        counts = Counter(v.status for v in verdicts)
        summary = ", ".join(f"{counts[s]} {s}" for s in ("yes", "partly", "no", "not run at this scale") if counts[s])
        scales = sorted({scale for v in verdicts for scale in v.scales})
        measured = f" Ours measured on {_escape('; '.join(scales))}." if scales else ""
        lines += [f"### {file.paper}", "", f"{len(verdicts)} claims: {summary}.{measured}", ""]
        body = [
            [
                v.claim.claim + (f" ({v.claim.note})" if v.claim.note else ""),
                v.claim.paper,
                v.ours or MISSING,
                f"**{v.status}**" if v.status in ("yes", "no") else v.status,
            ]
            for v in verdicts
        ]
        lines += _markdown_table(["Claim", "Paper", "Ours", "Reproduced?"], body, left=4, clip=False) + [""]
    return lines
