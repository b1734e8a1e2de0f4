"""The leaderboard, on hand-written records (tests/fixtures/records) and claims (tests/fixtures/claims).

The fixtures cover two threat models (feature_release, black_box_outputs) and four experiments: digits and
mnist (derived from data and budget), and `fixture_mia` (named by its records); a utility-only record, a
malformed record, a degenerate run, a diagnostic stronger than every adversary, a non-converged attack.

Regenerate the golden README after an intended change of the output, then read the diff:

    BENCH_UPDATE_GOLDEN=1 python -m pytest tests/test_leaderboard.py -k golden
"""

from __future__ import annotations

import csv
import itertools
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest

from bench.claims import NOT_RUN, ClaimsError, load_claims, parse_claims, shipped_claims
from bench.leaderboard import MAX_LINE_CHARS, MAX_TABLE_COLUMNS, generate_leaderboard, pareto_front

FIXTURES = Path(__file__).parent / "fixtures"
RECORDS = FIXTURES / "records"
CLAIMS = FIXTURES / "claims" / "fixture.yaml"
GOLDEN = FIXTURES / "leaderboard_golden.md"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def board(tmp_path_factory):
    out = tmp_path_factory.mktemp("leaderboard")
    return generate_leaderboard([RECORDS], out, claims=[CLAIMS]), out


def _split(line: str) -> list[str]:
    return [cell.strip() for cell in re.split(r"(?<!\\)\|", line)[1:-1]]


def _tables(markdown: str, heading: str) -> list[list[dict[str, str]]]:
    """Every table under ``### heading`` (up to the next heading), each as rows of {column header: cell}."""
    section = markdown.split(f"### {heading}\n", 1)[1].split("\n## ", 1)[0].split("\n### ", 1)[0]
    tables, current = [], []
    for line in section.splitlines() + [""]:
        if line.startswith("|"):
            current.append(line)
        elif current:
            headers = _split(current[0])
            tables.append([dict(zip(headers, _split(row))) for row in current[2:]])
            current = []
    return tables


def _headline(markdown: str, heading: str) -> dict[str, dict[str, str]]:
    return {row["Method"].removesuffix(" ★"): row for row in _tables(markdown, heading)[0]}


def _fixture(name: str) -> dict:
    return json.loads((RECORDS / name).read_text())


def _write(folder: Path, *records: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for record in records:
        (folder / f"{record['record_id']}.json").write_text(json.dumps(record))
    return folder


def test_golden_readme(board):
    result, _ = board
    text = result.markdown.read_text()
    if os.environ.get("BENCH_UPDATE_GOLDEN") == "1":
        GOLDEN.write_text(text)
    assert text == GOLDEN.read_text(), "README changed; if intended, regenerate with BENCH_UPDATE_GOLDEN=1"


def test_page_order_scorecard_first_then_threat_models_and_experiments(board):
    result, _ = board
    text = result.markdown.read_text()
    headings = [line for line in text.splitlines() if line.startswith("## ") or line.startswith("### ")]
    assert headings[0] == "## Scorecard: the papers' claims, as our records measure them"
    assert (
        headings.index("## black_box_outputs")
        < headings.index("## feature_release")
        < headings.index("## Utility only (no privacy evaluation)")
    )
    # two experiments of feature release (digits and mnist differ in data), one named experiment of black-box outputs
    assert "### fixture_mia" in headings and "### digits, 20 epochs" in headings and "### mnist, 20 epochs" in headings


def test_worst_case_picks_the_strongest_adversary_and_ignores_diagnostics(board):
    result, _ = board
    rows = _headline(result.markdown.read_text(), "digits, 20 epochs")
    # RAN: feature_inversion mse 0.045, affine_inversion 0.035 (stronger: lower mse is less private), and its own
    # decoder (diagnostic) 0.002, which would win if diagnostics counted
    # the most private worst case is bold: RAN 0.035 beats DNN's 0.013 and Noisy's 0.030
    assert rows["RAN (lam=0.5)"]["Worst-case mse ↑"] == "**0.0350** affine_inversion"
    assert rows["DNN"]["Worst-case mse ↑"] == "0.0130 ± 0.0014 feature_inversion"
    # the diagnostic is shown apart, under the detail, never in the headline
    section = result.markdown.read_text().split("### digits, 20 epochs\n", 1)[1].split("\n### ", 1)[0]
    headline, detail = section.split("<details>", 1)
    assert "own_decoder" not in headline
    assert "**Diagnostics (the method's own parts; never the verdict)**" in detail and "*own_decoder*" in detail


def test_worst_case_is_per_seed_then_averaged_and_names_every_winner(board):
    result, _ = board
    rows = _headline(result.markdown.read_text(), "fixture_mia")
    none = [_fixture("mia-none-seed0.json"), _fixture("mia-none-seed1.json")]
    # per seed, the attacker's best: max attack accuracy (lower means more private); seed 0 lira, seed 1 loss_threshold
    best = [max(e["metrics"]["attack_accuracy"] for e in r["privacy"]) for r in none]
    cell = rows["MCMIA (defense=none)"]["Worst-case attack_accuracy ↓"]
    assert cell == f"{np.mean(best):.3f} ± {np.std(best, ddof=1):.3f} lira 1/2, loss_threshold 1/2"
    # a single-seed row shows the interval its record carries
    assert rows["DP-SGD (target_epsilon=3.0)"]["Worst-case attack_accuracy ↓"] == "**0.520 [0.490, 0.550]** lira"


def test_cost_columns_come_from_what_records_declare(board):
    result, _ = board
    rows = _headline(result.markdown.read_text(), "fixture_mia")
    assert list(rows["MCMIA (defense=none)"]) == [
        "Method",
        "Accuracy",
        "Worst-case attack_accuracy ↓",
        "Dominated by DP-SGD",
        "Params",
        "Compression (×)",
        "dp_epsilon",
        "Seeds",
    ]
    assert rows["DP-SGD (target_epsilon=3.0)"]["dp_epsilon"] == "2.98"  # method.headline_cost
    assert rows["MCMIA (defense=none)"]["dp_epsilon"] == "–"
    assert rows["MCMIA (defense=pruning)"]["Compression (×)"] == "15.0"
    # the feature-release tables have no pruned or DP rows: no such columns
    assert "Compression (×)" not in _headline(result.markdown.read_text(), "digits, 20 epochs")["DNN"]


def test_two_seed_row_is_mean_and_sample_std_with_the_paper_value(board):
    result, _ = board
    seeds = [_fixture("digits-dnn-seed0.json"), _fixture("digits-dnn-seed1.json")]
    dnn = _headline(result.markdown.read_text(), "digits, 20 epochs")["DNN"]
    assert dnn["Seeds"] == "2"
    accuracy = [r["utility"]["accuracy"] for r in seeds]
    assert dnn["Accuracy"] == f"**{np.mean(accuracy):.3f} ± {np.std(accuracy, ddof=1):.3f}** (paper 0.990)"
    detail = _tables(result.markdown.read_text(), "digits, 20 epochs")
    fi = next(t for t in detail[1:] if any(r["Method"] == "DNN" for r in t) and "psnr ↓" in t[0])
    psnr = [r["privacy"][0]["metrics"]["psnr"] for r in seeds]
    assert next(r for r in fi if r["Method"] == "DNN")["psnr ↓"] == f"{np.mean(psnr):.1f} ± {np.std(psnr, ddof=1):.1f}"
    assert "0.0130 ± 0.0014 (paper 0.0110)" in result.markdown.read_text()
    assert "Example et al. 2019, Table 2 (test fixture)" in result.markdown.read_text()
    with result.csv.open() as stream:
        line = next(r for r in csv.DictReader(stream) if r["method"] == "DNN" and r["experiment"].startswith("digits"))
    assert float(line["utility.accuracy_mean"]) == pytest.approx(np.mean(accuracy))
    assert float(line["utility.accuracy_std"]) == pytest.approx(np.std(accuracy, ddof=1))
    assert float(line["feature_inversion.psnr_std"]) == pytest.approx(np.std(psnr, ddof=1))


def test_no_table_is_wider_than_the_limit(board):
    result, _ = board
    for line in result.markdown.read_text().splitlines():
        if line.startswith("|"):
            assert len(_split(line)) <= MAX_TABLE_COLUMNS, line
            assert len(line) <= MAX_LINE_CHARS, line


def test_an_attack_with_many_metrics_is_split_into_tables_within_the_limit(tmp_path):
    record = _fixture("digits-dnn-seed0.json")
    entry = record["privacy"][0]
    entry["metrics"].update({f"extra_{i}": 0.1 * i for i in range(12)})
    entry["directions"].update({f"extra_{i}": "lower" for i in range(12)})
    result = generate_leaderboard([_write(tmp_path / "records", record)], tmp_path / "out", claims=[])
    tables = _tables(result.markdown.read_text(), "digits, 20 epochs")
    detail_headers = [h for t in tables[1:] for h in t[0] if h not in ("Method", "Seeds")]
    assert sorted(detail_headers) == sorted(
        f"{m} {'↑' if d == 'higher' else '↓'}" for m, d in entry["directions"].items()
    )
    assert all(len(t[0]) <= MAX_TABLE_COLUMNS for t in tables)


def test_scorecard_evaluates_claims_to_yes_no_partly_and_not_run(board):
    result, _ = board
    (scorecard,) = _tables(result.markdown.read_text(), 'Fixture et al., "Claims for the leaderboard tests"')
    verdicts = [row["Reproduced?"] for row in scorecard]
    assert verdicts == ["**yes**", "**no**", NOT_RUN, "partly"]
    # ours: the compared values; pruning's worst case 0.55 (loss_threshold) vs the baseline's mean worst case 0.65
    # the baseline's two seeds give the t-interval of their mean; pruning's one record states none
    assert scorecard[0]["Ours"] == "0.550 < 0.650 [0.523, 0.777]"
    # (the interval is of the compared value, 0.93, over the baseline's two seeds: 0.800 lies outside it)
    assert scorecard[1]["Ours"] == "0.800 vs 0.940 − 0.0100 [0.803, 1.06]"
    assert scorecard[2]["Ours"] == "–"
    assert scorecard[3]["Claim"].endswith("(one half holds)")


def test_claims_files_are_validated_before_anything_is_evaluated():
    good = CLAIMS.read_text()
    assert len(parse_claims(good).claims) == 4
    bad = {
        'op: "<"': ('op: "=="', "op must be one of"),
        'value: utility.accuracy}\n      op: ">="': (
            "value: __import__('os').system}\n      op: \">=\"",
            "value must be",
        ),
        "paper: 0.966": ("paper: [1, 2]", "paper must be a string or a number"),
        '    note: "one half holds"': ('    note: "x"\n    run: python -c 1', "unknown key(s) ['run']"),
    }
    for old, (new, message) in bad.items():
        assert old in good
        with pytest.raises(ClaimsError, match=re.escape(message)):
            parse_claims(good.replace(old, new, 1), "broken.yaml")
    with pytest.raises(ClaimsError, match="not valid YAML"):
        parse_claims("claims: [", "broken.yaml")
    with pytest.raises(ClaimsError, match="could not determine a constructor"):  # safe_load builds no objects
        parse_claims("!!python/object/apply:os.system ['true']", "hostile.yaml")


def test_a_broken_claims_file_is_reported_and_skipped(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("paper: x\nclaims: []\n")
    result = generate_leaderboard([RECORDS], tmp_path / "out", claims=[broken, CLAIMS])
    text = result.markdown.read_text()
    assert "`broken.yaml`: broken.yaml: claims must be a non-empty list" in text
    assert '### Fixture et al., "Claims for the leaderboard tests"' in text


def test_shipped_claims_files_parse_and_cover_the_five_papers():
    files = [load_claims(path) for path in shipped_claims()]
    assert len(files) == 5 and all(len(f.claims) >= 3 for f in files)


def test_runs_differing_in_world_size_batch_or_precision_are_separate_rows(tmp_path):
    single = _fixture("mia-pruning.json")
    ddp = json.loads(json.dumps(single))
    ddp["record_id"], ddp["training"]["world_size"] = "c" * 32, 2
    half = json.loads(json.dumps(single))
    half["record_id"], half["config"]["trainer"]["precision"] = "d" * 32, "16-mixed"
    result = generate_leaderboard([_write(tmp_path / "records", single, ddp, half)], tmp_path / "out", claims=[])
    rows = _tables(result.markdown.read_text(), "fixture_mia")[0]
    assert [row["Seeds"] for row in rows] == ["1", "1", "1"]  # none merged into another as a seed
    assert sorted(row["Setting"] for row in rows) == [
        'effective_batch=32, precision="16-mixed", world_size=1',
        'effective_batch=32, precision="32-true", world_size=1',
        'effective_batch=64, precision="32-true", world_size=2',
    ]
    # without a name, the derived experiment keys on them too: separate tables
    for record in (single, ddp):
        record.pop("experiment")
    result = generate_leaderboard([_write(tmp_path / "unnamed", single, ddp)], tmp_path / "out2", claims=[])
    headings = [line for line in result.markdown.read_text().splitlines() if line.startswith("### mnist")]
    assert headings == ["### mnist, 50 epochs, batch 32", "### mnist, 50 epochs, batch 64, 2 devices"]


def test_records_attacked_differently_never_share_an_experiment(tmp_path):
    first, second = _fixture("digits-dnn-seed0.json"), _fixture("digits-dnn-seed1.json")
    second["privacy"][0]["config"] = {**second["privacy"][0]["config"], "epochs": 2}
    result = generate_leaderboard([_write(tmp_path / "records", first, second)], tmp_path / "out", claims=[])
    headings = [line for line in result.markdown.read_text().splitlines() if line.startswith("### digits")]
    assert headings == [
        "### digits, 20 epochs · feature_inversion (epochs=2)",
        "### digits, 20 epochs · feature_inversion (epochs=30)",
    ]


def _attacked(record: dict, record_id: str, **configs: dict) -> dict:
    """``record`` under a new id, attacked by exactly ``configs`` (attack -> config; its entries copied)."""
    record = json.loads(json.dumps(record))
    template = record["privacy"][0]
    record["record_id"] = record_id
    record["privacy"] = [{**template, "attack": attack, "config": config} for attack, config in configs.items()]
    return record


def test_experiments_that_differ_in_attack_settings_are_named_by_what_differs_never_a_hash(tmp_path):
    """The RAN paper's Figure 3 case: three sibling experiments on the same data and budget whose attacks differ."""
    base = _fixture("digits-dnn-seed0.json")
    upsampling = _attacked(base, "b" * 32, feature_inversion={"decoder": "upsampling", "epochs": 40, "lr": 0.001})
    patient = {"decoder": "mirror", "epochs": 1000, "lr": 0.001, "patience": 20, "validation_fraction": 0.1}
    plateau = _attacked(base, "c" * 32, feature_inversion=patient)
    own = _attacked(
        base, "d" * 32, feature_inversion={"decoder": "mirror", "epochs": 40, "lr": 0.001}, own_decoder={"batch": 8}
    )
    records = _write(tmp_path / "records", upsampling, plateau, own)
    result = generate_leaderboard([records], tmp_path / "out", claims=[])
    headings = [line[4:] for line in result.markdown.read_text().splitlines() if line.startswith("### digits")]
    assert headings == [
        "digits, 20 epochs · feature_inversion (decoder=mirror, epochs=1000, patience=20, validation_fraction=0.1)",
        "digits, 20 epochs · feature_inversion (decoder=mirror, epochs=40) + own_decoder",
        "digits, 20 epochs · feature_inversion (decoder=upsampling, epochs=40)",
    ]
    assert not any(re.search(r"\[[0-9a-f]{6}\]", heading) for heading in headings)
    # stable: the same records read in another order give the same names
    again = generate_leaderboard([_write(tmp_path / "again", own, plateau, upsampling)], tmp_path / "out2", claims=[])
    assert [line[4:] for line in again.markdown.read_text().splitlines() if line.startswith("### digits")] == headings


def test_a_long_difference_names_an_experiment_by_the_fewest_settings_that_tell_it_apart():
    from bench.leaderboard.experiments import _distinguishing

    mine = {"feature_inversion": json.dumps({"decoder": "mirror", "epochs": 1000, "a_long_setting_name": "x" * 60})}
    sibling = {"feature_inversion": json.dumps({"decoder": "upsampling", "epochs": 1000})}
    other = {"feature_inversion": json.dumps({"decoder": "upsampling", "epochs": 40}), "own_decoder": "{}"}
    assert _distinguishing(mine, [sibling, other]) == "feature_inversion (decoder=mirror)"
    # short enough: every setting some sibling sets otherwise, and the attack only some run
    assert _distinguishing(sibling, [mine, other]) == "feature_inversion (decoder=upsampling, epochs=1000)"
    assert _distinguishing(other, [mine, sibling]) == "feature_inversion (decoder=upsampling, epochs=40) + own_decoder"
    # only an unset setting tells one apart: it says so
    plain = {"feature_inversion": json.dumps({"decoder": "mirror", "epochs": 1000})}
    assert _distinguishing(plain, [mine]) == "feature_inversion (a_long_setting_name unset)"


def test_methods_facing_different_attacks_still_share_an_experiment(board):
    result, _ = board
    rows = _headline(result.markdown.read_text(), "digits, 20 epochs")
    # RAN faced an extra adversary (affine_inversion); its shared attack ran with the same configuration as the others'
    assert set(rows) == {"DNN", "Noisy (noise=0.5)", "RAN (lam=0.5)"}


def test_degenerate_runs_are_left_out_by_default(board, tmp_path):
    result, _ = board
    text = result.markdown.read_text()
    assert "MCMIA (defense=minmax)" not in text.split("## Left out", 1)[0]
    assert "`records/mia-degenerate.json`: MCMIA (defense=minmax): flagged degenerate" in text
    assert [path.name for path, _ in result.left_out] == ["mia-degenerate.json"]
    shown = generate_leaderboard([RECORDS], tmp_path / "all", claims=[], include_degenerate=True)
    assert "MCMIA (defense=minmax) (degenerate)" in _headline(
        shown.markdown.read_text(), "fixture_mia"
    )  # marked as such
    # the record-level flag counts as well as the utility one
    record = _fixture("mia-degenerate.json")
    record["utility"].pop("degenerate")
    record["degenerate"] = True
    assert len(generate_leaderboard([_write(tmp_path / "one", record)], tmp_path / "o", claims=[]).left_out) == 1


def test_an_attack_that_did_not_converge_is_flagged(board):
    result, _ = board
    text = result.markdown.read_text()
    noisy = _headline(text, "digits, 20 epochs")["Noisy (noise=0.5)"]
    assert noisy["Worst-case mse ↑"].endswith("feature_inversion ⚠")
    assert "⚠ stopped at its maximum budget without converging" in text


def test_a_weaker_adversary_that_did_not_converge_flags_the_verdict_too(tmp_path):
    ran = _fixture("digits-ran.json")
    # feature_inversion lost to affine_inversion, but with more budget it might have won: the verdict may be optimistic
    next(e for e in ran["privacy"] if e["attack"] == "feature_inversion")["details"] = {"converged": False}
    result = generate_leaderboard([_write(tmp_path / "records", ran)], tmp_path / "out", claims=[])
    assert (
        _headline(result.markdown.read_text(), "digits, 20 epochs")["RAN (lam=0.5)"]["Worst-case mse ↑"]
        == "0.0350 affine_inversion ⚠"
    )


def test_an_adversary_that_failed_after_training_marks_the_verdict_it_may_understate(tmp_path):
    ran = _fixture("digits-ran.json")
    # affine_inversion (the strongest here) failed: the worst case over the others is only a lower bound on the leakage
    failed = next(e for e in ran["privacy"] if e["attack"] == "affine_inversion")
    failed.update(metrics={}, error="RuntimeError: out of memory")
    text = generate_leaderboard([_write(tmp_path / "records", ran)], tmp_path / "out", claims=[]).markdown.read_text()
    cell = _headline(text, "digits, 20 epochs")["RAN (lam=0.5)"]["Worst-case mse ↑"]
    assert cell.endswith("✗ affine_inversion failed") and "affine_inversion" not in cell.split(" ✗")[0]
    assert "✗ failed after training, so it has no result" in text and "may understate the leakage" in text


def test_csv_has_one_line_per_row_with_worst_case_and_setting(board):
    result, _ = board
    with result.csv.open() as stream:
        lines = list(csv.DictReader(stream))
    assert (
        result.rows == len(lines) == 8
    )  # digits 3, mnist 1, fixture_mia 3 (the degenerate run left out), utility only 1
    pruning = next(line for line in lines if line["method"] == "MCMIA (defense=pruning)")
    assert pruning["worst_case.attack_accuracy_attack"] == "loss_threshold"
    assert float(pruning["worst_case.attack_accuracy_mean"]) == pytest.approx(0.55)
    assert json.loads(pruning["setting"])["model.defense"] == "pruning"
    linear = next(line for line in lines if line["method"] == "Linear")
    assert (linear["threat_model"], linear["epochs"], linear["max_steps"]) == ("utility_only", "", "500")


def test_one_plot_per_experiment_embedded_and_readable(board):
    result, out = board
    names = sorted(path.name for path in result.plots)
    assert names == [  # mnist, 20 epochs has one row: a table, no one-point plot
        "black_box_outputs__fixture_mia.png",
        "feature_release__digits_20_epochs.png",
    ]
    assert "plots/feature_release__mnist_20_epochs.png" not in result.markdown.read_text()
    text = result.markdown.read_text()
    for path in result.plots:
        assert path.parent == out / "plots" and path.read_bytes()[:8] == PNG_MAGIC
        assert f"](plots/{path.name})" in text


def test_pareto_front_is_marked_in_the_headline(board):
    result, _ = board
    methods = [row["Method"] for row in _tables(result.markdown.read_text(), "fixture_mia")[0]]
    # (accuracy, worst-case attack accuracy; lower is more private): none (0.94, 0.65), pruning (0.94, 0.55),
    # DP-SGD (0.80, 0.52): pruning dominates none; DP-SGD is the most private
    assert methods == ["DP-SGD (target_epsilon=3.0) ★", "MCMIA (defense=none)", "MCMIA (defense=pruning) ★"]


def test_malformed_record_is_reported_not_fatal(board):
    result, _ = board
    assert [(path.name, reason) for path, reason in result.problems] == [
        ("malformed-missing-utility.json", "missing key 'utility'")
    ]
    text = result.markdown.read_text()
    assert "## Skipped" in text and "malformed-missing-utility.json`: missing key 'utility'" in text


def test_a_record_the_schema_accepts_but_the_board_cannot_read_is_skipped(tmp_path):
    record = _fixture("digits-dnn-seed0.json")
    record["method"]["label"] = None
    other = _fixture("digits-dnn-seed1.json")
    result = generate_leaderboard([_write(tmp_path / "records", record, other)], tmp_path / "out", claims=[])
    assert result.rows == 1 and len(result.problems) == 1


def test_zero_records(tmp_path):
    empty = tmp_path / "records"
    empty.mkdir()
    result = generate_leaderboard([empty], tmp_path / "new" / "board", title="empty board", claims=[])
    text = result.markdown.read_text()
    assert text.startswith("# empty board\n")
    assert "No records yet" in text and "`bench fit`" in text
    assert (result.rows, result.plots, result.problems) == (0, [], [])
    assert result.csv.read_text().startswith("threat_model,experiment,dataset,method")
    assert not [p for p in result.markdown.parent.iterdir() if p.name.endswith(".tmp")]


def test_output_is_deterministic(tmp_path):
    first = generate_leaderboard([RECORDS], tmp_path / "a", claims=[CLAIMS])
    second = generate_leaderboard([RECORDS], tmp_path / "b", claims=[CLAIMS])
    assert first.markdown.read_bytes() == second.markdown.read_bytes()
    assert first.csv.read_bytes() == second.csv.read_bytes()
    assert [p.read_bytes() for p in first.plots] == [p.read_bytes() for p in second.plots]


def test_a_re_evaluated_seed_is_counted_once_and_the_newest_wins(tmp_path):
    first = _fixture("digits-dnn-seed0.json")
    again = {**first, "record_id": "f" * 32, "created": "2099-01-01T00:00:00+00:00", "utility": {"accuracy": 0.5}}
    result = generate_leaderboard([_write(tmp_path / "records", first, again)], tmp_path / "out", claims=[])
    rows = _tables(result.markdown.read_text(), "digits, 20 epochs")[0]
    assert len(rows) == 1 and rows[0]["Seeds"] == "1" and rows[0]["Accuracy"] == "0.500"


def test_different_hyper_parameters_are_different_rows(tmp_path):
    first = _fixture("digits-dnn-seed0.json")
    first["method"]["hparams"]["lr"] = 0.001
    other = json.loads(json.dumps(first))
    other["record_id"], other["seed"] = "e" * 32, 5
    other["method"]["hparams"]["lr"] = 0.05
    result = generate_leaderboard([_write(tmp_path / "records", first, other)], tmp_path / "out", claims=[])
    rows = _tables(result.markdown.read_text(), "digits, 20 epochs")[0]
    assert len(rows) == 2 and {row["Setting"] for row in rows} == {"model.lr=0.001", "model.lr=0.05"}


def _naive_front(points, x_higher, y_higher):
    sx, sy = (1 if x_higher else -1), (1 if y_higher else -1)
    dominated = lambda p, q: sx * q[0] >= sx * p[0] and sy * q[1] >= sy * p[1] and q != p  # noqa: E731
    return [i for i, p in enumerate(points) if not any(dominated(p, q) for q in points)]


def test_pareto_front_small_example():
    points = [(0.9, 0.01), (0.95, 0.005), (0.8, 0.05), (0.85, 0.02), (0.95, 0.004), (0.8, 0.05), (0.7, 0.03)]
    assert pareto_front(points) == [0, 1, 2, 3, 5] == _naive_front(points, True, True)
    assert pareto_front(points, y_higher_better=False) == [4]
    for x_higher, y_higher in itertools.product([True, False], repeat=2):
        assert pareto_front(points, x_higher, y_higher) == _naive_front(points, x_higher, y_higher)
    assert pareto_front([]) == []


def test_pareto_front_matches_naive_on_random_points():
    rng = np.random.default_rng(0)
    for _ in range(50):
        points = [tuple(map(float, p)) for p in rng.integers(0, 5, size=(int(rng.integers(1, 12)), 2))]  # many ties
        for x_higher, y_higher in itertools.product([True, False], repeat=2):
            assert pareto_front(points, x_higher, y_higher) == _naive_front(points, x_higher, y_higher)


def test_an_experiment_named_in_the_config_reaches_the_record_and_names_the_table(tmp_path):
    from helpers import quiet_trainer

    from bench.callbacks import PrivacyEvaluation
    from bench.datamodules import Digits
    from bench.modules import SplitNetwork

    datamodule = Digits(pool_limit=32, batch_size=16)
    evaluation = PrivacyEvaluation(
        attacks=[],
        records_dir=str(tmp_path / "records"),
        leaderboard_dir=str(tmp_path / "board"),
        experiment="digits_smoke",
    )
    quiet_trainer(callbacks=[evaluation]).fit(SplitNetwork(data_spec=datamodule.spec), datamodule)
    record = json.loads(evaluation.last_record_path.read_text())
    assert record["experiment"] == "digits_smoke"
    assert record["method"]["headline_cost"] == []  # what the method declares (nothing, for the plain split network)
    # a few steps leave the model at chance (left out of the tables by default): shown, the row is in the named table
    board = generate_leaderboard([tmp_path / "records"], tmp_path / "board", include_degenerate=True)
    assert "### digits_smoke\n" in board.markdown.read_text()


def test_derived_experiments_on_other_pools_get_their_own_names_and_plots(tmp_path):
    first, second = _fixture("digits-dnn-seed0.json"), _fixture("digits-ran.json")
    second["dataset"]["pool_sizes"]["train"] = 500
    result = generate_leaderboard([_write(tmp_path / "records", first, second)], tmp_path / "out", claims=[])
    headings = [line for line in result.markdown.read_text().splitlines() if line.startswith("### digits")]
    assert headings == ["### digits, 20 epochs · train 1000", "### digits, 20 epochs · train 500"]
    assert result.plots == []  # one row each: no one-point plots (nor one shared: other pools are no siblings)
    third = _fixture("digits-noisy.json")
    third["dataset"]["pool_sizes"]["train"] = 500
    result = generate_leaderboard([_write(tmp_path / "records", third)], tmp_path / "out", claims=[])
    assert [path.name for path in result.plots] == ["feature_release__digits_20_epochs_train_500.png"]


def _dp_seed(seed: int, prefix: str, accuracy: float, attack_accuracy: float) -> dict:
    """One seed (training and data) of a DP-SGD row at epsilon 8: records of several seeds share the row's label."""
    record = _dp(prefix + "0" * 29, 8.0, accuracy, attack_accuracy, 0.1)
    record["method"]["label"] = "DP-SGD (target_epsilon=8.0)"
    record["seed"] = record["dataset"]["seed"] = seed
    return record


def test_seeds_that_drew_other_canaries_into_the_train_pool_are_seeds_of_one_row(tmp_path):
    """Each canary candidate is trained on with probability 1/2, so the train pool's size differs by data seed; the
    design (members, candidates) is what makes records one experiment, not the draw."""
    records = []
    for seed, included in ((0, 260), (1, 239)):
        record = _dp_seed(seed, f"dz{seed}", 0.8 + seed / 100, 0.52)
        record["dataset"]["pool_sizes"]["train"] = 200 + included
        record["dataset"]["canaries"] = {"count": 500, "included": included}
        records.append(record)
    (experiment,) = _experiments_of(_write(tmp_path / "records", *records))
    (row,) = experiment.rows
    assert len(row.runs) == 2
    result = generate_leaderboard([tmp_path / "records"], tmp_path / "out", claims=[])
    assert "canary candidates 500 (each also in the train pool" in result.markdown.read_text()
    assert "train 200," in result.markdown.read_text()


def test_seed_error_bars_of_a_metric_that_never_went_below_zero_stop_at_zero(tmp_path):
    from bench.leaderboard.plots import _point

    records = []
    for seed, epsilon in ((0, 0.0), (1, 0.0), (2, 0.03)):  # mean 0.01, std 0.017: a symmetric bar would reach -0.007
        records.append(_dp_seed(seed, f"de{seed}", 0.8, 0.52 + epsilon))
    (experiment,) = _experiments_of(_write(tmp_path / "records", *records))
    (row,) = experiment.rows
    family = next(f for f in experiment.families if f.metric == "attack_accuracy")
    *_, y, (low, high) = _point(row, experiment.threat_model, family, "accuracy")
    assert high[0] == pytest.approx(0.0173, abs=1e-4) and low[0] == high[0], "above zero: the std both ways"
    for entry in (e for r in records for e in r["privacy"]):
        entry["metrics"]["attack_accuracy"] -= 0.52  # the same spread, now a rate that was 0 for two seeds
    (experiment,) = _experiments_of(_write(tmp_path / "shifted", *records))
    *_, y, (low, high) = _point(experiment.rows[0], experiment.threat_model, family, "accuracy")
    assert y == pytest.approx(0.01) and low[0] == pytest.approx(0.01) and high[0] > low[0]


@pytest.mark.parametrize(
    "canaries", [None, {"count": 500}, {"count": 500, "included": 9999}, {"count": 5, "included": 9}]
)
def test_pool_sizes_without_a_draw_of_canaries_into_the_train_pool_are_the_stated_ones(canaries):
    from bench.records import DatasetInfo

    info = DatasetInfo(name="mnist", pool_sizes={"train": 200}, **({} if canaries is None else {"canaries": canaries}))
    assert info.design_pool_sizes == {"train": 200}


def test_a_claim_compares_numbers_within_the_experiments_both_sides_were_measured_in():
    from bench.claims import Setting, evaluate_claim

    claim = parse_claims("""
paper: Fixture
claims:
  - claim: A is more accurate than B
    paper: "Table 1"
    check: {left: {method: A, value: utility.accuracy}, op: ">", right: {method: B, value: utility.accuracy}}
""").claims[0]

    def setting(method, accuracy, *tables):
        return Setting(method, method, "digits", "", {}, ({"utility": {"accuracy": accuracy}},), "", frozenset(tables))

    def read(record, path):
        return record["utility"]["accuracy"]

    # B was also measured in a second experiment without A: only the shared experiment's B compares with A
    verdict = evaluate_claim(
        claim, [setting("A", 0.9, "one"), setting("B", 0.8, "one"), setting("B", 0.95, "two")], read
    )
    assert verdict.status == "yes" and verdict.ours == "0.900 > 0.800"
    # measured together in two experiments that disagree: partly, each experiment's numbers shown
    verdict = evaluate_claim(
        claim, [setting("A", 0.9, "one", "two"), setting("B", 0.8, "one"), setting("B", 0.95, "two")], read
    )
    assert verdict.status == "partly" and verdict.ours == "0.900 > 0.800; 0.900 vs 0.950"


def _interval_claim(check: str):
    return parse_claims(f"""
paper: Fixture
claims:
  - claim: A leaks less than B
    paper: "Table 1"
    check: {check}
""").claims[0]


def _seed(rate, low=None, high=None):
    return {"rate": rate, "interval": None if low is None else (low, high)}


def _interval_setting(method, *records):
    from bench.claims import Setting

    return Setting(method, method, "digits", "", {}, tuple(records), "", frozenset())


def _read_rate(record, path):
    return record["rate"]


def _read_rate_interval(record, path):
    return record["interval"]


def test_a_claim_whose_intervals_overlap_is_not_significant_and_one_whose_intervals_are_apart_is():
    from bench.claims import evaluate_claim

    claim = _interval_claim(
        '{left: {method: A, value: privacy.x.rate}, op: "<", right: {method: B, value: privacy.x.rate}}'
    )
    # one seed each: the records' own intervals decide (0.999 < 1.0 with overlapping Clopper-Pearson intervals)
    overlap = [_interval_setting("A", _seed(0.999, 0.996, 1.0)), _interval_setting("B", _seed(1.0, 0.998, 1.0))]
    verdict = evaluate_claim(claim, overlap, _read_rate, _read_rate_interval)
    assert verdict.status == "yes" and verdict.significant is False
    assert verdict.status_text == "yes (not significant)"
    assert verdict.ours == "0.999 [0.996, 1.00] < 1.00 [0.998, 1.00] (intervals overlap)"
    apart = [_interval_setting("A", _seed(0.5, 0.45, 0.55)), _interval_setting("B", _seed(0.9, 0.85, 0.95))]
    verdict = evaluate_claim(claim, apart, _read_rate, _read_rate_interval)
    assert verdict.status == "yes" and verdict.significant is True and verdict.status_text == "yes"
    # a clear "no" is significant too; a "no" within the intervals is not
    flipped = [_interval_setting("A", _seed(0.9, 0.85, 0.95)), _interval_setting("B", _seed(0.5, 0.45, 0.55))]
    assert evaluate_claim(claim, flipped, _read_rate, _read_rate_interval).significant is True
    close = [_interval_setting("A", _seed(0.6, 0.4, 0.8)), _interval_setting("B", _seed(0.5, 0.3, 0.7))]
    verdict = evaluate_claim(claim, close, _read_rate, _read_rate_interval)
    assert verdict.status == "no" and verdict.status_text == "no (not significant)"
    # without intervals (an accuracy, or a caller that reads none) nothing is said about significance
    verdict = evaluate_claim(claim, overlap, _read_rate)
    assert verdict.significant is None and verdict.ours == "0.999 < 1.00" and verdict.status_text == "yes"
    one_side = [_interval_setting("A", _seed(0.999, 0.996, 1.0)), _interval_setting("B", _seed(1.0))]
    assert evaluate_claim(claim, one_side, _read_rate, _read_rate_interval).significant is None


def test_a_claims_interval_over_seeds_is_the_t_interval_of_the_mean_and_follows_factor_and_constants():
    from scipy import stats

    from bench.claims import evaluate_claim

    seeds = [0.2, 0.3, 0.4]
    half = stats.t.ppf(0.975, 2) * np.std(seeds, ddof=1) / np.sqrt(3)
    claim = _interval_claim("{left: {method: A, value: privacy.x.rate, factor: -2}, op: '<', right: -0.3}")
    verdict = evaluate_claim(
        claim, [_interval_setting("A", *(_seed(v, 0.0, 1.0) for v in seeds))], _read_rate, _read_rate_interval
    )
    # the seeds' spread, not one record's interval: mean 0.3 +- half, then times -2 (the bounds swap)
    low, high = sorted((-2 * (0.3 + half), -2 * (0.3 - half)))
    assert verdict.ours == f"-2.00×0.300 [{low:#.3g}, {high:#.3g}] < -0.300 (intervals overlap)"
    assert verdict.status == "yes" and verdict.significant is False  # -0.6 < -0.3, but -0.3 lies in the interval
    # a constant outside the interval: the order is established
    far = _interval_claim("{left: {method: A, value: privacy.x.rate}, op: '<', right: 0.9}")
    verdict = evaluate_claim(far, [_interval_setting("A", *(_seed(v) for v in seeds))], _read_rate, _read_rate_interval)
    assert verdict.significant is True


@pytest.mark.parametrize("settings, methods", [(13, 1), (25, 1), (6, 3), (4, 2)])
def test_every_plotted_setting_has_its_own_style(settings, methods):
    """No two rows of a plot share colour, marker and fill (13 settings of one method once shared two markers)."""
    from bench.leaderboard.plots import plot_styles

    method_of = {f"M{m} setting {k}": f"M{m}" for m in range(methods) for k in range(settings)}
    styles = plot_styles(list(method_of), method_of)
    assert len(
        {(tuple(c), marker, face if isinstance(face, str) else tuple(face)) for c, marker, face in styles.values()}
    ) == len(method_of)


def test_record_text_is_shown_on_the_page_never_run_as_html(tmp_path):
    record = _fixture("digits-dnn-seed0.json")
    record["method"]["label"] = "<img src=x onerror=alert(1)>DNN"
    record["experiment"] = "<script>alert(2)</script> `x` [y](javascript:z)"
    generate_leaderboard([_write(tmp_path / "records", record)], tmp_path / "board", claims=[])
    page = (tmp_path / "board" / "README.md").read_text()
    markup = re.sub(r"`[^`\n]*`", "", page)  # in a code span, '<' is shown as it is
    assert "<img" not in markup and "<script" not in markup, page
    assert "&lt;img src=x onerror=alert(1)>DNN" in markup and "### &lt;script>alert(2)&lt;/script>" in markup
    # a backtick in a name cannot end the code span it is shown in and let the rest be markup
    assert "Experiment `<script>alert(2)</script> 'x' [y](javascript:z)`, as the records name it" in page


def _generate_into(records: Path, out: Path) -> None:
    generate_leaderboard([records], out, claims=[])


def test_concurrent_generations_into_one_folder_leave_a_consistent_page(tmp_path):
    """Two `bench leaderboard` runs with different records into one folder: whichever finishes last, its page is
    whole and every plot it links exists (they used to delete each other's plots)."""
    import multiprocessing

    digits = _write(tmp_path / "digits", *(_fixture(name) for name in ("digits-dnn-seed0.json", "digits-noisy.json")))
    mia = _write(tmp_path / "mia", *(_fixture(name) for name in ("mia-none-seed0.json", "mia-dpsgd.json")))
    out = tmp_path / "board"
    context = multiprocessing.get_context("fork")
    for _ in range(2):
        workers = [context.Process(target=_generate_into, args=(records, out)) for records in (digits, mia, digits)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(120)
        assert [worker.exitcode for worker in workers] == [0, 0, 0]
        page = (out / "README.md").read_text()
        linked = set(re.findall(r"\]\(plots/([^)]+\.png)\)", page))
        assert linked and linked == {plot.name for plot in (out / "plots").glob("*.png")}, page
        assert not list(out.rglob("*.tmp"))


def _hold_folder(folder: Path, holding, release) -> None:
    import fcntl

    handle = os.open(folder, os.O_RDONLY)
    fcntl.flock(handle, fcntl.LOCK_EX)  # as a generation in the middle of writing holds it
    holding.set()
    release.wait(60)
    os.close(handle)


def test_a_generation_waits_while_another_writes_the_folder(tmp_path):
    """The folder is written by one generation at a time: one started while the folder is held writes nothing."""
    import multiprocessing
    import time

    out = tmp_path / "board"
    out.mkdir()
    context = multiprocessing.get_context("fork")
    holding, release = context.Event(), context.Event()
    # the lock is held by a process of its own: a forked worker would inherit (and so hold) a lock taken here
    holder = context.Process(target=_hold_folder, args=(out, holding, release))
    holder.start()
    assert holding.wait(60)
    worker = context.Process(target=_generate_into, args=(RECORDS, out))
    worker.start()
    try:
        time.sleep(3)  # long enough to have written the page, had it not waited
        assert worker.is_alive() and not (out / "README.md").exists() and not list((out / "plots").glob("*.png"))
    finally:
        release.set()
        holder.join(60)
    worker.join(120)
    assert worker.exitcode == 0 and (out / "README.md").is_file()


def test_headline_adds_the_worst_canary_tpr_at_low_fpr_and_audit_bound_over_every_adversary(tmp_path):
    records = [_fixture(name) for name in ("mia-none-seed0.json", "mia-pruning.json")]
    canary = {  # (attack -> canary TPR at 0.1% FPR, audit epsilon): the worst cases come from different attacks
        "loss_threshold": (0.30, 0.8),
        "lira": (0.10, 1.6),
    }
    for record in records:
        for entry in record["privacy"]:
            if entry["attack"] in canary and entry.get("role", "adversary") != "diagnostic":
                tpr, epsilon = canary[entry["attack"]]
                entry["metrics"].update({"canary_tpr_at_0.1pct_fpr": tpr, "canary_audit_epsilon": epsilon})
                entry["directions"].update({"canary_tpr_at_0.1pct_fpr": "lower", "canary_audit_epsilon": "lower"})
                entry["details"] = {
                    **(entry.get("details") or {}),
                    "intervals": {"canary_tpr_at_0.1pct_fpr": [0.2, 0.4]},
                }
    result = generate_leaderboard([_write(tmp_path / "records", *records)], tmp_path / "out", claims=[])
    rows = _headline(result.markdown.read_text(), "fixture_mia")
    row = rows["MCMIA (defense=pruning)"]
    tpr_cell, audit_cell = row["Worst-case canary_tpr_at_0.1pct_fpr ↓"], row["Worst-case canary_audit_epsilon ↓"]
    assert "0.300 [0.200, 0.400]" in tpr_cell and tpr_cell.endswith("loss_threshold")  # with the record's interval
    assert "1.60" in audit_cell and audit_cell.endswith("lira")
    assert "Worst-case attack_accuracy ↓" in row  # the population metric stays


# ---------------------------------------------------------------------------- presentation: plots and references
def _experiments_of(folder: Path) -> list:
    from bench.leaderboard import _experiments, _ranked_runs
    from bench.records import load_records

    runs, _ = _ranked_runs(load_records([folder]), False, [])
    return _experiments(runs)


def _black_box(name: str, record_id: str, accuracy: float, attack_accuracy: float, epochs: int, **hparams) -> dict:
    """A fixture black-box record without an experiment name: ``accuracy``, every attack at ``attack_accuracy``."""
    record = _fixture(name)
    record.pop("experiment")
    record["record_id"] = record_id
    record["config"]["trainer"]["max_epochs"] = record["training"]["epochs"] = epochs
    record["method"]["hparams"] = {**record["method"]["hparams"], **hparams}
    record["method"]["label"] = record["method"]["label"].split(" (")[0] + f" ({record_id[:3]})"
    record["utility"]["accuracy"] = accuracy
    for entry in record["privacy"]:
        entry["metrics"]["attack_accuracy"] = attack_accuracy
        entry["details"] = {}  # the fixture's interval was around its own value
    return record


def _dp(record_id: str, epsilon: float, accuracy: float, attack_accuracy: float, lr: float) -> dict:
    record = _black_box("mia-dpsgd.json", record_id, accuracy, attack_accuracy, 30, target_epsilon=epsilon, lr=lr)
    record["cost"]["dp_epsilon"] = epsilon
    return record


def _dp_frontier_records(folder: Path) -> Path:
    """Three DP-SGD runs trained by their own recipe (30 epochs: their own experiment) on the defenses' data: the
    frontier is the most accurate per epsilon; (0.9, 0.58) at epsilon 4 dominates (0.85, 0.60), not (0.95, 0.56)."""
    return _write(
        folder,
        _dp("dp1" + "0" * 29, 1.0, 0.70, 0.52, 0.1),
        _dp("dp2" + "0" * 29, 1.0, 0.75, 0.55, 0.5),
        _dp("dp3" + "0" * 29, 4.0, 0.90, 0.58, 0.5),
        _black_box("mia-none-seed0.json", "dfa" + "0" * 29, 0.85, 0.60, 50),
        _black_box("mia-pruning.json", "dfb" + "0" * 29, 0.95, 0.56, 50),
    )


def test_every_black_box_table_marks_each_defense_dominated_by_the_dp_sgd_frontier_of_another_experiment(tmp_path):
    records = _dp_frontier_records(tmp_path / "records")
    result = generate_leaderboard([records], tmp_path / "out", claims=[])
    rows = _headline(result.markdown.read_text(), "mnist, 50 epochs, batch 32")
    assert rows["MCMIA (dfa)"]["Dominated by DP-SGD"] == "yes"
    assert rows["MCMIA (dfb)"]["Dominated by DP-SGD"] == "no"
    lines = {line["method"]: line for line in csv.DictReader(result.csv.open())}
    assert (lines["MCMIA (dfa)"]["dominated_by_dpsgd"], lines["MCMIA (dfb)"]["dominated_by_dpsgd"]) == ("yes", "no")
    assert lines["DP-SGD (dp1)"]["dominated_by_dpsgd"] == ""  # the reference is not judged against itself
    assert {path.name for path in result.plots} == {
        "black_box_outputs__mnist_50_epochs_batch_32.png",  # the defenses, with the frontier drawn
        "black_box_outputs__mnist_30_epochs_batch_32.png",  # the DP-SGD runs themselves
    }


def test_paper_numbers_are_shown_only_on_rows_at_the_papers_operating_point(tmp_path):
    """The paper reports DP-SGD's accuracy at epsilon 6.28: a row at epsilon 1 shows its epsilon beside the paper's,
    never its accuracy beside the paper's accuracy at another epsilon."""
    records = []
    for record_id, epsilon, accuracy in (("dq1", 1.0, 0.5), ("dq6", 6.3, 0.6)):
        record = _dp(record_id + "0" * 29, epsilon, accuracy, 0.52, 0.1)
        record["paper"] = {"accuracy": 0.966, "dp_epsilon": 6.28, "source": "MCMIA Table I"}
        records.append(record)
    result = generate_leaderboard([_write(tmp_path / "records", *records)], tmp_path / "out", claims=[])
    rows = _headline(result.markdown.read_text(), "mnist, 30 epochs, batch 32")
    far, near = rows["DP-SGD (dq1)"], rows["DP-SGD (dq6)"]
    assert (far["Accuracy"], far["dp_epsilon"]) == ("0.500", "1.00 (paper 6.28)")
    assert (near["Accuracy"], near["dp_epsilon"]) == ("**0.600** (paper 0.966)", "6.30 (paper 6.28)")


def test_the_dp_sgd_frontier_is_the_most_accurate_row_per_epsilon_drawn_on_the_defenses_plot(tmp_path):
    from bench.leaderboard.dpsgd import dominated_by_dpsgd, frontier_rows, reference_rows
    from bench.leaderboard.plots import _panels

    experiments = _experiments_of(_dp_frontier_records(tmp_path / "records"))
    defenses = next(e for e in experiments if e.name == "mnist, 50 epochs, batch 32")
    references = reference_rows(defenses, experiments)
    assert sorted(row.label for row in references) == ["DP-SGD (dp1)", "DP-SGD (dp2)", "DP-SGD (dp3)"]
    assert [(epsilon, row.label) for epsilon, row in frontier_rows(references, "accuracy")] == [
        (1.0, "DP-SGD (dp2)"),  # at epsilon 1 the more accurate of the two
        (4.0, "DP-SGD (dp3)"),
    ]
    verdicts = dominated_by_dpsgd(defenses, references)
    _, (panel,) = _panels([defenses], references, [verdicts])
    assert panel.frontier == [(0.75, 0.55, 1.0), (0.90, 0.58, 4.0)]  # (accuracy, worst case, epsilon)
    assert {p.row.label: p.dominated for p in panel.points} == {"MCMIA (dfa)": True, "MCMIA (dfb)": False}
    # other data (pools) is no reference: its members are other records
    other = _dp("dp4" + "0" * 29, 8.0, 0.99, 0.50, 0.5)
    other["dataset"]["pool_sizes"]["train"] = 100
    experiments = _experiments_of(_write(tmp_path / "records", other))
    defenses = next(e for e in experiments if e.name == "mnist, 50 epochs, batch 32")
    assert "DP-SGD (dp4)" not in {row.label for row in reference_rows(defenses, experiments)}


def test_chance_and_cap_lines_where_a_metric_has_one():
    from bench.leaderboard.plots import reference_lines
    from bench.leaderboard.records import _chances, _Entry

    assert reference_lines("attack_accuracy") == [(0.5, "chance (0.5)")]
    assert reference_lines("canary_auc") == [(0.5, "chance (0.5)")]
    assert reference_lines("canary_tpr_at_0.1pct_fpr") == [(0.001, "chance: TPR = FPR (0.00100)")]
    assert reference_lines("tpr_at_1pct_fpr")[0][0] == pytest.approx(0.01)
    assert reference_lines("ssim") == [(1.0, "cap: identical images (1)")]
    assert reference_lines("canary_audit_epsilon")[0][0] == 0.0
    assert reference_lines("psnr") == [] and reference_lines("psnr_max") == []  # no chance level, no cap
    # an identification rate's chance is the record's own: 1 / gallery size
    details = {"identification": {"pixel": {"rate": 0.9, "chance": 1 / 1008}, "features": {"chance": 1 / 1008}}}
    assert _chances(details) == {"identification_rate": 1 / 1008, "identification_rate_features": 1 / 1008}
    entry = _Entry("a", "feature_release", "adversary", {}, {}, None, {}, None, {}, chances=_chances(details))
    assert reference_lines("identification_rate", [entry]) == [(1 / 1008, "chance (9.92e-04: 1 / gallery)")]
    assert reference_lines("identification_rate") == []  # not stated: no line


def test_experiments_that_differ_only_in_attack_settings_share_one_plot_with_a_legend_per_setting(tmp_path):
    from bench.leaderboard.plots import _combined_styles, _panels

    base = _fixture("digits-dnn-seed0.json")
    ran = _fixture("digits-ran.json")
    upsampling = {"decoder": "upsampling", "epochs": 40}
    records = _write(
        tmp_path / "records",
        _attacked(base, "b" * 32, feature_inversion=upsampling),
        _attacked(ran, "c" * 32, feature_inversion={"decoder": "mirror", "epochs": 40}),
        _attacked(
            {**ran, "method": {**ran["method"], "label": "RAN (lam=0.9)"}}, "d" * 32, feature_inversion=upsampling
        ),
    )
    result = generate_leaderboard([records], tmp_path / "out", claims=[])
    text = result.markdown.read_text()
    assert [path.name for path in result.plots] == ["feature_release__digits_20_epochs__attack_settings.png"]
    assert text.count("](plots/feature_release__digits_20_epochs__attack_settings.png)") == 2  # shown, then linked
    assert text.count("![") == 1
    # the single-row experiment (decoder=mirror) has no plot of its own: it is folded into the shared one
    experiments = [e for e in _experiments_of(records) if e.threat_model == "feature_release"]
    assert len(experiments) == 2 and len({e.siblings_key for e in experiments}) == 1
    _, panels = _panels(experiments, [], [{}, {}])
    _, handles = _combined_styles(experiments, panels)
    assert [h.get_label() for h in handles] == [
        "DNN",
        "RAN (lam)",
        "attacks: feature_inversion (decoder=mirror)",
        "attacks: feature_inversion (decoder=upsampling)",
    ]


# ---------------------------------------------------------------------------- significance of a ranking
def _seeded(defense: str, seed: int, attack_accuracy: float, interval: tuple | None = None) -> dict:
    """One seed of ``defense`` in the black-box experiment `fixture_sig`, every attack at ``attack_accuracy``."""
    record = _fixture("mia-none-seed0.json")
    record["experiment"] = "fixture_sig"
    record["record_id"] = f"{defense[:4]:x<4}{seed:028d}"
    record["seed"] = record["dataset"]["seed"] = seed
    record["method"]["hparams"] = {"defense": defense}
    record["method"]["label"] = f"Defense {defense}"
    for entry in record["privacy"]:
        entry["metrics"]["attack_accuracy"] = attack_accuracy
        entry["details"] = {"intervals": {"attack_accuracy": list(interval)}} if interval else {}
    return record


def _ranking(tmp_path: Path, *records: dict) -> list[str]:
    result = generate_leaderboard([_write(tmp_path / "records", *records)], tmp_path / "out", claims=[])
    section = result.markdown.read_text().split("### fixture_sig\n", 1)[1]
    return [line for line in section.splitlines() if re.match(r"\d+\. |Ranking by", line)]


def test_a_ranking_is_significant_when_a_paired_test_over_matched_seeds_says_so(tmp_path):
    base = [0.60, 0.70, 0.65]  # seeds vary a lot (intervals overlap); the difference barely does
    gap = [0.010, 0.012, 0.011]
    records = [_seeded("a", s, v) for s, v in enumerate(base)]
    records += [_seeded("b", s, v + d) for s, (v, d) in enumerate(zip(base, gap))]
    ranking = _ranking(tmp_path, *records)
    assert ranking[0] == "1. Defense a: 0.650"
    assert ranking[1].startswith("2. Defense b: 0.661, significant (p=")
    assert "3 seeds; intervals overlap)" in ranking[1]
    p_value = float(re.search(r"p=([0-9.e-]+)", ranking[1]).group(1))
    from scipy import stats

    expected = stats.ttest_rel(base, [v + d for v, d in zip(base, gap)]).pvalue
    assert p_value == pytest.approx(expected, rel=0.05) and p_value < 0.05


def test_a_ranking_within_the_noise_is_not_significant(tmp_path):
    records = [_seeded("a", s, v) for s, v in enumerate([0.60, 0.70, 0.65])]
    records += [_seeded("b", s, v) for s, v in enumerate([0.66, 0.64, 0.67])]
    ranking = _ranking(tmp_path, *records)
    assert ranking[0] == "1. Defense a: 0.650"
    assert ranking[1].startswith("2. Defense b: 0.657, n.s. (p=") and ranking[1].endswith("intervals overlap)")


def test_unmatched_seeds_fall_back_on_the_intervals(tmp_path):
    # one seed each, other seeds: no paired test; the records' intervals decide
    apart = _ranking(tmp_path / "apart", _seeded("a", 0, 0.55, (0.52, 0.58)), _seeded("b", 1, 0.65, (0.62, 0.68)))
    assert apart[1] == "2. Defense b: 0.650, significant (intervals apart)"
    overlap = _ranking(tmp_path / "overlap", _seeded("a", 0, 0.55, (0.50, 0.63)), _seeded("b", 1, 0.60, (0.56, 0.64)))
    assert overlap[1] == "2. Defense b: 0.600, n.s. (intervals overlap)"
    untestable = _ranking(tmp_path / "none", _seeded("a", 0, 0.55), _seeded("b", 1, 0.60))
    assert untestable == [
        "Ranking by worst-case attack_accuracy ↓: not significant (no step can be tested: under two matched seeds, "
        "and a row without an interval)."
    ]


def test_a_panel_whose_rows_all_share_one_value_shows_a_readable_band_not_a_1e_17_zoom():
    from matplotlib.figure import Figure

    from bench.leaderboard.experiments import _Family
    from bench.leaderboard.plots import _draw_reference_lines, _Panel

    family = _Family("canary_audit_epsilon", "lower", False)
    for value in (0.0, 2.5):
        axes = Figure().add_subplot()
        frontier = [(0.5, value, 1.0), (0.7, value, 2.0), (0.8, value, 8.0)]
        axes.plot([0.5, 0.7, 0.8], [value] * 3)
        _draw_reference_lines(axes, _Panel(family, [], frontier, [(0.0, "no measured leakage")]))
        low, high = axes.get_ylim()
        assert low < value < high and high - low >= 0.2 - 1e-12


def test_a_single_defense_is_plotted_only_against_a_dp_sgd_frontier(tmp_path):
    alone = _black_box("mia-none-seed0.json", "dfc" + "0" * 29, 0.85, 0.60, 40)
    result = generate_leaderboard([_write(tmp_path / "alone", alone)], tmp_path / "out", claims=[])
    assert result.plots == []  # one point: the table only
    records = _write(tmp_path / "with_dp", alone, _dp("dp1" + "0" * 29, 1.0, 0.70, 0.52, 0.1))
    result = generate_leaderboard([records], tmp_path / "out2", claims=[])
    # the defense against the DP-SGD point; the DP-SGD run alone is one point again
    assert [path.name for path in result.plots] == ["black_box_outputs__mnist_40_epochs_batch_32.png"]
