"""The harness attacks what a method declares, nothing else, and its numbers mean what they say."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import pytest
import torch
from torch import Tensor, nn

from bench.attacks import FeatureInversion
from bench.datamodules import DataSpec, Digits
from bench.harness import evaluate
from bench.modules.base import PrivacyModule
from bench.threat_models import ThreatModel


class _Releasing(PrivacyModule):
    """A test method that releases a fixed function of its input and classifies with a linear layer."""

    abstract = True  # not a registered method
    threat_models = (ThreatModel.FEATURE_RELEASE,)

    def __init__(self, data_spec: Optional[DataSpec] = None) -> None:
        super().__init__(data_spec=data_spec)
        self.client = nn.Identity()
        self.head = nn.Sequential(nn.Flatten(), nn.LazyLinear(data_spec.num_classes))

    def release(self, x: Tensor) -> Tensor:
        return self.client(x)

    def predict_from_release(self, released: Tensor) -> Tensor:
        return self.head(released.real if released.is_complex() else released)

    def client_network(self) -> nn.Module:
        return self.client


class _ReleasesNothing(_Releasing):
    abstract = True

    def release(self, x: Tensor) -> Tensor:
        return torch.zeros_like(x)


class _OutputsOnly(PrivacyModule):
    abstract = True
    threat_models = (ThreatModel.BLACK_BOX_OUTPUTS,)

    def __init__(self, data_spec: Optional[DataSpec] = None) -> None:
        super().__init__(data_spec=data_spec)
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


@pytest.fixture(scope="module")
def digits():
    return Digits(pool_limit=200)


def _attack(epochs: int = 60):
    return FeatureInversion(decoder="upsampling", epochs=epochs, batch_size=32, lr=3e-3, progress=False)


def test_inversion_separates_a_leaky_release_from_an_empty_one(digits):
    leaky = evaluate(_Releasing(digits.spec), digits, [_attack()]).privacy[0]["metrics"]
    empty = evaluate(_ReleasesNothing(digits.spec), digits, [_attack()]).privacy[0]["metrics"]
    test_images = digits.pool("test").tensors()[0]
    # with nothing released the best decoder outputs the attacker pool's mean image: MSE near the pixel variance
    assert empty["mse"] > 0.5 * test_images.var(dim=0).mean().item()
    assert leaky["mse"] < 0.5 * empty["mse"]
    assert leaky["psnr"] > empty["psnr"] and leaky["ssim"] > empty["ssim"]


def test_evaluation_is_deterministic_in_its_seed(digits):
    module = _Releasing(digits.spec)
    first = evaluate(module, digits, [_attack(epochs=3)], seed=7)
    second = evaluate(module, digits, [_attack(epochs=3)], seed=7)
    assert first.privacy[0]["metrics"] == second.privacy[0]["metrics"]
    assert first.utility == second.utility


def test_only_attacks_of_declared_threat_models_run(digits):
    evaluation = evaluate(_OutputsOnly(digits.spec), digits, [_attack(epochs=1)])
    assert evaluation.privacy == []
    assert "released_bytes_per_sample" not in evaluation.cost


def test_complex_releases_are_attacked_with_real_and_imaginary_channels(digits):
    class ComplexRelease(_Releasing):
        abstract = True

        def release(self, x: Tensor) -> Tensor:
            return torch.complex(x, -x)

    evaluation = evaluate(ComplexRelease(digits.spec), digits, [_attack(epochs=2)])
    assert evaluation.cost["released_bytes_per_sample"] == 64 * 8  # complex64
    assert evaluation.privacy[0]["details"]["decoder_used"] == "upsampling"


def test_cost_counts_parameters_bytes_and_flops(digits):
    from bench.modules import SplitNetwork

    module = SplitNetwork(data_spec=digits.spec)
    cost = evaluate(module, digits, []).cost
    assert cost["parameters"] == sum(p.numel() for p in module.parameters())
    assert cost["released_bytes_per_sample"] == module.release(torch.zeros(1, 1, 8, 8)).numel() * 4
    assert cost["raw_bytes_per_sample"] == 64
    assert cost["client_flops_per_sample"] > 0


def test_mirror_decoder_falls_back_when_the_client_cannot_be_mirrored(digits):
    with pytest.warns(UserWarning, match="falling back"):
        evaluation = evaluate(
            _Releasing(digits.spec), digits, [FeatureInversion(decoder="mirror", epochs=1, progress=False)]
        )
    # an Identity client has no layer to mirror: the record says which decoder was used instead
    assert evaluation.privacy[0]["details"]["decoder_used"] == "upsampling"
    assert evaluation.privacy[0]["config"]["decoder"] == "mirror"


# ------------------------------------------------------------------ the evaluator: one failure costs nothing else
class _Failing(FeatureInversion):
    """An attack that raises after training, as NasrAttack once did: the other attacks' results must survive."""

    name = "failing_inversion"

    def run(self, module, datamodule, generator):
        raise RuntimeError("simulated attack failure\nsecond line of the message")


def _evaluator(tmp_path, attacks):
    from bench.evaluator import Evaluator

    return Evaluator(attacks=attacks, records_dir=str(tmp_path / "records"))


def _run(evaluator, module, datamodule, log_dir=None):
    from bench.records import run_facts_from_config

    return evaluator.run(
        module, datamodule, config={}, training=None, run=run_facts_from_config({}, None), log_dir=log_dir
    )


def test_a_failing_attack_keeps_every_other_attacks_result(digits, tmp_path, capsys):
    from bench.records import load_records

    outcome = _run(_evaluator(tmp_path, [_attack(epochs=1), _Failing(epochs=1)]), _Releasing(digits.spec), digits)
    (record,) = load_records([tmp_path / "records"]).models
    good, failed = record.privacy
    assert good.attack == "feature_inversion" and good.metrics and good.error is None
    assert failed.attack == "failing_inversion" and failed.metrics == {}
    assert failed.error == "RuntimeError: simulated attack failure"
    assert outcome.failed_attacks == ["failing_inversion"] and not outcome.complete
    summary = outcome.summary()
    assert "failing_inversion FAILED: RuntimeError: simulated attack failure" in summary
    assert "feature_inversion mse" in summary
    error = str(outcome.incomplete_error())
    assert "failing_inversion failed" in error and str(outcome.path) in error
    assert "Traceback" not in capsys.readouterr().err


def test_every_attack_entry_says_its_wall_time_and_device_and_the_summary_shows_them(digits, tmp_path):
    from bench.records import load_records

    outcome = _run(_evaluator(tmp_path, [_attack(epochs=1), _Failing(epochs=1)]), _Releasing(digits.spec), digits)
    (record,) = load_records([tmp_path / "records"]).models
    good, failed = record.privacy
    assert good.seconds is not None and good.seconds > 0 and good.device == "cpu"
    assert failed.seconds is not None and failed.seconds >= 0 and failed.device == "cpu"  # a failure's time counts too
    assert good.seconds <= record.cost["evaluation_seconds"]
    summary = outcome.summary()
    assert f"({good.seconds:.1f} s, cpu)" in summary and f"({failed.seconds:.1f} s, cpu)" in summary


def test_a_record_without_attack_times_still_reads():
    from bench.records import PrivacyEntry

    entry = PrivacyEntry.model_validate(
        {"attack": "lira", "threat_model": "black_box_outputs", "metrics": {}, "directions": {}}
    )
    assert entry.seconds is None and entry.device is None


def test_an_unwritable_records_folder_keeps_the_record_in_the_log_folder(digits, tmp_path, monkeypatch, capsys):
    import bench.evaluator
    from bench.records import load_records, write_record

    records = tmp_path / "records"

    def full_disk(record, directory):
        if Path(directory) == records:
            raise OSError(28, "No space left on device")
        return write_record(record, directory)

    monkeypatch.setattr(bench.evaluator, "write_record", full_disk)
    outcome = _run(
        _evaluator(tmp_path, [_attack(epochs=1)]), _Releasing(digits.spec), digits, log_dir=str(tmp_path / "logs")
    )
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if "could not be written" in line]
    assert len(warnings) == 1 and "No space left on device" in warnings[0] and "Traceback" not in err
    assert outcome.path.parent == tmp_path / "logs" / "fallback-record" and outcome.fallback_from == str(records)
    assert load_records([outcome.path]).problems == [] and not list(records.glob("*.json"))
    assert f"result record: {outcome.path} (records folder {records} could not be written)" in outcome.summary()
    assert not outcome.complete


def test_the_run_facts_come_from_the_trainer(tmp_path):
    import lightning as L

    from bench.evaluator import run_facts_from_trainer
    from bench.modules import SplitNetwork

    datamodule = Digits(batch_size=8, pool_limit=24)
    trainer = L.Trainer(
        max_epochs=1,
        limit_train_batches=1,
        limit_val_batches=0,
        logger=False,
        accelerator="cpu",
        accumulate_grad_batches=3,
        precision="bf16-mixed",
        default_root_dir=tmp_path,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    trainer.fit(SplitNetwork(data_spec=datamodule.spec), datamodule)
    facts = run_facts_from_trainer(trainer, datamodule, {"config": ["/x/bench/configs/dnn/mnist.yaml"]})
    assert facts == {
        "world_size": 1,
        "effective_batch": 24,
        "precision": "bf16-mixed",
        "config_names": ["dnn/mnist"],
        "budget": {"unit": "epochs", "value": 1},
    }


def test_bench_fit_with_a_failing_attack_writes_the_record_prints_the_summary_and_exits_1(
    tmp_path, monkeypatch, capsys
):
    from bench.attacks import LossThreshold
    from bench.cli import main
    from bench.records import load_records

    def out_of_memory(self, module, datamodule, generator):
        raise RuntimeError("CUDA out of memory (simulated)")

    monkeypatch.setattr(LossThreshold, "run", out_of_memory)
    monkeypatch.chdir(tmp_path)
    attacks = (
        '[{"class_path": "FeatureInversion", "init_args": {"epochs": 1, "progress": false}}, '
        '{"class_path": "LossThreshold", "init_args": {"shadow_epochs": 1}}]'
    )
    with pytest.raises(SystemExit) as exit_:
        main(
            [
                "fit",
                "--model",
                "SplitNetwork",
                "--data",
                "Digits",
                "--data.pool_limit",
                "48",
                "--trainer.max_epochs",
                "1",
                "--trainer.limit_train_batches",
                "2",
                "--trainer.enable_progress_bar",
                "false",
                "--trainer.logger",
                "false",
                "--evaluation.attacks",
                attacks,
            ]
        )
    captured = capsys.readouterr()
    assert exit_.value.code == 1
    assert "loss_threshold FAILED: RuntimeError: CUDA out of memory (simulated)" in captured.out
    errors = [line for line in captured.err.splitlines() if line.startswith("bench: error:")]
    assert len(errors) == 1 and "loss_threshold failed" in errors[0] and "Traceback" not in captured.err
    (record,) = load_records([tmp_path / "runs" / "leaderboard" / "records"]).models
    assert {entry.attack: entry.error for entry in record.privacy} == {
        "feature_inversion": None,
        "loss_threshold": "RuntimeError: CUDA out of memory (simulated)",
    }
    assert (tmp_path / "runs" / "leaderboard" / "README.md").is_file()  # the CLI refreshed the leaderboard


def test_feature_inversion_reports_the_worst_case_over_decoder_families(digits):
    attack = FeatureInversion(decoder=["upsampling", "affine"], epochs=3, batch_size=32, lr=3e-3, progress=False)
    evaluation = evaluate(_Releasing(digits.spec), digits, [attack])
    details, metrics = evaluation.privacy[0]["details"], evaluation.privacy[0]["metrics"]
    assert details["worst_case_over"] == ["upsampling", "affine"]
    # the grid shows the reconstructions of the decoder that won on the primary metric, and says so
    assert evaluation.examples["feature_inversion"].source.startswith(f"the {details['winners']['mse']} decoder")
    assert set(details["winners"]) == set(metrics)  # every metric says which family gave it
    for metric, winner in details["winners"].items():
        assert metrics[metric] == details["per_decoder"][winner][metric]
        others = [values[metric] for values in details["per_decoder"].values()]
        worst = min(others) if FeatureInversion.metric_directions[metric] == "higher" else max(others)
        assert metrics[metric] == worst
    # every interval is the one of the decoder that gave its metric's worst case: it holds the value it qualifies
    for metric, (low, high) in details["intervals"].items():
        assert low <= metrics[metric] <= high, (metric, details["winners"][metric])
    # the release is the image itself: even 3 epochs' decoders identify images far above a blind guess
    pixel = details["identification"]["pixel"]
    assert metrics["identification_rate"] > 10 * pixel["chance"] and details["identification"]["distractors"] > 0
    assert pixel["low"] <= pixel["rate"] <= pixel["high"]


def test_each_worst_case_metric_keeps_the_interval_of_the_decoder_that_gave_it(digits, monkeypatch):
    from bench.attacks import feature_inversion

    # affine wins on mse (lower: less private), upsampling on the identification rate (higher: less private)
    scores = iter(
        [
            ({"mse": 0.10, "identification_rate": 0.90}, {"intervals": {"identification_rate": [0.85, 0.95]}}, None),
            ({"mse": 0.05, "identification_rate": 0.50}, {"intervals": {"identification_rate": [0.45, 0.55]}}, None),
        ]
    )
    monkeypatch.setattr(feature_inversion, "score_reconstructions", lambda *args: next(scores))
    attack = FeatureInversion(decoder=["upsampling", "affine"], epochs=1, progress=False)
    result = attack.run(_Releasing(digits.spec), digits, torch.Generator().manual_seed(0))
    assert result.details["winners"] == {"mse": "affine", "identification_rate": "upsampling"}
    assert result.metrics == {"mse": 0.05, "identification_rate": 0.90}
    assert result.details["intervals"] == {"identification_rate": [0.85, 0.95]}


def test_by_default_every_decoder_family_that_takes_the_release_attacks_and_the_others_are_named(digits):
    from bench.attacks.feature_inversion import DECODER_FAMILIES, FAMILIES

    attack = FeatureInversion(epochs=1, progress=False)
    entry = evaluate(_Releasing(digits.spec), digits, [attack]).privacy[0]
    details = entry["details"]
    assert "mirror" in details["decoders_skipped"]  # an Identity client has no layer to mirror
    assert details["worst_case_over"] == [family for family in DECODER_FAMILIES if family != "mirror"]
    # the attack is the policy (every family that takes the release), whichever families that was for this release:
    # methods with other releases are attacked alike and share an experiment
    assert entry["config"]["decoder"] == FAMILIES == attack.decoder


def test_a_decoder_that_cannot_take_the_release_fails_before_any_training(digits, monkeypatch):
    from bench.attacks import feature_inversion
    from bench.errors import BenchError

    monkeypatch.setitem(feature_inversion.DECODERS, "flat", lambda client, released, image: nn.Flatten())
    monkeypatch.setattr(feature_inversion, "fit_decoder", lambda *args, **kwargs: pytest.fail("a decoder trained"))
    attack = FeatureInversion(decoder=["upsampling", "flat"], epochs=1, progress=False)
    with pytest.raises(BenchError, match="the decoder outputs"):
        attack.run(_Releasing(digits.spec), digits, torch.Generator().manual_seed(0))


def test_example_figure_captions_each_group_and_row_and_shows_images_large_and_unsmoothed(tmp_path):
    from PIL import Image

    from bench.evaluator import GRID_DPI, GRID_IMAGE_INCHES, example_figure
    from bench.metrics.reconstruction import ExampleImages

    originals = torch.zeros(16, 1, 8, 8)
    originals[:, :, ::2, ::2] = 1.0  # a checkerboard: smoothing would show grey
    reconstructions = originals.clone()
    reconstructions[:8] = 1 - reconstructions[:8]  # the first group wrong, the second perfect
    figure = example_figure(ExampleImages(originals, reconstructions), "feature_inversion")
    texts = [text.get_text() for subfigure in figure.subfigs for text in subfigure.texts]
    assert texts == ["nearest the mean PSNR", "the best-reconstructed"]  # each group under its title
    assert "original over reconstruction" in figure.texts[0].get_text()
    for subfigure in figure.subfigs:
        axes = subfigure.axes
        assert len(axes) == 16 and [axes[0].get_ylabel(), axes[8].get_ylabel()] == ["original", "reconstruction"]
    # each reconstruction captioned with its PSNR: 0 dB where every pixel is wrong, the cap where all are right
    assert {axis.get_xlabel() for axis in figure.subfigs[0].axes[8:]} == {"0.0"}
    assert {axis.get_xlabel() for axis in figure.subfigs[1].axes[8:]} == {"100.0"}
    path = tmp_path / "grid.png"
    figure.savefig(path, dpi=GRID_DPI)
    width = Image.open(path).size[0]
    assert width >= 8 * GRID_IMAGE_INCHES * GRID_DPI  # eight images a row, each about 120 pixels wide
    assert figure.subfigs[0].axes[0].get_images()[0].get_interpolation() == "nearest"


def test_example_figure_takes_an_attacks_own_groups_and_row_names():
    from bench.evaluator import example_figure
    from bench.metrics.reconstruction import ExampleImages

    examples = ExampleImages(
        torch.rand(16, 3, 8, 8), torch.rand(16, 1, 8, 8), groups=("most alike",), rows=("training image", "released")
    )
    figure = example_figure(examples, "released_training_data")
    assert [text.get_text() for text in figure.subfigs[0].texts] == ["most alike"]
    assert len(figure.subfigs[0].axes) == 32  # one group of 16: two pairs of rows of eight
    assert figure.subfigs[0].axes[8].get_ylabel() == "released"


def _decoder_evaluation(digits, cache, **settings):
    from bench.attacks.feature_inversion import clear_fitted_decoders

    clear_fitted_decoders()  # a fresh process: nothing kept in memory
    attack = FeatureInversion(decoder=["upsampling", "affine"], epochs=2, batch_size=32, progress=False, **settings)
    return evaluate(_Releasing(digits.spec), digits, [attack], seed=3, shadow_cache=cache)


def test_a_rerun_loads_every_fitted_decoder_from_the_cache_and_gets_the_same_result(digits, tmp_path, monkeypatch):
    from bench.attacks import feature_inversion

    first = _decoder_evaluation(digits, tmp_path)
    assert first.cost["decoders_trained"] == 2 and first.cost["decoders_loaded"] == 0
    assert len(list((tmp_path / "decoders").glob("*.pt"))) == 2
    monkeypatch.setattr(feature_inversion, "fit_decoder", lambda *args, **kwargs: pytest.fail("a decoder trained"))
    again = _decoder_evaluation(digits, tmp_path)
    assert again.cost["decoders_trained"] == 0 and again.cost["decoders_loaded"] == 2
    assert again.privacy[0]["metrics"] == first.privacy[0]["metrics"]  # the same decoders, to the bit
    assert again.privacy[0]["details"]["decoder_training"] == first.privacy[0]["details"]["decoder_training"]
    assert torch.equal(again.examples["feature_inversion"].reconstructions, first.examples["feature_inversion"][1])


def test_a_cached_decoder_is_used_only_under_its_own_key_and_shapes(digits, tmp_path, capsys):
    import shutil

    _decoder_evaluation(digits, tmp_path)
    # another budget is another decoder: trained, never the cached one
    other = _decoder_evaluation(digits, tmp_path, patience=3)
    assert other.cost["decoders_trained"] == 2 and other.cost["decoders_loaded"] == 0
    # a file under a key's name that holds another key, or a state of other shapes: one line each, trained again
    files = sorted((tmp_path / "decoders").glob("*.pt"), key=lambda path: path.stat().st_mtime)
    first_run = files[:2]
    shutil.copy(first_run[1], first_run[0])  # the other decoder's file under this key's name
    stored = torch.load(first_run[1], weights_only=True)
    stored["state"] = {name: value[..., :1] for name, value in stored["state"].items()}  # same key, wrong shapes
    torch.save(stored, first_run[1])
    capsys.readouterr()
    rerun = _decoder_evaluation(digits, tmp_path)
    assert rerun.cost["decoders_trained"] == 2 and rerun.cost["decoders_loaded"] == 0
    refused = [line for line in capsys.readouterr().err.splitlines() if "decoder cache" in line]
    assert len(refused) == 2 and all("not used" in line and "training that decoder again" in line for line in refused)
    assert any("its key is not this decoder's" in line for line in refused)
    # the rerun replaced both files with its own decoders: the next run loads them
    assert _decoder_evaluation(digits, tmp_path).cost["decoders_loaded"] == 2


def test_without_a_cache_folder_no_decoder_is_kept(digits, tmp_path):
    evaluation = _decoder_evaluation(digits, None)
    assert "decoders_trained" not in evaluation.cost and not list(tmp_path.iterdir())
