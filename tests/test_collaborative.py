"""Collaborative learning (FedSGD): vectorized participants equal a loop, defenses, schedule, policy, DDP."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers import quiet_trainer as _trainer
from lightning.pytorch.callbacks import Callback

from bench.datamodules import Digits
from bench.errors import BenchError
from bench.modules import Collaborative
from bench.modules.collaborative import add_noise, prune_gradients
from bench.transforms import parse_policy


@pytest.fixture(scope="module")
def digits():
    return Digits(batch_size=12, pool_limit=96)


def _participants(digits, count=3, size=4):
    images, labels = digits.pool("train").tensors()
    return images[: count * size].view(count, size, 1, 8, 8), labels[: count * size].view(count, size)


def test_vectorized_participants_equal_one_backward_per_participant(digits):
    torch.manual_seed(0)
    module = Collaborative(network="resnet20", width=4, data_spec=digits.spec).double().train()
    images, labels = _participants(digits)
    images = images.double()
    reference = copy.deepcopy(module)
    shared = module.shared_gradients(images, labels)
    running = []
    for p in range(3):
        participant = copy.deepcopy(reference)  # its own copy of the running statistics
        loss = F.cross_entropy(participant(images[p]), labels[p])
        gradients = torch.autograd.grad(loss, [q for q in participant.parameters()])
        for (name, _), gradient in zip(participant.named_parameters(), gradients):
            torch.testing.assert_close(shared.gradients[name][p], gradient, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(shared.losses[p], loss.detach())
        running.append(participant.network.stem[2].running_mean)
    # batch-norm's running statistics: the mean of the participants' own updates
    torch.testing.assert_close(module.network.stem[2].running_mean, torch.stack(running).mean(0))


def test_one_training_step_applies_sgd_to_the_average_gradient(digits):
    torch.manual_seed(0)
    module = Collaborative(network="convnet", width=4, participants=3, lr=0.05, data_spec=digits.spec)
    before = copy.deepcopy(module)
    trainer = _trainer(max_steps=1)
    batches = []

    class Grab(Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            batches.append([t.clone() for t in batch])

    trainer.callbacks.append(Grab())
    trainer.fit(module, digits)
    images, labels = batches[0]
    shared = before.train().shared_gradients(images.view(3, 4, 1, 8, 8), labels.view(3, 4))
    for name, parameter in before.named_parameters():
        # first SGD step: momentum buffer = gradient, so p <- p - lr (mean gradient + weight decay * p)
        expected = parameter - 0.05 * (shared.gradients[name].mean(0) + 5e-4 * parameter)
        torch.testing.assert_close(dict(module.named_parameters())[name], expected, rtol=1e-5, atol=1e-6)


def test_learning_rate_drops_tenfold_at_three_five_and_seven_eighths(digits):
    module = Collaborative(network="convnet", width=2, participants=2, lr=0.1, data_spec=digits.spec)
    rates = []

    class Rates(Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            rates.append(trainer.optimizers[0].param_groups[0]["lr"])

    datamodule = Digits(batch_size=4, pool_limit=32)  # 8 steps per epoch
    _trainer(max_epochs=2, callbacks=[Rates()]).fit(module, datamodule)
    assert module.global_step == 16  # one optimizer step per batch
    expected = [0.1] * 6 + [0.01] * 4 + [0.001] * 4 + [0.0001] * 2  # milestones at steps 6, 10, 14
    assert rates == pytest.approx(expected)


@pytest.mark.parametrize("ratio", [0.7, 0.95, 0.99])
def test_gradient_pruning_keeps_the_stated_fraction_of_each_layer(ratio):
    generator = torch.Generator().manual_seed(0)
    gradients = {
        "conv": torch.randn(3, 16, 5, 5, 5, generator=generator),
        "fc": torch.randn(3, 10, 100, generator=generator),
    }
    pruned = prune_gradients(gradients, ratio)
    for name, gradient in gradients.items():
        per_participant = gradient[0].numel()
        kept = (pruned[name] != 0).flatten(1).sum(1)
        assert kept.tolist() == [round(per_participant * (1 - ratio))] * 3
        # what is kept is the largest entries, unchanged
        flat, flat_pruned = gradient.flatten(1).abs(), pruned[name].flatten(1)
        for p in range(3):
            smallest_kept = flat[p][flat_pruned[p] != 0].min()
            assert (flat[p][flat_pruned[p] == 0] <= smallest_kept).all()
            assert torch.equal(flat_pruned[p][flat_pruned[p] != 0], gradient.flatten(1)[p][flat_pruned[p] != 0])


@pytest.mark.parametrize("kind, spread", [("gaussian", lambda n: n.std()), ("laplacian", lambda n: n.abs().mean())])
def test_gradient_noise_has_the_requested_scale(kind, spread):
    zeros = {"w": torch.zeros(4, 50_000)}
    noise = add_noise(zeros, kind, 1e-2, torch.Generator().manual_seed(0))["w"]
    assert spread(noise).item() == pytest.approx(1e-2, rel=0.02) and noise.mean().abs() < 2e-4
    assert torch.equal(noise, add_noise(zeros, kind, 1e-2, torch.Generator().manual_seed(0))["w"])


def test_participants_train_on_their_transformed_batch(digits):
    module = Collaborative(network="convnet", width=2, policy="3-1-7+43-18-18", data_spec=digits.spec).eval()
    images, labels = _participants(digits)
    shared = module.shared_gradients(images, labels, torch.Generator().manual_seed(4))
    expected = parse_policy("3-1-7+43-18-18")(images.flatten(0, 1), torch.Generator().manual_seed(4))
    torch.testing.assert_close(shared.inputs, expected.view_as(images))
    plain = Collaborative(network="convnet", width=2, data_spec=digits.spec)
    plain.load_state_dict(module.state_dict())
    assert torch.equal(plain.eval().shared_gradients(images, labels).inputs, images)
    # the reference's pipeline by default (crop + flip before the policy, its operations); the others on request
    assert module.policy.crop_flip and module.policy.variant == "reference"
    other = Collaborative(
        network="convnet",
        width=2,
        policy="3-1-7",
        crop_flip=False,
        transform_variant="autoaugment",
        data_spec=digits.spec,
    ).eval()
    expected = parse_policy("3-1-7", crop_flip=False, variant="autoaugment")(
        images.flatten(0, 1), torch.Generator().manual_seed(4)
    )
    torch.testing.assert_close(
        other.shared_gradients(images, labels, torch.Generator().manual_seed(4)).inputs, expected.view_as(images)
    )
    assert other.label == "Collaborative (policy 3-1-7, no crop/flip, autoaugment operations)"


def test_a_policy_file_is_resolved_into_the_hyper_parameters(digits, tmp_path):
    path = tmp_path / "searched.json"
    path.write_text(json.dumps({"policy": "43-18-18+3-1-7"}))
    module = Collaborative(policy=str(path), data_spec=digits.spec)
    assert module.hparams.policy == "43-18-18+3-1-7" and module.label == "Collaborative (policy 43-18-18+3-1-7)"
    assert type(module).fresh_copy(module).policy == module.policy


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"participants": 0}, "participants"),
        ({"defense": "dp"}, "defense"),
        ({"prune_ratio": 1.0}, "prune_ratio"),
        ({"noise_scale": -1.0}, "noise_scale"),
        ({"policy": "3-99"}, "indices"),
        ({"network": "vgg9"}, "network"),
        ({"policy": "3", "transform_variant": "pil"}, "variant"),
    ],
)
def test_bad_hyper_parameters_say_what_to_do(digits, kwargs, match):
    with pytest.raises(BenchError, match=match):
        Collaborative(data_spec=digits.spec, **kwargs)


def test_a_batch_smaller_than_the_participants_says_what_to_do():
    module = Collaborative(network="convnet", width=2, participants=10, data_spec=Digits().spec)
    with pytest.raises(BenchError, match="batch_size"):
        _trainer(max_steps=1).fit(module, Digits(batch_size=4, pool_limit=32))


class _ReportBuffers(Callback):
    """Writes, from every rank, how far its batch-norm statistics are from every other rank's."""

    def __init__(self, directory: str) -> None:
        self.directory = directory

    def on_fit_end(self, trainer, pl_module) -> None:
        import torch.distributed as dist

        flat = torch.cat([b.detach().flatten() for b in pl_module.buffers() if b.is_floating_point()])
        gathered = [torch.zeros_like(flat) for _ in range(trainer.world_size)]
        dist.all_gather(gathered, flat)
        difference = max((g - flat).abs().max().item() for g in gathered)
        (Path(self.directory) / f"buffers{trainer.global_rank}.json").write_text(json.dumps(difference))


@pytest.mark.slow
def test_collaborative_under_ddp_keeps_weights_and_statistics_in_sync(tmp_path):
    from test_ddp import _ReportRanks

    datamodule = Digits(batch_size=8, pool_limit=64)
    module = Collaborative(network="convnet", width=4, participants=4, defense="gaussian", data_spec=datamodule.spec)
    trainer = _trainer(
        devices=2,
        strategy="ddp_spawn",
        max_epochs=1,
        limit_val_batches=1,
        callbacks=[_ReportRanks(str(tmp_path)), _ReportBuffers(str(tmp_path))],
    )
    trainer.fit(module, datamodule)
    reports = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert all(report["world_size"] == 2 for report in reports)
    # each rank averaged its two participants; the all-reduce made every update (and batch-norm statistics) global
    assert max(report["max_weight_difference"] for report in reports) == 0.0
    assert max(json.loads((tmp_path / f"buffers{rank}.json").read_text()) for rank in (0, 1)) == 0.0


# ---------------------------------------------------------------------------- precision
def test_bf16_mixed_on_the_cpu_is_refused_before_training(digits):
    module = Collaborative(network="convnet", width=2, data_spec=digits.spec)
    module.training_step = lambda *a: pytest.fail("Collaborative trained")
    with pytest.raises(BenchError, match="full precision") as error:
        _trainer(max_steps=1, precision="bf16-mixed").fit(module, digits)
    assert "\n" not in str(error.value)


def test_a_loss_scaled_precision_is_refused_before_training(digits):
    from unittest.mock import MagicMock, PropertyMock, patch

    module = Collaborative(network="convnet", width=2, data_spec=digits.spec)
    with patch.object(type(module), "trainer", new_callable=PropertyMock) as trainer:
        trainer.return_value = MagicMock(precision="16-mixed", world_size=1)
        with pytest.raises(BenchError, match="65,536x too small"):
            module.setup("fit")
