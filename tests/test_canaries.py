"""Canaries and the one-run audit (issue 23): the bound's validity, its power, and an attacker blind to inclusion."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from opacus.accountants import RDPAccountant
from scipy import stats

from bench.datamodules.canaries import check_canary_request, draw_canaries
from bench.errors import BenchError
from bench.metrics.membership import (
    canary_report,
    one_run_audit,
    one_run_audit_epsilon,
    one_run_audit_p_value,
)


def _reference_p_value(m: int, r: int, v: int, eps: float, delta: float) -> float:
    """Steinke, Nasr and Jagielski's published p-value, loop for loop (the paper's reference code)."""
    q = 1 / (1 + math.exp(-eps))
    beta = stats.binom.sf(v - 1, r, q)
    alpha, total = 0.0, 0.0
    for i in range(1, v + 1):
        total += stats.binom.pmf(v - i, r, q)
        alpha = max(alpha, total / i)
    return min(beta + alpha * delta * 2 * m, 1.0)


@pytest.mark.parametrize(
    "m, r, v, eps, delta", [(1000, 100, 90, 1.0, 1e-5), (500, 20, 20, 3.0, 0.0), (100, 10, 7, 0.5, 1e-3)]
)
def test_p_value_is_the_papers(m, r, v, eps, delta):
    assert one_run_audit_p_value(m, r, v, eps, delta) == pytest.approx(_reference_p_value(m, r, v, eps, delta))


def test_epsilon_bound_is_the_boundary_of_rejection_and_grows_with_right_guesses():
    bounds = [one_run_audit_epsilon(1000, 100, v, 1e-5) for v in (50, 70, 90, 100)]
    assert bounds[0] == 0.0 and all(a < b for a, b in zip(bounds[1:], bounds[2:])) and bounds[1] > 0
    eps = bounds[2]
    assert (
        one_run_audit_p_value(1000, 100, 90, eps, 1e-5) <= 0.05 < one_run_audit_p_value(1000, 100, 90, eps + 1e-3, 1e-5)
    )


def test_bound_is_zero_on_scores_independent_of_inclusion_in_at_least_95_percent_of_seeds():
    positives = 0
    for seed in range(100):
        rng = np.random.default_rng(seed)
        inclusion = rng.random(200) < 0.5
        positives += one_run_audit(rng.normal(size=200), inclusion, delta=1e-5)["epsilon"] > 0
    assert positives <= 5


def test_the_default_k_selection_is_the_conservative_one_and_the_uncorrected_best_k_is_not_a_95_percent_bound():
    corrected = uncorrected = 0
    for seed in range(100):
        rng = np.random.default_rng(seed)
        inclusion, scores = rng.random(200) < 0.5, rng.normal(size=200)
        default = one_run_audit(scores, inclusion, delta=1e-5)
        best = one_run_audit(scores, inclusion, delta=1e-5, k_selection="uncorrected")
        assert default["k_selection"] == "bonferroni" and best["k_selection"] == "uncorrected"
        assert default["epsilon"] <= best["epsilon"]  # the correction only ever lowers the bound
        corrected += default["epsilon"] > 0
        uncorrected += best["epsilon"] > 0
    assert corrected <= 5 < uncorrected  # picking the best k without paying for it rejects eps = 0 too often
    fixed = one_run_audit(scores, inclusion, delta=1e-5, guesses=(20, 20))  # the paper's Algorithm 1: k fixed ahead
    assert fixed["k_selection"] == "fixed" and fixed["confidence_per_k"] == 0.95 and len(fixed["tried"]) == 1
    with pytest.raises(ValueError, match="k_selection must be one of"):
        one_run_audit(scores, inclusion, delta=1e-5, k_selection="best")


def _dirac_canary_dpsgd(seed: int, canaries: int, sigma: float, steps: int, sample_rate: float):
    """DP-SGD's released noisy gradient sums when each canary's clipped gradient is its own unit vector.

    The gradient-space one-run audit of Steinke et al. (Sec. 7): canary i, when included and Poisson-sampled in a
    step, adds e_i (norm = the clipping bound 1); every step adds N(0, sigma^2 I); the attacker scores canary i by
    coordinate i of the summed releases. The accountant's epsilon is Opacus's RDP for (sigma, sample_rate, steps).
    """
    generator = torch.Generator().manual_seed(seed)
    inclusion = torch.rand(canaries, generator=generator) < 0.5
    total = torch.zeros(canaries, dtype=torch.float64)
    for _ in range(steps):
        sampled = inclusion & (torch.rand(canaries, generator=generator) < sample_rate)
        total += sampled.double() + sigma * torch.randn(canaries, generator=generator, dtype=torch.float64)
    return total, inclusion


@pytest.mark.parametrize("sigma, steps, sample_rate", [(0.6, 1, 1.0), (1.0, 4, 0.5), (2.0, 1, 1.0)])
def test_audit_never_exceeds_the_accountants_epsilon_on_dpsgd_runs(sigma, steps, sample_rate):
    delta = 1e-5
    accountant = RDPAccountant()
    accountant.history = [(sigma, sample_rate, steps)]
    accountant_epsilon = accountant.get_epsilon(delta)
    bounds = []
    for seed in range(5):
        scores, inclusion = _dirac_canary_dpsgd(seed, 1000, sigma, steps, sample_rate)
        audit = one_run_audit(scores, inclusion, delta)
        assert audit["epsilon"] <= accountant_epsilon
        bounds.append(audit["epsilon"])
    if sigma < 1:  # the weak-noise run is audited well above 0: the test has teeth
        assert min(bounds) > 0.5


def test_memorising_model_with_mislabelled_canaries_is_audited_clearly_above_zero():
    torch.manual_seed(0)
    features, classes, pool = 16, 4, 600
    teacher = torch.randn(features, classes)
    images = torch.randn(pool, features)
    labels = (images @ teacher).argmax(1)
    canaries = draw_canaries(labels[400:], 200, "mislabelled", classes, seed=3)
    assert (canaries.labels != canaries.original_labels).all()
    train_x = torch.cat([images[:400], images[400:][canaries.included_indices()]])
    train_y = torch.cat([labels[:400], canaries.labels[canaries.inclusion]])
    model = torch.nn.Sequential(torch.nn.Linear(features, 256), torch.nn.ReLU(), torch.nn.Linear(256, classes))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(300):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(train_x), train_y).backward()
        optimizer.step()
    with torch.no_grad():  # score: the log-probability of the canary's (wrong) label; queries never see inclusion
        query = canaries.attacker_view()
        log_probs = model(images[400:][query["indices"]]).log_softmax(1)
        scores = log_probs.gather(1, query["labels"][:, None]).squeeze(1)
    metrics, details, _ = canary_report(scores, canaries.inclusion, delta=1e-5)
    assert metrics["canary_audit_epsilon"] > 1.0
    assert metrics["canary_auc"] > 0.9
    audit = details["canary_audit"]
    assert audit["canaries"] == 200 and audit["correct"] <= audit["guesses"] == audit["k_plus"] + audit["k_minus"]
    assert details["canary_tpr_at_1pct_fpr"]["achieved_fpr"] <= 0.01


def test_inclusion_is_independent_bernoulli_half():
    labels = torch.arange(20000) % 10
    inclusion = draw_canaries(labels, 20000, "mislabelled", 10, seed=0).inclusion.numpy()
    assert stats.binomtest(int(inclusion.sum()), len(inclusion), 0.5).pvalue > 0.001
    # independence: consecutive pairs fall in the four cells equally often
    pairs = inclusion[0::2] * 2 + inclusion[1::2]
    assert stats.chisquare(np.bincount(pairs, minlength=4)).pvalue > 0.001
    other = draw_canaries(labels, 20000, "mislabelled", 10, seed=1).inclusion.numpy()
    assert not np.array_equal(inclusion, other)  # seeded: another seed, another draw
    again = draw_canaries(labels, 20000, "mislabelled", 10, seed=0)
    assert np.array_equal(again.inclusion.numpy(), inclusion)  # recorded seed reproduces it


@pytest.mark.parametrize("kind", ["mislabelled", "atypical"])
def test_nothing_the_attacker_sees_depends_on_inclusion(kind, monkeypatch):
    labels = torch.arange(300) % 5
    atypicality = torch.randn(300, generator=torch.Generator().manual_seed(1))
    reference = draw_canaries(labels, 100, kind, 5, seed=4, atypicality=atypicality)
    # another inclusion draw (as if the inclusion stream were anything else): the attacker's view is unchanged
    import bench.datamodules.canaries as module

    monkeypatch.setattr(module, "_INCLUSION_STREAM", 12345)
    other = draw_canaries(labels, 100, kind, 5, seed=4, atypicality=atypicality)
    assert not torch.equal(reference.inclusion, other.inclusion)
    for name, value in reference.attacker_view().items():
        assert torch.equal(value, other.attacker_view()[name]), name
    assert "inclusion" not in reference.attacker_view()
    if kind == "atypical":  # the most atypical examples, whatever their inclusion
        assert set(reference.indices.tolist()) == set(atypicality.argsort(descending=True)[:100].tolist())
        assert torch.equal(reference.labels, labels[reference.indices])


def test_audit_depends_on_scores_only_through_their_order_and_not_on_canary_positions():
    rng = np.random.default_rng(0)
    inclusion = rng.random(400) < 0.5
    scores = rng.normal(size=400) + 2 * inclusion
    permutation = rng.permutation(400)
    assert one_run_audit(scores, inclusion, 1e-5)["epsilon"] == pytest.approx(
        one_run_audit(scores[permutation], inclusion[permutation], 1e-5)["epsilon"]
    )
    assert (
        one_run_audit(np.exp(scores), inclusion, 1e-5)["epsilon"] == one_run_audit(scores, inclusion, 1e-5)["epsilon"]
    )


@pytest.mark.parametrize(
    "count, kind, pool, task, message",
    [
        (600, "mislabelled", 500, "multiclass", "the canary pool holds only 500"),
        (10, "mislabelled", 500, "multilabel", "multiclass dataset"),
        (10, "poisoned", 500, "multiclass", "canary kind must be one of"),
        (1, "atypical", 500, "multiclass", "at least 2 candidates"),
    ],
)
def test_bad_canary_requests_are_one_clear_line(count, kind, pool, task, message):
    with pytest.raises(BenchError, match=message) as error:
        check_canary_request(count, kind, pool, task)
    assert "\n" not in str(error.value)


def test_an_fpr_the_canary_count_cannot_resolve_is_named():
    assert check_canary_request(4000, "mislabelled", 5000, lowest_fpr=0.001) == []
    (warning,) = check_canary_request(500, "mislabelled", 5000, lowest_fpr=0.001)
    assert "cannot resolve an FPR of 0.1%" in warning


def test_atypical_canaries_are_the_examples_a_reference_model_on_attacker_data_fits_worst():
    from bench.datamodules.canaries import nearest_mean_atypicality

    generator = torch.Generator().manual_seed(0)
    reference_labels = torch.arange(200) % 2
    reference = reference_labels[:, None].float() * 10 + torch.randn(200, 4, generator=generator)
    labels = torch.arange(50) % 2
    images = labels[:, None].float() * 10 + torch.randn(50, 4, generator=generator)
    images[:5] = (1 - labels[:5])[:, None].float() * 10  # five examples that look like the other class
    scores = nearest_mean_atypicality(reference, reference_labels, images, labels)
    canaries = draw_canaries(labels, 5, "atypical", 2, seed=0, atypicality=scores)
    assert set(canaries.indices.tolist()) == set(range(5))
    assert torch.equal(canaries.labels, labels[canaries.indices])  # natural: their own labels
