"""The contract every registered method must honour: a new method in bench/modules/ is tested here the day it lands."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from bench import registry
from bench.attacks import FeatureInversion
from bench.callbacks import PrivacyEvaluation
from bench.cli import load_checkpoint
from bench.datamodules import Digits
from bench.records import load_records
from bench.threat_models import ThreatModel

METHODS = sorted(registry.methods())


def test_the_registry_finds_the_shipped_methods():
    assert "SplitNetwork" in METHODS


@pytest.mark.parametrize("name", METHODS)
def test_method_fits_evaluates_and_restores(name, tmp_path):
    check_method_contract(registry.methods()[name], tmp_path)


def check_method_contract(method, tmp_path) -> None:
    """Build from the data spec alone, fit a tiny run, evaluate it, restore the checkpoint."""
    name = method.__name__
    datamodule = Digits(batch_size=16, pool_limit=48)
    module = method(data_spec=datamodule.spec)  # every method must be constructible from the data spec alone
    assert module.threat_models, f"{name} declares no threat model: the harness could not attack it"

    images = datamodule.pool("test").tensors()[0][:4]
    assert module(images).shape == (4, datamodule.num_classes)
    if ThreatModel.FEATURE_RELEASE in module.threat_models:
        released = module.release(images)
        assert released.shape[0] == 4, "release(x) must keep the batch dimension first"
        assert module.predict_from_release(released).shape == (4, datamodule.num_classes)
        assert isinstance(module.client_network(), torch.nn.Module)

    evaluation = PrivacyEvaluation(attacks=[FeatureInversion(epochs=1, progress=False)], records_dir=str(tmp_path / "records"),
                                   leaderboard_dir=None)
    trainer = L.Trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=1, logger=False, accelerator="cpu",
                        default_root_dir=tmp_path, callbacks=[evaluation], enable_progress_bar=False,
                        enable_model_summary=False)
    trainer.fit(module, datamodule)

    loaded = load_records([tmp_path / "records"])
    assert loaded.problems == [] and len(loaded.records) == 1
    record = loaded.records[0]
    assert record["method"]["name"] == name
    assert 0.0 <= record["utility"]["accuracy"] <= 1.0
    expected_attacks = {"feature_inversion"} if ThreatModel.FEATURE_RELEASE in module.threat_models else set()
    assert {entry["attack"] for entry in record["privacy"]} == expected_attacks

    # `bench evaluate` rebuilds the very same model from the checkpoint
    restored, restored_data, _ = load_checkpoint(trainer.checkpoint_callback.best_model_path, device="cpu")
    assert type(restored) is method and type(restored_data) is Digits
    original_state, restored_state = module.state_dict(), restored.state_dict()
    assert original_state.keys() == restored_state.keys()
    for key in original_state:
        torch.testing.assert_close(restored_state[key], original_state[key], rtol=0, atol=0)
    module.eval(), restored.eval()
    with torch.no_grad():  # stochastic releases draw the same noise under the same seed
        torch.manual_seed(0)
        expected = module(images)
        torch.manual_seed(0)
        torch.testing.assert_close(restored(images), expected)


def test_declaring_a_threat_model_without_its_methods_fails_at_definition():
    from bench.modules.base import PrivacyModule

    with pytest.raises(TypeError, match="release"):
        class Incomplete(PrivacyModule):  # noqa: F841
            threat_models = (ThreatModel.FEATURE_RELEASE,)
