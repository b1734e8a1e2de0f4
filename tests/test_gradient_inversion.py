"""Gradient inversion: batched attacks equal single ones, IG inverts an untrained network, labels, scoring."""

from __future__ import annotations

import pytest
import torch

from bench.attacks import GradientInversion
from bench.attacks.gradient_inversion import gradient_distance, inversefed_milestones
from bench.attacks.label_recovery import recover_label_counts, recover_labels
from bench.datamodules import Digits
from bench.errors import BenchError
from bench.modules import Collaborative


@pytest.fixture(scope="module")
def digits():
    return Digits(batch_size=16, pool_limit=64)


def _targets(module, digits, count, batch_size=1):
    images, labels = digits.pool("test").tensors()
    images = images[: count * batch_size].view(count, batch_size, *images.shape[1:]).to(torch.float64)
    labels = labels[: count * batch_size].view(count, batch_size)
    shared = module.eval().shared_gradients(images, labels)
    return shared, images, labels


@pytest.mark.parametrize("network, batching", [("convnet", "grouped"), ("resnet20", "vmap")])
def test_batched_attacks_equal_the_same_attacks_run_one_by_one(digits, network, batching):
    """Many attacks as one optimisation (one grouped network where the model has that form, else vmap) take
    every attack's own steps."""
    torch.manual_seed(0)
    module = Collaborative(network=network, width=4, data_spec=digits.spec).double()
    shared, images, labels = _targets(module, digits, count=3)
    attack = GradientInversion(iterations=12, progress=False)
    init = torch.rand(3, 1, *images.shape[2:], generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    batched, batched_distance = attack.invert(module, shared.gradients, labels, init)
    assert attack.batching == batching
    for i in range(3):
        single, single_distance = attack.invert(
            module, {n: g[i : i + 1] for n, g in shared.gradients.items()}, labels[i : i + 1], init[i : i + 1]
        )
        torch.testing.assert_close(batched[i : i + 1], single, rtol=0, atol=1e-10)
        torch.testing.assert_close(batched_distance[i : i + 1], single_distance, rtol=1e-9, atol=1e-12)
    assert not torch.equal(batched, init)  # the attack did move


@pytest.mark.parametrize("network", ["convnet", "resnet20"])
def test_dummy_gradients_by_unfold_and_grouped_equal_vmap_and_stay_differentiable(digits, network):
    """Objective and its gradient with respect to the images (the double backward) agree on every path, batch size 3
    per attack; ResNet-20 (shortcuts) has no grouped form and takes vmap."""
    torch.manual_seed(0)
    module = Collaborative(network=network, width=4, data_spec=digits.spec).double().eval()
    with torch.no_grad():  # running statistics away from (0, 1): the grouped batch-norm must use them
        for layer in module.modules():
            if isinstance(layer, torch.nn.BatchNorm2d):
                layer.running_mean.uniform_(-0.5, 0.5), layer.running_var.uniform_(0.5, 2.0)
                layer.weight.uniform_(0.5, 1.5), layer.bias.uniform_(-0.2, 0.2)
    shared, images, labels = _targets(module, digits, count=2, batch_size=3)
    dummy = torch.rand(2, 3, *images.shape[2:], generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    values, paths = [], []
    for per_sample in ("vmap", "unfold", "grouped"):
        z = dummy.clone().requires_grad_(True)
        objective = GradientInversion(per_sample=per_sample, progress=False).objective(
            module, shared.gradients, labels, tuple(images.shape[2:])
        )
        total, _ = objective(z, None)
        (gradient,) = torch.autograd.grad(total.sum(), z)
        values.append((total.detach(), gradient))
        paths.append(objective.batching)
    assert paths == ["vmap", "unfold", "grouped" if network == "convnet" else "vmap"]
    for total, gradient in values[1:]:
        torch.testing.assert_close(total, values[0][0], rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(gradient, values[0][1], rtol=1e-7, atol=1e-10)  # the double backward agrees


def test_grouped_batch_norm_is_eval_only_and_shadows_keep_their_forms():
    """The grouped batch-norm is the eval-mode affine map: a training forward says so; without batch_norm=True
    (the shadow models' call) a batch-norm network has no grouped form, as before."""
    from bench.batching.grouped_networks import grouped_network
    from bench.datamodules.base import DataSpec

    spec = DataSpec("synthetic", (1, 8, 8), 3, (0.5,), (0.25,))
    module = Collaborative(network="convnet", width=2, data_spec=spec).eval()
    assert isinstance(grouped_network(module, (1, 8, 8)), str)
    forward = grouped_network(module, (1, 8, 8), batch_norm=True)
    params = {n: p.detach().unsqueeze(0).repeat(2, *[1] * p.ndim) for n, p in module.named_parameters()}
    buffers = {n: b.unsqueeze(0).repeat(2, *[1] * b.ndim) for n, b in module.named_buffers()}
    x = torch.rand(2, 3, 1, 8, 8)
    torch.testing.assert_close(forward(params, buffers, x, False), module(x.flatten(0, 1)).view(2, 3, -1))
    with pytest.raises(ValueError, match="eval-mode"):
        forward(params, buffers, x, True)


def test_restarts_keep_each_targets_best_start(digits):
    torch.manual_seed(0)
    module = Collaborative(network="resnet20", width=4, data_spec=digits.spec).double()
    shared, images, labels = _targets(module, digits, count=2)
    attack = GradientInversion(iterations=5, progress=False)
    starts = torch.rand(4, 1, *images.shape[2:], generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    starts[2] = 0.8 * images[0] + 0.1  # the second restart of target 0 starts close to the answer
    best, distance = attack.invert(module, shared.gradients, labels, starts)
    alone = [
        attack.invert(
            module,
            {n: g[i % 2 : i % 2 + 1] for n, g in shared.gradients.items()},
            labels[i % 2 : i % 2 + 1],
            starts[i : i + 1],
        )[1]
        for i in range(4)
    ]
    assert distance[0] == pytest.approx(min(alone[0], alone[2]).item())
    assert distance[1] == pytest.approx(min(alone[1], alone[3]).item())


def test_idlg_recovers_the_labels_of_an_untrained_network(digits):
    torch.manual_seed(0)
    module = Collaborative(network="convnet", width=4, data_spec=digits.spec)
    images, labels = digits.pool("test").tensors()
    shared = module.eval().shared_gradients(images[:10].unsqueeze(1), labels[:10].unsqueeze(1))
    assert torch.equal(recover_labels(shared.gradients, 10, 1).flatten(), labels[:10])


def test_count_based_recovery_finds_repeated_labels_that_idlg_cannot(digits):
    images, labels = digits.pool("test").tensors()
    generator = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(6):  # batches of 8 drawn from 3 classes: every batch repeats labels
        present = labels.unique()
        classes = present[torch.randperm(len(present), generator=generator)[:3]]
        wanted = classes[torch.randint(3, (8,), generator=generator)]
        pools = [(labels == c).nonzero().flatten() for c in wanted]
        batches.append(torch.stack([pool[k % len(pool)] for k, pool in enumerate(pools)]))
    index = torch.stack(batches)
    for network in ("convnet", "resnet20"):
        torch.manual_seed(0)
        module = Collaborative(network=network, width=4, data_spec=digits.spec).eval()
        shared = module.shared_gradients(images[index], labels[index])
        truth = labels[index].sort(1).values
        assert torch.equal(recover_label_counts(shared.gradients, 10, 8), truth)
        assert not (recover_labels(shared.gradients, 10, 8) == truth).all(1).any()  # distinct labels cannot be right
        without_bias = {n: g for n, g in shared.gradients.items() if not (g.ndim == 2 and g.shape[1] == 10)}
        recovered = recover_label_counts(without_bias, 10, 8)  # LLG on the weight rows
        assert (recovered == truth).float().mean() > 0.5


def test_inverting_gradients_steps_in_inversefeds_units(digits):
    # inversefed: Adam on the sign of the gradient of z = (x - mean) / std, lr 0.1: the first step moves every
    # coordinate of z by exactly lr, i.e. every pixel by lr * std; milestones at n // 2.667, n // 1.6, n // 1.142
    # (float floor division, as in inversefed: 4800 // 1.6 == 2999.0)
    assert inversefed_milestones(4800) == [1799, 2999, 4203] and inversefed_milestones(8) == [2, 4, 7]
    torch.manual_seed(0)
    module = Collaborative(network="convnet", width=4, data_spec=digits.spec).double().eval()
    shared, images, labels = _targets(module, digits, count=2)
    attack = GradientInversion(iterations=1, tv=1e-4, progress=False).set_normalization(digits.spec)
    assert attack.name == "gradient_inversion" and attack.init == "gaussian"
    std, mean = digits.spec.std[0], digits.spec.mean[0]
    start = (0.3 + 0.4 * torch.rand(2, 1, *images.shape[2:], generator=torch.Generator().manual_seed(1))).double()
    moved, _ = attack.invert(module, shared.gradients, labels, start)
    torch.testing.assert_close((moved - start).abs(), torch.full_like(start, 0.1 * std), rtol=0, atol=1e-9)
    pixel = GradientInversion(iterations=1, space="pixel", progress=False)
    assert pixel.name == "gradient_inversion_pixel" and pixel.init == "random"
    moved, _ = pixel.invert(module, shared.gradients, labels, start)
    torch.testing.assert_close((moved - start).abs(), torch.full_like(start, 0.1), rtol=0, atol=1e-9)
    # the Gaussian start is N(0, 1) in z, and the boxed constraint keeps reconstructions in [0, 1]
    z = (attack.initial_images(4000, images.shape[2:], torch.Generator().manual_seed(0)) - mean) / std
    assert abs(z.mean().item()) < 0.01 and abs(z.std().item() - 1) < 0.01
    far = torch.full_like(start, 5.0)
    boxed, _ = (
        GradientInversion(iterations=2, progress=False)
        .set_normalization(digits.spec)
        .invert(module, shared.gradients, labels, far)
    )
    assert boxed.min() >= 0 and boxed.max() <= 1


def test_gradient_distances():
    target = {"w": torch.tensor([[1.0, 0.0], [0.0, 2.0]])}
    dummy = {"w": torch.tensor([[2.0, 0.0], [0.0, -2.0]])}
    torch.testing.assert_close(gradient_distance(dummy, target, "cosine"), torch.tensor([0.0, 2.0]))
    torch.testing.assert_close(gradient_distance(dummy, target, "l2"), torch.tensor([1.0, 16.0]))
    torch.testing.assert_close(gradient_distance(dummy, target, "l1"), torch.tensor([1.0, 4.0]))


def test_reconstructions_are_paired_with_their_inputs_within_a_batch():
    inputs = torch.rand(2, 4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    order = torch.tensor([2, 0, 3, 1])
    assert torch.equal(GradientInversion.match_order(inputs[:, order], inputs), inputs)


def test_label_variants_are_named_and_reported_with_per_image_intervals(digits):
    assert GradientInversion(progress=False).name == "gradient_inversion"  # recovered labels: the plain name
    assert GradientInversion(labels="given", progress=False).name == "gradient_inversion_labels_given"
    assert GradientInversion(labels="llg", batch_size=8, progress=False).name == "gradient_inversion_batch8_labels_llg"
    module = Collaborative(network="convnet", width=4, data_spec=digits.spec)
    attack = GradientInversion(iterations=2, num_images=3, labels="given", progress=False)
    result = attack.run(module, digits, torch.Generator().manual_seed(0))
    per_image = result.details["per_image"]
    assert len(per_image["psnr"]) == len(per_image["ssim"]) == 3 and per_image["label_correct"] == [True] * 3
    assert sum(per_image["psnr"]) / 3 == pytest.approx(result.metrics["psnr"], abs=1e-3)
    low, high = result.details["intervals"]["psnr"]
    assert low <= result.metrics["psnr"] <= high and high > low
    low, high = result.details["intervals"]["label_accuracy"]  # Clopper-Pearson: 3 of 3
    assert high == 1.0 and low == pytest.approx(0.025 ** (1 / 3))
    assert "only 3 images" in result.details["warning"]


@pytest.mark.slow
def test_inverting_gradients_recovers_a_training_image_of_an_untrained_network(digits):
    module = Collaborative(network="resnet20", width=8, data_spec=digits.spec)
    attack = GradientInversion(iterations=300, lr=0.05, num_images=1, model_state="untrained", progress=False)
    result = attack.run(module, digits, torch.Generator().manual_seed(0))
    assert result.metrics["psnr"] > 25  # near exact (the paper's undefended trained models: 10-14 dB)
    assert result.metrics["label_accuracy"] == 1.0
    assert result.metrics["psnr"] == result.metrics["psnr_original"]  # no transformation: both references agree


def test_scores_against_the_transformed_and_the_original_image(digits):
    module = Collaborative(
        network="convnet", width=4, policy="29", crop_flip=False, data_spec=digits.spec
    )  # 29: invert
    attack = GradientInversion(iterations=3, num_images=2, batch_size=8, labels="given", init="black", progress=False)
    result = attack.run(module, digits, torch.Generator().manual_seed(0))
    originals, reconstructions, *_ = result.examples
    images = digits.pool("test").tensors()[0][:16]
    # the grid shows what was trained on: the inverted images (those nearest the mean PSNR, then the best)
    inverted = (1 - images).flatten(1)
    assert all(torch.isclose(inverted, shown).all(dim=1).any() for shown in originals.flatten(1))
    assert reconstructions.shape == originals.shape
    assert result.metrics["psnr"] != pytest.approx(result.metrics["psnr_original"])
    assert result.metrics["label_accuracy"] == 1.0


def test_dlg_with_lbfgs_and_l2_lowers_the_gradient_distance(digits):
    torch.manual_seed(0)
    module = Collaborative(network="resnet20", width=4, data_spec=digits.spec).double()
    shared, images, labels = _targets(module, digits, count=2)
    attack = GradientInversion(optimizer="lbfgs", distance="l2", tv=0.0, iterations=20, progress=False)
    start = torch.rand(2, 1, *images.shape[2:], generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    _, before = GradientInversion(
        optimizer="lbfgs", distance="l2", tv=0.0, iterations=1, lr=1e-12, progress=False
    ).invert(module, shared.gradients, labels, start)
    _, after = attack.invert(module, shared.gradients, labels, start)
    assert (after < before).all()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"optimizer": "rmsprop"}, "optimizer"),
        ({"distance": "l3"}, "distance"),
        ({"labels": "guess"}, "labels"),
        ({"init": "white"}, "init"),
        ({"space": "lab"}, "space"),
        ({"per_sample": "loop"}, "per_sample"),
        ({"iterations": 0}, "at least 1"),
        ({"model_state": "half"}, "model_state"),
    ],
)
def test_bad_configuration_says_what_to_do(kwargs, match):
    with pytest.raises(BenchError, match=match):
        GradientInversion(**kwargs)


@pytest.mark.parametrize("name", ["ats/mnist_shared", "ats/cifar100_resnet20_attacks"])
def test_configs_attack_with_their_own_settings_not_the_quickstarts(name, capsys):
    # configs apply on top of the quickstart, whose FeatureInversion has lr and batch_size arguments too
    import yaml

    from bench.cli import main

    with pytest.raises(SystemExit):
        main(["fit", "--config", name, "--print_config"])
    config = yaml.safe_load(capsys.readouterr().out)
    attacks = [a["init_args"] for a in config["evaluation"]["attacks"] if a["class_path"].endswith("GradientInversion")]
    assert attacks and all(a["batch_size"] == 1 for a in attacks)
    assert all(a["lr"] == (1.0 if a["optimizer"] == "lbfgs" else 0.1) for a in attacks)
    assert config["model"]["init_args"]["network"] in ("convnet", "resnet20")


def test_recovered_labels_that_are_right_reuse_the_given_label_attack(digits, monkeypatch):
    module = Collaborative(network="convnet", width=4, data_spec=digits.spec)
    given = GradientInversion(iterations=2, num_images=2, labels="given", progress=False)
    recovered = GradientInversion(iterations=2, num_images=2, progress=False)  # iDLG: right on an untrained ConvNet
    first = given.run(module, digits, torch.Generator().manual_seed(0))
    calls = []
    monkeypatch.setattr(GradientInversion, "invert", lambda self, *args: calls.append(1) or pytest.fail("reran"))
    second = recovered.run(module, digits, torch.Generator().manual_seed(0))
    assert not calls and second.metrics == first.metrics
    assert second.details["reused_reconstructions_of"] == "gradient_inversion_labels_given"
    assert second.details["batching"] == first.details["batching"] == "grouped"  # 2 attacks: one grouped network
    assert "reused_reconstructions_of" not in first.details
    monkeypatch.undo()
    # another start (seed), other settings or another model: the attack runs
    for attack, model, seed in (
        (recovered, module, 1),
        (GradientInversion(iterations=3, num_images=2, progress=False), module, 0),
        (recovered, Collaborative(network="convnet", width=4, data_spec=digits.spec), 0),
    ):
        result = attack.run(model, digits, torch.Generator().manual_seed(seed))
        assert "reused_reconstructions_of" not in result.details
