"""ATS's scores (vectorized == loop), Algorithm 1, and the search entry point writing a policy file."""

from __future__ import annotations

import json

import pytest
import torch

from bench.ats import accuracy_score, accuracy_score_loop, privacy_score, privacy_score_loop
from bench.ats.scores import _score_from_jacobians, interpolation_points
from bench.ats.search import SearchResult, Scored, main, search
from bench.datamodules.base import DataSpec
from bench.networks.ats import build_ats_network
from bench.transforms import load_policy, parse_policy

SPEC = DataSpec("tiny", (1, 8, 8), 10, (0.5,), (0.25,))


def _model(name="convnet", width=4, seed=0):
    torch.manual_seed(seed)
    return build_ats_network(name, SPEC, width).double().eval()


def _data(count, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(count, 1, 8, 8, generator=generator, dtype=torch.float64), torch.randint(10, (count,), generator=generator)


@pytest.mark.parametrize("network", ["convnet", "resnet20"])
@pytest.mark.parametrize("policy", [None, "3-1-7+43-18-18"])
def test_vectorized_privacy_score_equals_the_loop(network, policy):
    model, (images, labels) = _model(network), _data(5)
    policy = parse_policy(policy) if policy else None
    vectorized = privacy_score(model, policy, images, labels, points=4, generator=torch.Generator().manual_seed(1), chunk=7)
    loop = privacy_score_loop(model, policy, images, labels, points=4, generator=torch.Generator().manual_seed(1))
    assert abs(vectorized.item() - loop.item()) < 1e-5
    assert -1 <= vectorized.item() <= 1


@pytest.mark.parametrize("policy", [None, "15-43"])
def test_vectorized_accuracy_score_equals_the_loop(policy):
    model, (images, _) = _model(), _data(12)
    policy = parse_policy(policy) if policy else None
    batches = images.view(2, 6, 1, 8, 8)
    vectorized = accuracy_score(model, policy, batches, torch.Generator().manual_seed(2))
    loop = accuracy_score_loop(model, policy, batches, torch.Generator().manual_seed(2))
    assert abs(vectorized.item() - loop.item()) < 1e-5


def test_interpolation_runs_from_the_start_to_the_target():
    starts, targets = torch.zeros(2, 1, 2, 2), torch.ones(2, 1, 2, 2)
    path = interpolation_points(starts, targets, 4)
    assert path.shape == (2, 4, 1, 2, 2)
    torch.testing.assert_close(path[0, :, 0, 0, 0], torch.tensor([0.0, 0.25, 0.5, 0.75]))


def test_accuracy_score_is_eq_10_with_its_sign():
    # orthogonal centred rows: the correlation matrix is the identity, every eigenvalue 1
    rows = torch.tensor([[1.0, -1.0, 0.0, 0.0], [0.0, 0.0, 1.0, -1.0]]).unsqueeze(0)
    expected = -(torch.log(torch.tensor(1 + 1e-5)) + 1 / (1 + 1e-5))
    assert _score_from_jacobians(rows).item() == pytest.approx(expected.item())
    # a repeated row: a zero eigenvalue, which the score punishes hard
    assert _score_from_jacobians(torch.cat([rows, rows], 1)).item() < -1e4


def test_algorithm_1_keeps_the_n_lowest_privacy_scores_above_the_threshold():
    privacy_model, accuracy_model = _model(seed=0), _model(seed=1)
    (images, labels), (batch, _) = _data(4), _data(16, seed=3)
    result = search(privacy_model, accuracy_model, images, labels, batch.view(2, 8, 1, 8, 8), c_max=12, n=3, t_acc=-3.0,
                    points=3, generator=torch.Generator().manual_seed(0))
    passed = [e for e in result.evaluated if e.s_acc >= -3.0]
    assert len(result.evaluated) == 12 and all(e.s_pri is None for e in result.evaluated if e.s_acc < -3.0)
    assert len(passed) >= 3
    best = sorted(passed, key=lambda e: e.s_pri)[:3]
    assert [str(e.policy) for e in result.selected] == [str(e.policy) for e in best]


def test_the_hybrid_takes_the_best_policies_without_a_common_transformation():
    entries = [Scored(parse_policy(p), -1.0, s) for p, s in [("3-1-7", 0.1), ("7-2", 0.2), ("43-18-18", 0.3), ("5", 0.4)]]
    assert str(SearchResult(entries, entries, 1.0).hybrid(2)) == "3-1-7+43-18-18"
    assert str(SearchResult(entries, entries, 1.0).hybrid(3)) == "3-1-7+43-18-18+5"


@pytest.mark.slow
def test_the_entry_point_prints_progress_and_writes_a_policy_file_a_config_can_load(tmp_path, capsys):
    output = tmp_path / "policy.json"
    main(["--data", "Digits", "--pool_limit", "200", "--width", "4", "--c_max", "6", "--n", "2", "--images", "4",
          "--points", "3", "--rounds", "2", "--batch_size", "16", "--semi_epochs", "2", "--t_acc", "-1000",
          "--output", str(output)])
    printed = capsys.readouterr().out
    assert "ats search [6/6]" in printed and "policies/minute" in printed
    content = json.loads(output.read_text())
    assert len(content["policies"]) == 2 and content["settings"]["c_max"] == 6
    assert load_policy(str(output)) == parse_policy(content["policy"])
