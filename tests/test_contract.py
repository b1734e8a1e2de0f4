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


def test_a_misspelled_capability_method_fails_at_definition():
    from bench.modules.split_network import SplitNetwork
    from bench.threat_models import Capability

    with pytest.raises(TypeError, match="own_reconstruction"):
        class Misspelled(SplitNetwork):  # noqa: F841
            capabilities = (Capability.OWN_RECONSTRUCTION,)

            def own_reconstrution(self, released):  # the typo: the declared capability has no method
                return released


def test_a_capability_method_without_its_declaration_fails_at_definition():
    from bench.modules.split_network import SplitNetwork

    with pytest.raises(TypeError, match="does not declare capability 'own_reconstruction'"):
        class Undeclared(SplitNetwork):  # noqa: F841
            def own_reconstruction(self, released):
                return released


def test_a_capability_needs_its_threat_model():
    from bench.modules.base import PrivacyModule
    from bench.threat_models import Capability

    with pytest.raises(TypeError, match="without declaring that threat model"):
        class Orphan(PrivacyModule):  # noqa: F841
            threat_models = (ThreatModel.BLACK_BOX_OUTPUTS,)
            capabilities = (Capability.MEASUREMENT_MATRIX,)

            def measurement_matrix(self):
                return torch.eye(2)


@pytest.mark.parametrize("name", sorted(registry.attacks()))
def test_every_attack_declares_its_role_and_contract(name):
    from bench.threat_models import Role

    attack = registry.attacks()[name]
    assert isinstance(attack.role, Role)
    assert attack.primary_metric in attack.metric_directions
    assert all(capability.threat_model is attack.threat_model for capability in attack.requires)


def test_an_attack_without_a_role_fails_at_definition():
    from bench.attacks.base import Attack

    with pytest.raises(TypeError, match="role"):
        class Roleless(Attack):  # noqa: F841
            name = "roleless"
            threat_model = ThreatModel.BLACK_BOX_OUTPUTS
            metric_directions = {"auc": "lower"}
            primary_metric = "auc"


def test_attacks_apply_exactly_where_their_capabilities_are_declared():
    methods, attacks = registry.methods(), registry.attacks()
    for method in methods.values():
        for attack in attacks.values():
            expected = attack.threat_model in method.threat_models and set(attack.requires) <= set(method.capabilities)
            assert attack().applies_to(method) == expected, (method.__name__, attack.__name__)
