"""The contract every registered method must honour: a new method in bench/modules/ is tested here the day it lands."""

from __future__ import annotations

import pytest
import torch

from bench import registry, testing
from bench.testing import check_method_contract, tiny_attacks, unexercised_declarations
from bench.threat_models import ThreatModel

METHODS = sorted(registry.methods())


def test_the_registry_finds_the_shipped_methods():
    assert "SplitNetwork" in METHODS


@pytest.mark.parametrize("name", METHODS)
def test_method_fits_is_attacked_by_every_applicable_attack_and_restores(name, tmp_path):
    record = check_method_contract(registry.methods()[name], tmp_path)
    assert record["privacy"], f"{name} was attacked by nothing"


def test_every_registered_attack_runs_on_some_shipped_method():
    applied = {
        attack.name
        for attack in tiny_attacks()
        for method in registry.methods().values()
        if attack.threat_model in method.threat_models and set(attack.requires) <= set(method.capabilities)
    }
    assert applied == {attack.name for attack in tiny_attacks()}


def test_a_declaration_no_attack_exercises_fails_the_contract(monkeypatch, tmp_path):
    without_gradient_attacks = {
        name: cls for name, cls in registry.attacks().items() if cls.threat_model is not ThreatModel.GRADIENT_SHARING
    }
    monkeypatch.setattr(registry, "attacks", lambda: without_gradient_attacks)
    collaborative = registry.methods()["Collaborative"]
    assert unexercised_declarations(collaborative) == ["threat model 'gradient_sharing'"]
    with pytest.raises(AssertionError, match="gradient_sharing', which no registered attack exercises"):
        check_method_contract(collaborative, tmp_path)


def test_an_attack_without_a_tiny_budget_fails_the_contract(monkeypatch):
    budget = dict(testing._tiny_budget())
    del budget["LiRA"]
    monkeypatch.setattr(testing, "_tiny_budget", lambda: budget)
    with pytest.raises(AssertionError, match=r"\['LiRA'\] have no tiny budget"):
        tiny_attacks()


def test_the_contract_rejects_what_is_not_a_method(tmp_path):
    with pytest.raises(AssertionError, match="not a subclass of PrivacyModule"):
        check_method_contract(torch.nn.Linear, tmp_path)


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
