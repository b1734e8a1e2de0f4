"""ATS's scores (vectorized == loop), Algorithm 1, and the search entry point writing a policy file."""

from __future__ import annotations

import json
import platform
import subprocess
import sys

import pytest
import torch

from bench.ats import accuracy_score, accuracy_score_loop, privacy_score, privacy_score_loop
from bench.ats.scores import _score_from_jacobians, class_representatives, interpolation_points, interpolation_steps
from bench.ats.search import Scored, SearchResult, main, search
from bench.datamodules.base import DataSpec
from bench.errors import BenchError
from bench.networks.registry import Role, build_network
from bench.transforms import load_policy, parse_policy, random_policy

SPEC = DataSpec("tiny", (1, 8, 8), 10, (0.5,), (0.25,))


def _model(name="convnet", width=4, seed=0):
    torch.manual_seed(seed)
    return build_network(name, Role.COLLABORATIVE, SPEC, width=width).double().eval()


def _data(count, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(count, 1, 8, 8, generator=generator, dtype=torch.float64), torch.randint(
        10, (count,), generator=generator
    )


@pytest.mark.parametrize("network", ["convnet", "resnet20"])
@pytest.mark.parametrize("policy", [None, "3-1-7+43-18-18"])
@pytest.mark.parametrize(
    "variant, per_sample",
    [
        ("reference", "statistics"),
        ("paper", "statistics"),
        ("reference", "unfold"),
        ("reference", "vmap"),
        ("paper", "unfold"),
    ],
)
def test_vectorized_privacy_score_equals_the_loop(network, policy, variant, per_sample):
    model, (images, labels) = _model(network), _data(5)
    policy = parse_policy(policy) if policy else None
    vectorized = privacy_score(
        model,
        policy,
        images,
        labels,
        points=4,
        generator=torch.Generator().manual_seed(1),
        chunk=7,
        variant=variant,
        per_sample=per_sample,
    )
    loop = privacy_score_loop(
        model, policy, images, labels, points=4, generator=torch.Generator().manual_seed(1), variant=variant
    )
    assert abs(vectorized.item() - loop.item()) < 1e-5
    assert -1 <= vectorized.item() <= 1


@pytest.mark.parametrize("network", ["convnet", "resnet20"])
def test_per_sample_gradients_by_unfold_equal_vmap(network):
    from torch.func import functional_call, grad, vmap

    from bench.batching.per_sample import per_sample_gradients

    model, (images, labels) = _model(network), _data(6)
    params = {n: p.detach() for n, p in model.named_parameters()}
    buffers = dict(model.named_buffers())

    def loss(p, x, y):
        return torch.nn.functional.cross_entropy(
            functional_call(model, (p, buffers), (x.unsqueeze(0),)), y.unsqueeze(0)
        )

    expected = vmap(grad(loss), in_dims=(None, 0, 0))(params, images, labels)
    for ours, (name, theirs) in zip(per_sample_gradients(model, images, labels), expected.items()):
        torch.testing.assert_close(ours, theirs.flatten(1), rtol=1e-9, atol=1e-12, msg=name)


class _Odd(torch.nn.Module):
    """Layers the ATS networks lack: a biased strided convolution, a batch-norm without affine parameters, a
    biased linear layer on a (samples, positions, features) input."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 3, 3, stride=2, padding=1, bias=True)
        self.norm = torch.nn.BatchNorm2d(3, affine=False)
        self.affine = torch.nn.BatchNorm2d(3)
        self.mix = torch.nn.Linear(16, 5)
        self.fc = torch.nn.Linear(3 * 5, 10)

    def forward(self, x):
        x = self.affine(self.norm(self.conv(x))).relu()
        return self.fc(self.mix(x.flatten(2)).flatten(1))


@pytest.mark.parametrize("network", ["convnet", "resnet20", "odd"])
@pytest.mark.parametrize("chunk_elements", [1, 100, 10**6])
def test_gradient_statistics_are_the_dots_and_norms_of_the_per_sample_gradients(network, chunk_elements):
    """Every sample's gradient against its reference's (repeated, unordered, itself), per parameter tensor, in
    chunks of one sample up to all: equal to the per-sample gradients of vmap(grad) in float64."""
    from torch.func import functional_call, grad, vmap

    from bench.batching.per_sample import gradient_statistics

    if network == "odd":
        torch.manual_seed(0)
        model = _Odd().double().eval()
        with torch.no_grad():  # running statistics away from 0 / 1, so that the formula's use of them is checked
            for norm in (model.norm, model.affine):
                norm.running_mean.uniform_(-1, 1)
                norm.running_var.uniform_(0.5, 2)
    else:
        model = _model(network)
    images, labels = _data(9)
    references = torch.tensor([4, 4, 0, 7, 4, 5, 0, 2, 2])
    params = {n: p.detach() for n, p in model.named_parameters()}
    buffers = dict(model.named_buffers())

    def loss(p, x, y):
        return torch.nn.functional.cross_entropy(
            functional_call(model, (p, buffers), (x.unsqueeze(0),)), y.unsqueeze(0)
        )

    expected = [g.flatten(1) for g in vmap(grad(loss), in_dims=(None, 0, 0))(params, images, labels).values()]
    dots, squares = gradient_statistics(model, images, labels, references, chunk_elements=chunk_elements)
    assert dots.shape == squares.shape == (len(expected), 9)
    for name, g, dot, square in zip(params, expected, dots, squares):
        torch.testing.assert_close(dot, (g * g[references]).sum(1), rtol=1e-10, atol=1e-14, msg=name)
        torch.testing.assert_close(square, g.square().sum(1), rtol=1e-10, atol=1e-14, msg=name)
    with pytest.raises(ValueError, match="references"):
        gradient_statistics(model, images, labels, references[:-1])


def test_the_statistics_path_falls_back_to_vmap_on_layers_it_does_not_cover():
    torch.manual_seed(0)
    model = (
        torch.nn.Sequential(
            torch.nn.Conv2d(1, 3, 3), torch.nn.GroupNorm(1, 3), torch.nn.Flatten(), torch.nn.Linear(3 * 6 * 6, 10)
        )
        .double()
        .eval()
    )
    images, labels = _data(3)
    vectorized = privacy_score(model, None, images, labels, points=4, generator=torch.Generator().manual_seed(1))
    loop = privacy_score_loop(model, None, images, labels, points=4, generator=torch.Generator().manual_seed(1))
    assert abs(vectorized.item() - loop.item()) < 1e-5


def test_the_reference_privacy_score_is_a_trapezoid_ending_at_the_target():
    steps, weights = interpolation_steps(20, "reference")
    assert steps[0] == 0 and steps[-1] == 1 and len(steps) == 21  # bin_num 20: 21 points, the last T(x) itself
    assert weights.sum().item() == pytest.approx(1.0) and weights[0] == weights[-1] == pytest.approx(weights[1] / 2)
    steps, weights = interpolation_steps(10, "paper")
    assert (
        len(steps) == 10
        and steps[-1] == pytest.approx(0.9)
        and torch.allclose(weights, torch.full((10,), 0.1, dtype=torch.float64))
    )
    # a start equal to the target: every point's gradient is the target's, GradSim 1 everywhere, S_pri 1
    model, (images, labels) = _model(), _data(3)
    assert privacy_score(model, None, images, labels, points=4, starts=images).item() == pytest.approx(1.0)


@pytest.mark.parametrize("policy", [None, "15-43"])
@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_vectorized_accuracy_score_equals_the_loop(policy, reduction):
    model, (images, _) = _model(), _data(12)
    policy = parse_policy(policy) if policy else None
    batches = images.view(2, 6, 1, 8, 8)
    vectorized = accuracy_score(model, policy, batches, torch.Generator().manual_seed(2), reduction)
    loop = accuracy_score_loop(model, policy, batches, torch.Generator().manual_seed(2), reduction)
    assert abs(vectorized.item() - loop.item()) < 1e-5 * max(1.0, abs(loop.item()))
    rounds = [images[:6], images[6:10]]  # the reference's rounds can hold different numbers of classes
    assert abs(
        accuracy_score(model, policy, rounds, torch.Generator().manual_seed(2), reduction).item()
        - accuracy_score_loop(model, policy, rounds, torch.Generator().manual_seed(2), reduction).item()
    ) < 1e-5 * max(1.0, abs(loop.item()))


def _class_blobs(copies=3, seed=0):
    """(copies, 10, 1, 16, 16) digit-like images: a bright 5x5 blob per class, at a class-dependent place, on black."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.zeros(copies, 10, 1, 16, 16, dtype=torch.float64)
    for c in range(10):
        row, col = divmod(c, 4)
        images[:, c, :, 2 + 3 * row : 7 + 3 * row, 2 + 3 * col : 7 + 3 * col] = 0.6 + 0.4 * torch.rand(
            copies, 1, 5, 5, generator=generator, dtype=torch.float64
        )
    return images


def test_the_papers_t_acc_filters_on_the_reference_scale():
    # the reference's S_acc: a negative sum over one image per class (N = 10), on a random-init ConvNet
    torch.manual_seed(0)
    tiny = DataSpec("tiny", (1, 16, 16), 10, (0.3,), (0.3,))
    model = build_network("convnet", Role.COLLABORATIVE, tiny, width=8).double().eval()
    rounds, generator = _class_blobs(), torch.Generator().manual_seed(1)
    candidates = [random_policy(generator) for _ in range(40)]
    summed = [accuracy_score(model, p, rounds, torch.Generator().manual_seed(7)).item() for p in candidates]
    # the bound: eigenvalues of a 10 x 10 correlation matrix sum to 10 and log v + 1/v >= 1, so S_acc <= -10
    assert max(summed) <= -10 + 1e-3
    kept = [s for s in summed if s >= -12.0]  # T_acc = -12 (appendix A: ResNet-20, F-MNIST)
    assert 0 < len(kept) < len(summed) and len(kept) >= len(summed) // 2
    assert not [s for s in summed if s >= -10.0]  # T_acc = -10 (ConvNet, F-MNIST) keeps nothing with N = 10
    # Eq. 10's 1/N mean: values near -1, so the paper's thresholds keep at least as many (bench's old scale)
    meaned = [accuracy_score(model, p, rounds, torch.Generator().manual_seed(7), "mean").item() for p in candidates]
    assert torch.allclose(torch.tensor(meaned) * 10, torch.tensor(summed))
    assert sum(m >= -12.0 for m in meaned) >= len(kept)


def test_class_representatives_take_the_first_image_of_each_label_per_window():
    labels = torch.tensor([3, 3, 1, 0, 1, 2, 0, 0, 2, 1, 1, 1])
    images = torch.arange(12, dtype=torch.float64).view(12, 1, 1, 1)
    rounds = class_representatives(images, labels, rounds=2, window=5, offset=2)
    assert [r.flatten().tolist() for r in rounds] == [[2.0, 3.0, 5.0], [7.0, 8.0, 9.0]]
    with pytest.raises(BenchError, match="need 22 images"):
        class_representatives(images, labels, rounds=4, window=5, offset=2)


def test_interpolation_runs_from_the_start_to_the_target():
    starts, targets = torch.zeros(2, 1, 2, 2), torch.ones(2, 1, 2, 2)
    path = interpolation_points(starts, targets, 4)
    assert path.shape == (2, 4, 1, 2, 2)
    torch.testing.assert_close(path[0, :, 0, 0, 0], torch.tensor([0.0, 0.25, 0.5, 0.75]))


def test_accuracy_score_is_eq_10_with_its_sign():
    # orthogonal centred rows: the correlation matrix is the identity, every eigenvalue 1
    rows = torch.tensor([[1.0, -1.0, 0.0, 0.0], [0.0, 0.0, 1.0, -1.0]]).unsqueeze(0)
    expected = -(torch.log(torch.tensor(1 + 1e-5)) + 1 / (1 + 1e-5))
    assert _score_from_jacobians(rows).item() == pytest.approx(2 * expected.item())  # the reference: a sum
    assert _score_from_jacobians(rows, "mean").item() == pytest.approx(expected.item())  # Eq. 10 as printed
    # a repeated row: a zero eigenvalue, which the score punishes hard
    assert _score_from_jacobians(torch.cat([rows, rows], 1)).item() < -1e4


def test_algorithm_1_keeps_the_n_lowest_privacy_scores_above_the_threshold():
    privacy_model, accuracy_model = _model(seed=0), _model(seed=1)
    (images, labels), (batch, _) = _data(4), _data(16, seed=3)
    result = search(
        privacy_model,
        accuracy_model,
        images,
        labels,
        batch.view(2, 8, 1, 8, 8),
        c_max=12,
        n=3,
        t_acc=-3.0,
        points=3,
        generator=torch.Generator().manual_seed(0),
        reduction="mean",
    )
    passed = [e for e in result.evaluated if e.s_acc >= -3.0]
    assert len(result.evaluated) == 12 and all(e.s_pri is None for e in result.evaluated if e.s_acc < -3.0)
    assert len(passed) >= 3 and result.settings["passed_t_acc"] == len(passed)
    best = sorted(passed, key=lambda e: e.s_pri)[:3]
    assert [str(e.policy) for e in result.selected] == [str(e.policy) for e in best]


def test_the_hybrid_takes_the_best_policies_without_a_common_transformation():
    entries = [
        Scored(parse_policy(p), -1.0, s) for p, s in [("3-1-7", 0.1), ("7-2", 0.2), ("43-18-18", 0.3), ("5", 0.4)]
    ]
    assert str(SearchResult(entries, entries, 1.0).hybrid(2)) == "3-1-7+43-18-18"
    assert str(SearchResult(entries, entries, 1.0).hybrid(3)) == "3-1-7+43-18-18+5"


@pytest.mark.slow
def test_the_entry_point_prints_progress_and_writes_a_policy_file_a_config_can_load(tmp_path, capsys):
    output = tmp_path / "policy.json"
    main(
        [
            "--data",
            "Digits",
            "--pool_limit",
            "200",
            "--width",
            "4",
            "--c_max",
            "6",
            "--n",
            "2",
            "--images",
            "4",
            "--points",
            "3",
            "--rounds",
            "2",
            "--acc_window",
            "40",
            "--semi_epochs",
            "2",
            "--t_acc",
            "-1000",
            "--output",
            str(output),
            "--allocator",
            "system",
        ]
    )  # the heap allocator would stay for the whole test run
    printed = capsys.readouterr().out
    assert "ats search [6/6]" in printed and "policies/minute" in printed and "passed T_acc" in printed
    content = json.loads(output.read_text())
    assert len(content["policies"]) == 2 and content["settings"]["c_max"] == 6
    assert load_policy(str(output)) == parse_policy(content["policy"])


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc's mallopt")
def test_keep_freed_memory_stops_the_page_faults_of_repeated_large_tensors():
    """The search's default allocator: freed blocks stay in the heap, so a tensor allocated again is not a fresh mmap
    that faults on every page (a subprocess: the setting lasts for the process)."""
    code = """
import resource, torch
from bench.ats.search import keep_freed_memory
def faults():
    start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        x = torch.ones(16 * 2**20)  # 64 MB: above glibc's mmap threshold
        del x
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start
faults()
before = faults()
assert keep_freed_memory()
faults()
print(before, faults())
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    before, after = map(int, result.stdout.split())
    assert before > 5 * (16 * 2**20 * 4 // 4096) // 2  # glibc's default: every 64 MB tensor faults its pages again
    assert after < before // 10
