"""The leaderboard, on hand-written records (tests/fixtures/records).

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

from bench.leaderboard import generate_leaderboard, pareto_front

FIXTURES = Path(__file__).parent / "fixtures"
RECORDS = FIXTURES / "records"
GOLDEN = FIXTURES / "leaderboard_golden.md"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def board(tmp_path_factory):
    out = tmp_path_factory.mktemp("leaderboard")
    return generate_leaderboard([RECORDS], out), out


def _table(markdown: str, heading: str) -> list[dict[str, str]]:
    """The rows of the table under ``## heading``, as {column header: cell}."""
    section = markdown.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("|")]
    split = lambda line: [cell.strip() for cell in re.split(r"(?<!\\)\|", line)[1:-1]]  # noqa: E731
    headers = split(lines[0])
    return [dict(zip(headers, split(line))) for line in lines[2:]]


def _fixture(name: str) -> dict:
    return json.loads((RECORDS / name).read_text())


def test_golden_readme(board):
    result, _ = board
    text = result.markdown.read_text()
    if os.environ.get("BENCH_UPDATE_GOLDEN") == "1":
        GOLDEN.write_text(text)
    assert text == GOLDEN.read_text(), "README changed; if intended, regenerate with BENCH_UPDATE_GOLDEN=1"


def test_best_value_per_column_is_bold_and_follows_direction(board):
    result, _ = board
    rows = {row["Method"]: row for row in _table(result.markdown.read_text(), "feature_release / digits")}
    bold = {method: {column for column, cell in row.items() if cell.startswith("**")} for method, row in rows.items()}
    # accuracy: higher wins; mse/mae "higher" = more private; psnr/ssim "lower" = more private; cost lower wins (ties all bold)
    assert bold["DNN"] == {"Accuracy", "Params"}
    assert bold["RAN (lam=0.5)"] == {"feature_inversion: mse", "feature_inversion: psnr", "Released B/sample"}
    assert bold["Noisy (noise=0.5)"] == {"feature_inversion: mae", "feature_inversion: ssim", "Params"}
    # a table with a single row marks nothing
    assert not any("**" in cell for row in _table(result.markdown.read_text(), "feature_release / mnist") for cell in row.values())


def test_two_seed_row_is_mean_and_sample_std(board):
    result, _ = board
    seeds = [_fixture("digits-dnn-seed0.json"), _fixture("digits-dnn-seed1.json")]
    dnn = next(row for row in _table(result.markdown.read_text(), "feature_release / digits") if row["Method"] == "DNN")
    assert dnn["Seeds"] == "2"
    accuracy = [r["utility"]["accuracy"] for r in seeds]
    assert dnn["Accuracy"] == f"**{np.mean(accuracy):.3f} ± {np.std(accuracy, ddof=1):.3f}** (paper 0.990)"
    psnr = [r["privacy"][0]["metrics"]["psnr"] for r in seeds]
    assert dnn["feature_inversion: psnr"] == f"{np.mean(psnr):.1f} ± {np.std(psnr, ddof=1):.1f}"
    with result.csv.open() as stream:
        line = next(r for r in csv.DictReader(stream) if r["method"] == "DNN" and r["dataset"] == "digits")
    assert float(line["accuracy_mean"]) == pytest.approx(np.mean(accuracy))
    assert float(line["accuracy_std"]) == pytest.approx(np.std(accuracy, ddof=1))
    assert float(line["feature_inversion.psnr_std"]) == pytest.approx(np.std(psnr, ddof=1))


def test_paper_value_and_source(board):
    result, _ = board
    text = result.markdown.read_text()
    assert "0.0130 ± 0.0014 (paper 0.0110)" in text
    assert "Example et al. 2019, Table 2 (test fixture)" in text


def test_csv_rows_and_columns(board):
    result, _ = board
    with result.csv.open() as stream:
        reader = csv.DictReader(stream)
        lines = list(reader)
    assert result.rows == len(lines) == 5  # digits: DNN, Noisy, RAN; mnist: DNN; utility only: Linear
    metrics = [f"feature_inversion.{m}_{s}" for m in ("mae", "mse", "psnr", "ssim") for s in ("mean", "std")]
    assert reader.fieldnames == ["threat_model", "dataset", "method", "network", "epochs", "max_steps", "seeds",
                                 "accuracy_mean", "accuracy_std", *metrics, "released_bytes_per_sample", "parameters",
                                 "attack_setting"]
    linear = next(line for line in lines if line["method"] == "Linear")
    assert (linear["threat_model"], linear["epochs"], linear["max_steps"], linear["feature_inversion.mse_mean"]) == ("", "", "500", "")


def test_plots_are_pngs_and_embedded(board):
    result, out = board
    names = sorted(path.name for path in result.plots)
    assert names == ["feature_release__digits__feature_inversion.png", "feature_release__mnist__feature_inversion.png"]
    text = result.markdown.read_text()
    for path in result.plots:
        assert path.parent == out / "plots"
        assert path.read_bytes()[:8] == PNG_MAGIC
        assert f"](plots/{path.name})" in text


def test_malformed_record_is_reported_not_fatal(board):
    result, _ = board
    assert [(path.name, reason) for path, reason in result.problems] == [("malformed-missing-utility.json", "missing key 'utility'")]
    text = result.markdown.read_text()
    assert "## Skipped records" in text and "malformed-missing-utility.json`: missing key 'utility'" in text
    assert "Broken" not in text


def test_zero_records(tmp_path):
    empty = tmp_path / "records"
    empty.mkdir()
    result = generate_leaderboard([empty], tmp_path / "new" / "board", title="empty board")
    text = result.markdown.read_text()
    assert text.startswith("# empty board\n")
    assert "No records yet" in text and "`bench fit`" in text
    assert (result.rows, result.plots, result.problems) == (0, [], [])
    assert result.csv.read_text().startswith("threat_model,dataset,method")
    assert not [p for p in result.markdown.parent.iterdir() if p.name.endswith(".tmp")]


def test_output_is_deterministic(tmp_path):
    first = generate_leaderboard([RECORDS], tmp_path / "a")
    second = generate_leaderboard([RECORDS], tmp_path / "b")
    assert first.markdown.read_bytes() == second.markdown.read_bytes()
    assert first.csv.read_bytes() == second.csv.read_bytes()


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


def test_records_attacked_differently_are_not_averaged(tmp_path):
    first, second = _fixture("digits-dnn-seed0.json"), _fixture("digits-dnn-seed1.json")
    second["privacy"][0]["config"] = {**second["privacy"][0]["config"], "epochs": 2}
    for record in (first, second):
        (tmp_path / f"{record['record_id']}.json").write_text(json.dumps(record))
    result = generate_leaderboard([tmp_path], tmp_path / "out")
    rows = _table(result.markdown.read_text(), "feature_release / digits")
    assert len(rows) == 2 and all(row["Seeds"] == "1" for row in rows)
    # the column names only what differs
    assert sorted(row["Setting"] for row in rows) == ["feature_inversion.epochs=2", "feature_inversion.epochs=30"]


def test_a_re_evaluated_seed_is_counted_once_and_the_newest_wins(tmp_path):
    first = _fixture("digits-dnn-seed0.json")
    again = {**first, "record_id": "f" * 32, "created": "2099-01-01T00:00:00+00:00", "utility": {"accuracy": 0.5}}
    for record in (first, again):
        (tmp_path / f"{record['record_id']}.json").write_text(json.dumps(record))
    rows = _table(generate_leaderboard([tmp_path], tmp_path / "out").markdown.read_text(), "feature_release / digits")
    assert len(rows) == 1 and rows[0]["Seeds"] == "1" and rows[0]["Accuracy"] == "0.500"


def test_different_hyper_parameters_are_different_rows(tmp_path):
    first = _fixture("digits-dnn-seed0.json")
    first["method"]["hparams"]["lr"] = 0.001
    other = json.loads(json.dumps(first))
    other["record_id"], other["seed"] = "e" * 32, 5
    other["method"]["hparams"]["lr"] = 0.05
    for record in (first, other):
        (tmp_path / f"{record['record_id']}.json").write_text(json.dumps(record))
    rows = _table(generate_leaderboard([tmp_path], tmp_path / "out").markdown.read_text(), "feature_release / digits")
    assert len(rows) == 2 and {row["Setting"] for row in rows} == {"model.lr=0.001", "model.lr=0.05"}


def test_compression_and_dp_columns_appear_only_where_a_record_fills_them(tmp_path):
    dense = _fixture("digits-dnn-seed0.json")
    rows = _table(generate_leaderboard([RECORDS], tmp_path / "plain").markdown.read_text(), "feature_release / digits")
    assert "Compression (x)" not in rows[0] and "DP epsilon" not in rows[0]
    pruned = json.loads(json.dumps(dense))
    pruned["record_id"], pruned["method"]["hparams"]["lr"] = "d" * 32, 0.05
    pruned["cost"].update(nonzero_parameters=1234, compression_ratio=12345 / 1234, dp_epsilon=3.0)
    for record in (dense, pruned):
        (tmp_path / f"{record['record_id']}.json").write_text(json.dumps(record))
    rows = _table(generate_leaderboard([tmp_path], tmp_path / "out").markdown.read_text(), "feature_release / digits")
    by_lr = {row["Setting"]: row for row in rows}
    pruned_row = {key: value.strip("*") for key, value in by_lr["model.lr=0.05"].items()}
    assert pruned_row["Compression (x)"] == "10.0" and pruned_row["DP epsilon"] == "3.00"
    (dense_row,) = [row for key, row in by_lr.items() if key != "model.lr=0.05"]
    assert dense_row["DP epsilon"] == "–"
