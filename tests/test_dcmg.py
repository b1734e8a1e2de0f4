"""DCM, DCMG, DCMG-O, DCMG-N (Wang et al., AAAI 2024) and the attacks of a server that knows A."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from helpers import quiet_trainer as _trainer
from helpers import synthetic_spec as _spec

from bench.attacks import (
    AffineInversion,
    FeatureInversion,
    MeasurementDecoder,
    OwnDecoder,
    PseudoInverse,
    ReleasedTrainingData,
)
from bench.attacks.compressed_reconstruction import per_image_similarity
from bench.datamodules import Digits
from bench.errors import BenchError
from bench.harness import evaluate
from bench.modules import DCM, DCMG, DCMGN, DCMGO, SplitNetwork

SMALL = {"generator_channels": [8, 4], "generator_kernel": 3, "classifier_channels": [4, 8], "classifier_hidden": 16}


def _build(cls, spec, seed=0, **kwargs):
    torch.manual_seed(seed)
    arguments = {key: value for key, value in SMALL.items() if cls is not DCM or not key.startswith("generator")}
    return cls(data_spec=spec, **{**arguments, **kwargs}).eval()


# ---------------------------------------------------------------------------- the variants
def test_dcm_dcmg_and_dcmg_o_differ_only_where_the_paper_says():
    spec = _spec((1, 8, 8))
    dcm, dcmg, dcmg_o = (_build(cls, spec) for cls in (DCM, DCMG, DCMGO))
    images, labels = torch.rand(6, 1, 8, 8), torch.randint(0, 10, (6,))

    # DCMG and DCMG-O: the same network from the same seed; only lambda of Eq. 2 differs (0 and 1e5)
    state, state_o = dcmg.state_dict(), dcmg_o.state_dict()
    assert state.keys() == state_o.keys()
    assert all(torch.equal(state[key], state_o[key]) for key in state)
    parts, parts_o = dcmg.objective(images, labels), dcmg_o.objective(images, labels)
    torch.testing.assert_close(parts_o["cross_entropy"], parts["cross_entropy"])
    assert "reconstruction" not in parts, "DCMG (lambda = 0) never looks at the images it reconstructs"
    x_hat = dcmg_o.own_reconstruction(dcmg_o.release(images))
    expected = (x_hat - images).square().flatten(1).sum(1).mean()  # ||x - x_hat||^2 per sample
    torch.testing.assert_close(parts_o["reconstruction"], expected)
    torch.testing.assert_close(parts_o["loss"], 1e5 * expected + parts["cross_entropy"])

    # DCM: the same A, A^T lift and classifier, but no generator convolutions: the classifier sees A^T y
    dcm_state = dcm.state_dict()
    assert set(state) - set(dcm_state) == {key for key in state if key.startswith("refine.")}
    assert set(dcm_state) <= set(state)
    assert all(torch.equal(dcm_state[key], state[key]) for key in dcm_state)
    y = dcm.release(images)
    torch.testing.assert_close(dcm.server_signal(y), (y @ dcm.measurement_matrix()).view_as(images))
    assert not callable(getattr(dcm, "own_reconstruction", None)), "DCM has no generator to score"


def test_dcmg_n_trains_on_x_noise_and_sends_y_noise():
    spec = _spec((1, 8, 8))
    dcmg_o, dcmg_n = _build(DCMGO, spec), _build(DCMGN, spec)
    images, labels = torch.rand(6, 1, 8, 8), torch.randint(0, 10, (6,))
    matrix = dcmg_n.measurement_matrix()
    torch.testing.assert_close(matrix, dcmg_o.measurement_matrix(), rtol=0, atol=0)  # the same A from the same seed

    # Eq. 5: what the client sends (training and test alike) is A x_noise, whichever eta_r the image drew
    noisy = dcmg_n.noise(images)
    torch.testing.assert_close(dcmg_n.release(images), noisy.flatten(1) @ matrix.T, atol=2e-5, rtol=0)
    torch.testing.assert_close(dcmg_o.release(images), images.flatten(1) @ matrix.T)
    # Eq. 4: the generator's target is x_noise, never x
    x_hat = dcmg_n.own_reconstruction(dcmg_n.release(images))
    torch.testing.assert_close(
        dcmg_n.objective(images, labels)["reconstruction"], (x_hat - noisy).square().flatten(1).sum(1).mean()
    )
    # apart from the client's noise, the network is DCMG-O's
    state_o, state_n = dcmg_o.state_dict(), dcmg_n.state_dict()
    shared = [key for key in state_o if not key.startswith("client.")]
    assert all(torch.equal(state_o[key], state_n[key]) for key in shared)
    assert {key for key in state_n if key not in state_o} == {
        "client.1.bias",
        "noise.eta_c",
        "noise.candidates",
        "noise.key_weights",
    }


@pytest.mark.parametrize(
    "shape, rate, measurements",
    [((1, 28, 28), 0.05, 39), ((1, 28, 28), 0.25, 196), ((3, 32, 32), 0.1, 307), ((3, 32, 32), 0.25, 768)],
)
@pytest.mark.parametrize("cls", [DCM, DCMGN])
def test_mnist_svhn_and_cifar_shapes(cls, shape, rate, measurements):
    module = _build(cls, _spec(shape), measurement_rate=rate)
    images = torch.rand(3, *shape)
    released = module.release(images)
    assert released.shape == (3, measurements)
    assert module.measurement_matrix().shape == (measurements, math.prod(shape))
    assert module(images).shape == (3, 10)
    assert module.server_signal(released).shape == images.shape


def test_training_updates_the_server_but_never_a():
    datamodule = Digits(batch_size=16, pool_limit=32)
    module = _build(DCMGN, datamodule.spec).train()
    frozen = {name: p.detach().clone() for name, p in module.named_parameters() if not p.requires_grad}
    learned = {name: p.detach().clone() for name, p in module.named_parameters() if p.requires_grad}
    assert set(frozen) == {"client.1.weight", "client.1.bias", "lift.transpose.weight"}
    _trainer(limit_train_batches=2).fit(module, datamodule)
    assert all(torch.equal(frozen[name], p) for name, p in module.named_parameters() if name in frozen)
    changed = {
        name.split(".")[0]
        for name, p in module.named_parameters()
        if name in learned and not torch.equal(learned[name], p)
    }
    assert changed == {"classifier", "refine"}


@pytest.mark.parametrize(
    "cls, arguments, message",
    [
        (DCMG, {"measurement_rate": 0.0}, "measurement_rate"),
        (DCMG, {"measurement_rate": 1.5}, "measurement_rate"),
        (DCMGO, {"lam": -1.0}, "lam"),
        (DCMG, {"generator_kernel": 4}, "generator_kernel"),
        (DCMGN, {"lam_noise": 0.0}, "lam_noise"),
        (DCMGN, {"measurement_rate": 1.0}, "null space"),
    ],
)
def test_bad_hyper_parameters_are_rejected(cls, arguments, message):
    with pytest.raises(BenchError, match=message):
        cls(data_spec=_spec((1, 8, 8)), **arguments)


def test_records_name_each_variant_by_its_own_arguments():
    spec = _spec((1, 8, 8))
    assert _build(DCMGN, spec, measurement_rate=0.25).label == "DCMG-N (measurement_rate=0.25)"
    assert "generator_channels" not in DCM(data_spec=spec).hparams  # DCM has no generator
    assert "lam" not in DCMG(data_spec=spec).hparams  # DCMG is lambda = 0 by definition
    assert DCMGO(data_spec=spec).hparams["lam"] == 1e5


# ---------------------------------------------------------------------------- attacks
def test_pseudo_inverse_is_the_least_squares_estimate():
    datamodule = Digits(pool_limit=32)
    # with as many measurements as pixels, A is invertible and A^+ y gives every image back
    full = evaluate(_build(DCMG, datamodule.spec, measurement_rate=1.0), datamodule, [PseudoInverse()])
    assert full.privacy[0]["metrics"]["psnr"] > 50
    # with fewer, A^+ y is the projection of x onto A's row space, and solves A x_hat = y exactly
    module = _build(DCMG, datamodule.spec, measurement_rate=0.25)
    images = datamodule.pool("test").tensors()[0]
    matrix = module.measurement_matrix().double()
    released = module.release(images).double()
    estimate = released @ torch.linalg.pinv(matrix).T
    torch.testing.assert_close(estimate @ matrix.T, released)
    partial = evaluate(module, datamodule, [PseudoInverse()]).privacy[0]
    assert partial["metrics"]["mse"] == pytest.approx(
        F.mse_loss(estimate.float().clamp(0, 1).view_as(images), images).item(), rel=1e-4
    )


def test_the_attacks_that_need_a_apply_only_to_methods_that_share_it():
    datamodule = Digits(pool_limit=48)
    attacks = [
        FeatureInversion(epochs=1, progress=False),
        OwnDecoder(),
        PseudoInverse(),
        MeasurementDecoder(epochs=1, progress=False),
        AffineInversion(),
        ReleasedTrainingData(),
    ]
    applied = {}
    for cls in (DCM, DCMG, DCMGO, DCMGN, SplitNetwork):
        module = _build(cls, datamodule.spec) if cls is not SplitNetwork else SplitNetwork(data_spec=datamodule.spec)
        applied[cls.__name__] = [attack.name for attack in attacks if attack.applies_to(module)]
    matrix_attacks = ["pseudo_inverse", "measurement_decoder", "affine_inversion"]
    assert applied["DCM"] == ["feature_inversion"] + matrix_attacks
    assert applied["DCMG"] == ["feature_inversion", "own_decoder"] + matrix_attacks
    assert applied["DCMGO"] == applied["DCMGN"] == applied["DCMG"] + ["released_training_data"]
    assert applied["SplitNetwork"] == ["feature_inversion"]


def test_every_attack_reconstructs_a_released_measurement_vector():
    datamodule = Digits(pool_limit=48)
    module = _build(DCMGN, datamodule.spec, measurement_rate=0.25)
    attacks = [
        FeatureInversion(decoder="mirror", epochs=2, progress=False),
        FeatureInversion(decoder="upsampling", epochs=2, progress=False),
        OwnDecoder(),
        PseudoInverse(),
        MeasurementDecoder(epochs=2, progress=False),
    ]
    evaluation = evaluate(module, datamodule, attacks)
    assert [entry["attack"] for entry in evaluation.privacy] == [
        "feature_inversion",
        "feature_inversion",
        "own_decoder",
        "pseudo_inverse",
        "measurement_decoder",
    ]
    # the mirror decoder inverts the client's flatten-and-measure layers, no fall-back needed
    assert [entry["details"].get("decoder_used") for entry in evaluation.privacy[:2]] == ["mirror", "upsampling"]
    for entry in evaluation.privacy:
        assert {"mse", "mae", "psnr", "ssim"} <= set(entry["metrics"])  # beside the per-image verdicts
        assert all(math.isfinite(value) for value in entry["metrics"].values())
        originals, reconstructions, *_ = evaluation.examples[entry["attack"]]
        assert originals.shape == reconstructions.shape
    # measurements are float32: 4 bytes each, against one byte per raw pixel
    assert evaluation.cost["released_bytes_per_sample"] == 4 * 16 and evaluation.cost["raw_bytes_per_sample"] == 64


def test_methods_sharing_a_train_the_measurement_decoder_and_the_feature_decoders_once(tmp_path, monkeypatch):
    from bench.attacks import feature_inversion

    datamodule = Digits(pool_limit=48)
    dcm, dcmg = (_build(cls, datamodule.spec, measurement_rate=0.25) for cls in (DCM, DCMG))
    assert torch.equal(dcm.measurement_matrix(), dcmg.measurement_matrix())  # the same seeded A: the same release

    def attacks():
        return [
            FeatureInversion(decoder=["upsampling", "affine"], epochs=2, progress=False),
            MeasurementDecoder(epochs=2, progress=False),
        ]

    def run(module, cache):
        feature_inversion.clear_fitted_decoders()  # each method in its own process
        return evaluate(module, datamodule, attacks(), shadow_cache=cache)

    alone = run(dcmg, None)
    first = run(dcm, tmp_path)
    assert (first.cost["decoders_trained"], first.cost["decoders_loaded"]) == (3, 0)
    monkeypatch.setattr(feature_inversion, "fit_decoder", lambda *args, **kwargs: pytest.fail("a decoder trained"))
    monkeypatch.setattr(
        "bench.attacks.compressed_reconstruction.fit_decoder", lambda *args, **kwargs: pytest.fail("trained")
    )
    shared = run(dcmg, tmp_path)
    assert (shared.cost["decoders_trained"], shared.cost["decoders_loaded"]) == (0, 3)
    for loaded, trained in zip(shared.privacy, alone.privacy):  # exactly what DCMG's own decoders give
        assert loaded["metrics"] == trained["metrics"] and loaded["details"] == trained["details"]


def test_affine_inversion_learns_the_offset_of_eq_5_from_queried_pairs():
    datamodule = Digits(pool_limit=256)
    attacks = [AffineInversion(), PseudoInverse()]
    plain = evaluate(_build(DCMGO, datamodule.spec, measurement_rate=0.25), datamodule, attacks).privacy
    noisy = evaluate(_build(DCMGN, datamodule.spec, measurement_rate=0.25), datamodule, attacks).privacy
    # y_noise is an affine map of y: a server holding (x, y_noise) pairs inverts it as well as y itself
    assert noisy[0]["metrics"]["psnr"] == pytest.approx(plain[0]["metrics"]["psnr"], abs=0.05)
    # while the pseudo-inverse, which knows A but not the offset, does worse on y_noise than on y
    assert noisy[1]["metrics"]["psnr"] < plain[1]["metrics"]["psnr"]
    assert noisy[0]["metrics"]["psnr"] > noisy[1]["metrics"]["psnr"]


def test_released_training_data_scores_what_the_server_receives_for_training():
    datamodule = Digits(pool_limit=64)
    originals = evaluate(_build(DCMGO, datamodule.spec), datamodule, [ReleasedTrainingData()]).privacy[0]["metrics"]
    assert originals == {
        "psnr_max": 100.0,
        "psnr_mean": 100.0,
        "ssim_max": pytest.approx(1.0),
        "ssim_mean": pytest.approx(1.0),
        "fsim_max": pytest.approx(1.0),
        "fsim_mean": pytest.approx(1.0),
    }

    module = _build(DCMGN, datamodule.spec)
    noisy = evaluate(module, datamodule, [ReleasedTrainingData(batch_size=16)]).privacy[0]["metrics"]
    images = datamodule.pool("train").tensors()[0]
    psnr, ssim, fsim = per_image_similarity(module.noise(images), images, fsim=True)
    assert noisy["psnr_max"] == pytest.approx(psnr.max().item()) and noisy["ssim_mean"] == pytest.approx(
        ssim.mean().item()
    )
    assert noisy["fsim_max"] == pytest.approx(fsim.max().item())
    # the paper's Table 2 for MNIST: 6.93 dB and 0.2487 at most (FSIM's multi-scale filters say little on 8x8 digits)
    assert noisy["psnr_max"] < 15 and noisy["ssim_max"] < 0.5


# ---------------------------------------------------------------------------- end to end
@pytest.mark.slow
def test_dcmg_n_under_ddp_keeps_both_processes_in_sync(tmp_path):
    from test_ddp import _ReportRanks

    datamodule = Digits(batch_size=32, pool_limit=128)
    module = _build(DCMGN, datamodule.spec)
    trainer = _trainer(devices=2, strategy="ddp_spawn", limit_val_batches=1, callbacks=[_ReportRanks(str(tmp_path))])
    trainer.fit(module, datamodule)
    reports = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert all(report["world_size"] == 2 for report in reports)
    assert max(report["max_weight_difference"] for report in reports) == 0.0


@pytest.mark.slow
def test_tiny_config_trains_and_records_every_attack(tmp_path, monkeypatch):
    from bench.cli import main
    from bench.records import load_records

    monkeypatch.chdir(tmp_path)
    main(["fit", "--config", "dcmg/tiny_dcmgn", "--trainer.logger", "false", "--trainer.enable_progress_bar", "false"])
    record = load_records([tmp_path / "runs" / "leaderboard" / "records"]).records[0]
    assert record["method"]["label"] == "DCMG-N (measurement_rate=0.25)"
    assert record["utility"]["accuracy"] > 0.3  # ten classes: chance is 0.1
    attacks = {entry["attack"]: entry["metrics"] for entry in record["privacy"]}
    assert set(attacks) == {
        "feature_inversion",
        "own_decoder",
        "pseudo_inverse",
        "measurement_decoder",
        "affine_inversion",
        "released_training_data",
    }
    assert record["paper"] is None, "the 8x8 digits are no setting of the paper: no paper value beside ours"
    assert attacks["released_training_data"]["psnr_max"] < 15  # x_noise, not the originals
