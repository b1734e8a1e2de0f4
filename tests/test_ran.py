"""RAN (Algorithm 1) and the baselines of its evaluation: Noisy and DNN(resized)."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from helpers import StepRecorder
from helpers import quiet_trainer as _trainer
from helpers import synthetic_spec as _spec

from bench.datamodules import Digits
from bench.errors import BenchError
from bench.modules import RAN, NoisyInput
from bench.modules.noisy_input import LaplaceNoise
from bench.modules.ran import reconstruction_error
from bench.modules.resized_dnn import ResizedDNN

SHAPES = [(1, 8, 8), (1, 28, 28), (3, 32, 32)]


class _RecordingRAN(StepRecorder, RAN):
    recorded_parts = ("encoder", "classifier", "decoder")


@pytest.mark.parametrize("k", [1, 3])
def test_update_schedule_follows_algorithm_1(k):
    datamodule = Digits(batch_size=32, pool_limit=64)
    module = _RecordingRAN(data_spec=datamodule.spec, stage_pairs=k, lam=0.5)
    trainer = _trainer(limit_train_batches=2)
    trainer.fit(module, datamodule)
    ec, d = frozenset({"encoder", "classifier"}), frozenset({"decoder"})
    one_batch = [("O_d", ec), ("O_g", d)] * k + [("O_a", ec)]
    assert module.steps == one_batch * 2
    # manual optimization: Lightning counts every optimizer step
    assert trainer.global_step == 2 * (2 * k + 1)


def test_lambda_one_is_plain_classification_and_lambda_zero_pure_privacy():
    spec = _spec((1, 8, 8))
    images, labels = torch.rand(6, 1, 8, 8), torch.randint(0, 10, (6,))
    module = RAN(data_spec=spec, lam=1.0).eval()
    cross_entropy = F.cross_entropy(module.classifier(module.encoder(images)), labels)
    assert torch.equal(module.adversarial_objective(images, labels), cross_entropy)
    module.zero_grad()
    module.adversarial_objective(images, labels).backward()
    assert all(p.grad is None for p in module.decoder.parameters()), "at lambda = 1 the decoder plays no part"

    pure = RAN(data_spec=spec, lam=0.0).eval()
    expected = -reconstruction_error(pure.decoder(pure.encoder(images)), images)
    torch.testing.assert_close(pure.adversarial_objective(images, labels), expected)


@pytest.mark.parametrize("lam", [-0.1, 1.5])
def test_lambda_outside_the_unit_interval_is_rejected(lam):
    from bench.errors import BenchError

    with pytest.raises(BenchError, match="lam"):
        RAN(data_spec=_spec((1, 8, 8)), lam=lam)


@pytest.mark.parametrize(
    ("network", "shape"),
    [("lenet5", shape) for shape in SHAPES] + [("vgg9", shape) for shape in SHAPES if shape[1] >= 16],
)  # vgg9's 4 poolings need 16x16
def test_decoder_mirrors_the_encoder_back_to_the_input_shape(shape, network):
    module = RAN(data_spec=_spec(shape), network=network).eval()
    images = torch.rand(2, *shape)
    reconstructed = module.own_reconstruction(module.release(images))
    assert reconstructed.shape == images.shape
    assert reconstructed.min() >= 0 and reconstructed.max() <= 1
    assert reconstruction_error(images, images) == 0


def test_an_image_too_small_for_the_network_gets_a_clear_error():
    from bench.errors import BenchError

    with pytest.raises(BenchError, match="too small"):
        RAN(data_spec=_spec((1, 8, 8)), network="vgg9")


def test_own_decoder_is_recorded_beside_the_separate_attacker():
    from bench.attacks import FeatureInversion, OwnDecoder
    from bench.harness import evaluate
    from bench.modules import SplitNetwork

    datamodule = Digits(pool_limit=64)
    attacks = [FeatureInversion(epochs=1, progress=False), OwnDecoder()]
    ran = evaluate(RAN(data_spec=datamodule.spec), datamodule, attacks)
    assert [entry["attack"] for entry in ran.privacy] == ["feature_inversion", "own_decoder"]
    # a method without its own decoder is scored by the separate attacker only
    dnn = evaluate(SplitNetwork(data_spec=datamodule.spec), datamodule, attacks)
    assert [entry["attack"] for entry in dnn.privacy] == ["feature_inversion"]


@pytest.mark.slow
def test_ran_under_ddp_keeps_every_sub_network_in_sync(tmp_path):
    from test_ddp import _ReportRanks

    datamodule = Digits(batch_size=32, pool_limit=128)
    module = RAN(data_spec=datamodule.spec, stage_pairs=2)
    trainer = _trainer(devices=2, strategy="ddp_spawn", limit_val_batches=1, callbacks=[_ReportRanks(str(tmp_path))])
    trainer.fit(module, datamodule)
    reports = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert all(report["world_size"] == 2 for report in reports)
    assert max(report["max_weight_difference"] for report in reports) == 0.0


# ---------------------------------------------------------------------------- baselines
def test_laplace_noise_has_the_requested_scale():
    torch.manual_seed(0)
    noise = LaplaceNoise(0.3)(torch.zeros(200_000))
    # Laplace(0, b): mean 0, E|X| = b, Var = 2 b^2
    assert noise.mean().abs() < 0.005
    assert noise.abs().mean() == pytest.approx(0.3, rel=0.01)
    assert noise.var() == pytest.approx(2 * 0.3**2, rel=0.02)


def test_noisy_input_releases_the_noisy_image():
    module = NoisyInput(data_spec=_spec((1, 8, 8)), noise_factor=0.0)
    images = torch.rand(3, 1, 8, 8)
    assert torch.equal(module.release(images), images)
    noisy = NoisyInput(data_spec=_spec((1, 8, 8)), noise_factor=0.5).release(images)
    assert noisy.shape == images.shape and not torch.equal(noisy, images)


def test_resized_dnn_two_phases_and_pca():
    datamodule = Digits(batch_size=32, pool_limit=256)
    module = ResizedDNN(data_spec=datamodule.spec, components=8, noise_factor=0.0, pretrain_fraction=0.5)
    trainer = _trainer(max_epochs=2)
    trainer.fit(module, datamodule)
    assert bool(module.pca_fitted)
    axes = module.projection.weight
    torch.testing.assert_close(axes @ axes.T, torch.eye(8), atol=1e-4, rtol=0)
    # with no noise the released features are the principal components of the training features
    module.eval()
    images, _ = datamodule.pool("train").tensors()
    with torch.no_grad():
        released = module.release(images)
    torch.testing.assert_close(released.mean(0), torch.zeros(8), atol=1e-4, rtol=0)
    variances = released.var(0)
    assert torch.all(variances[:-1] >= variances[1:] - 1e-5), "components come in order of explained variance"
    torch.testing.assert_close(released.std(0), module.component_std, rtol=1e-3, atol=1e-5)
    assert not any(p.requires_grad for p in module.encoder.parameters()), "phase 2 keeps the encoder PCA was fitted on"


def test_checkpoints_carry_all_three_optimizers_and_resume_them(tmp_path):
    datamodule = Digits(batch_size=32, pool_limit=64)  # 2 batches per epoch
    first = _trainer(default_root_dir=tmp_path, enable_checkpointing=True)
    first.fit(RAN(data_spec=datamodule.spec, stage_pairs=3), datamodule)
    checkpoint = torch.load(first.checkpoint_callback.best_model_path, weights_only=True)

    def adam_steps(optimizer_state):
        return {int(state["step"]) for state in optimizer_state["state"].values()}

    # Algorithm 1 per batch: k steps of O_d, k of O_g, one of O_a
    assert [adam_steps(state) for state in checkpoint["optimizer_states"]] == [{6}, {6}, {2}]
    resumed = _trainer(max_epochs=2, default_root_dir=tmp_path)
    module = RAN(data_spec=datamodule.spec, stage_pairs=3)
    resumed.fit(module, datamodule, ckpt_path=first.checkpoint_callback.best_model_path)
    assert [adam_steps(optimizer.state_dict()) for optimizer in resumed.optimizers] == [{12}, {12}, {4}]
    assert resumed.global_step == 2 * 2 * 7


def test_laplace_noise_stays_finite_when_the_uniform_draw_is_zero(monkeypatch):
    # rand() == 0 happens about once per 2^24 draws, i.e. within an epoch of MNIST-sized noisy images
    monkeypatch.setattr(torch.Tensor, "uniform_", lambda self, low=0.0, high=1.0: self.fill_(low))
    assert torch.isfinite(LaplaceNoise(0.1)(torch.zeros(1000))).all()


def test_the_deprecated_k_still_sets_stage_pairs_with_a_warning():
    with pytest.warns(DeprecationWarning, match="`k` is deprecated.*use `stage_pairs`"):
        module = RAN(data_spec=_spec(), k=2)
    assert module.hparams.stage_pairs == 2 and "k" not in module.hparams
    assert module.fresh_copy().hparams.stage_pairs == 2  # shadow models are built from the new name
    with pytest.raises(BenchError, match="give `stage_pairs` only"):
        RAN(data_spec=_spec(), k=2, stage_pairs=4)
