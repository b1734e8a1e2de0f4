"""Names: one network registry, renamed arguments with deprecated aliases, and old records read under the new names."""

from __future__ import annotations

import copy
import csv
import inspect
import json
import re
import warnings
from pathlib import Path

import pytest
import torch
from helpers import synthetic_spec
from torch import nn

from bench import registry as bench_registry
from bench.cli import main
from bench.deprecation import RENAMED_ARGUMENTS, RENAMED_NETWORKS, BenchDeprecationWarning, current_method_names
from bench.errors import BenchError
from bench.leaderboard import generate_leaderboard
from bench.networks.complex import build_modules
from bench.networks.registry import ARCHITECTURES, Role, build_network, network_names, resolve_network
from bench.records import load_records

RECORDS = Path(__file__).parent / "fixtures" / "records"
CIFAR = synthetic_spec((3, 32, 32))
#: per role, the networks of a parametric family that stand for it here
_FAMILY_EXAMPLES = {"resnet<6n+2>_<alpha|beta>": ["resnet20_alpha", "resnet32_beta"]}


def _suite_methods() -> dict[str, type]:
    return {name: cls for name, cls in bench_registry.methods().items() if cls.__module__.startswith("bench.modules.")}


def _layers(built, role: Role) -> list[nn.Module]:
    """The modules a role's builder returned, as one list (the complex role's plans built real-valued)."""
    if role is Role.SPLIT:
        return [*built[0].modules(), *built[1].modules()]
    if role is Role.COMPLEX:
        modules = build_modules(built, CIFAR, complex_valued=False)
        return [*modules.encoder.modules(), *modules.processing.modules(), *modules.decryption.modules()]
    return list(built.modules())


def _shapes(built, role: Role) -> list[tuple[str, tuple[int, ...]]]:
    return [
        (type(layer).__name__, tuple(p.shape))
        for layer in _layers(built, role)
        for p in layer.parameters(recurse=False)
    ]


def _examples() -> list[tuple[str, Role]]:
    return [
        (name, role)
        for architecture in ARCHITECTURES
        for role in architecture.roles
        for name in _FAMILY_EXAMPLES.get(architecture.name, [architecture.name])
    ]


# ---------------------------------------------------------------------------- the registry
@pytest.mark.parametrize(
    ("name", "role"),
    [(n, r) for n, r in _examples() if re.match(r"^[a-z]+(\d+)(?:_|$)", n)],
    ids=lambda v: getattr(v, "value", v),
)
def test_a_depth_in_a_name_is_the_number_of_weight_layers_in_every_role(name, role):
    # LeNet-5, VGG-16, ResNet-20: convolutions (not the ResNets' 1x1 shortcut projections) and fully-connected layers
    depth = int(re.match(r"^[a-z]+(\d+)", name).group(1))
    built = build_network(name, role, CIFAR)
    weight_layers = [
        layer
        for layer in _layers(built, role)
        if isinstance(layer, nn.Linear) or (isinstance(layer, nn.Conv2d) and layer.kernel_size != (1, 1))
    ]
    assert len(weight_layers) == depth


def test_every_method_builds_its_default_network_under_its_current_name():
    methods = {name: cls for name, cls in _suite_methods().items() if "network" in inspect.signature(cls).parameters}
    assert {
        "SplitNetwork",
        "RAN",
        "NoisyInput",
        "ResizedDNN",
        "MCMIA",
        "DPSGD",
        "ComplexNet",
        "ComplexNetBaseline",
        "Collaborative",
    } <= set(methods)
    registered = {name for role in Role for name in network_names(role)}
    for name, cls in methods.items():
        default = inspect.signature(cls).parameters["network"].default
        assert default in registered and default not in RENAMED_NETWORKS, f"{name}'s default network {default}"
        with warnings.catch_warnings():
            warnings.simplefilter("error", BenchDeprecationWarning)
            module = cls(data_spec=synthetic_spec((1, 28, 28)))
        assert module.hparams["network"] == default


@pytest.mark.parametrize(
    ("old", "new", "role"),
    [(old, new, role) for old, new in RENAMED_NETWORKS.items() for role in Role if new in network_names(role)],
    ids=lambda v: getattr(v, "value", v),
)
def test_a_retired_network_name_warns_and_builds_the_same_architecture(old, new, role):
    with pytest.warns(BenchDeprecationWarning, match=f"network `{old}` is deprecated.*use `{new}`"):
        torch.manual_seed(0)
        retired = build_network(old, role, CIFAR)
    torch.manual_seed(0)
    current = build_network(new, role, CIFAR)
    assert _shapes(retired, role) == _shapes(current, role) and _shapes(current, role)


def test_every_retired_network_name_has_a_current_one():
    registered = {name for role in Role for name in network_names(role)}
    assert set(RENAMED_NETWORKS.values()) <= registered and not set(RENAMED_NETWORKS) & registered


@pytest.mark.parametrize("role", list(Role), ids=lambda role: role.value)
def test_an_unknown_network_gets_one_line_listing_the_valid_names(role):
    with pytest.raises(BenchError, match="unknown network 'nope'") as error:
        resolve_network("nope", role, "SomeMethod")
    message = str(error.value)
    assert "\n" not in message and message.startswith("SomeMethod: ")
    assert all(name in message for name in network_names(role))


def test_a_network_of_another_role_says_which_roles_it_has_before_building_anything(monkeypatch):
    from bench.modules import RAN

    monkeypatch.setattr(
        "bench.modules.base.PrivacyModule.__init__", lambda *a, **k: pytest.fail("built before checking")
    )
    with pytest.raises(BenchError, match="RAN: network 'cnn4' is defined as classifier only; .*lenet5, vgg9, vgg16$"):
        RAN(network="cnn4", data_spec=synthetic_spec((1, 8, 8)))


# ---------------------------------------------------------------------------- renamed arguments
def _other_value(default):
    """A valid value other than the default: one more step, or half the weight."""
    return default + 1 if isinstance(default, int) else default / 2


RENAMES = [(method, old, new) for method, renamed in RENAMED_ARGUMENTS.items() for old, new in renamed.items()]


@pytest.mark.parametrize(("method", "old", "new"), RENAMES)
def test_a_renamed_argument_gives_the_same_method_under_its_old_name_and_records_the_new_one(method, old, new):
    cls = _suite_methods()[method]
    parameters = inspect.signature(cls).parameters
    assert parameters[old].default is None, f"{method}.{old}: the deprecated name defaults to None"
    value = _other_value(parameters[new].default)
    spec = synthetic_spec((1, 8, 8))
    torch.manual_seed(0)
    with pytest.warns(BenchDeprecationWarning, match=f"{method}: argument `{old}` is deprecated.*use `{new}`"):
        retired = cls(data_spec=spec, **{old: value})
    torch.manual_seed(0)
    current = cls(data_spec=spec, **{new: value})
    assert old not in retired.hparams and retired.hparams[new] == value
    assert dict(retired.hparams) == dict(current.hparams)
    state, expected = retired.state_dict(), current.state_dict()
    assert state.keys() == expected.keys() and all(torch.equal(state[key], expected[key]) for key in state)
    with pytest.raises(BenchError, match=f"give `{new}` only; `{old}` is its deprecated name"):
        cls(data_spec=spec, **{old: value, new: value})


def test_old_names_in_a_config_still_run_and_the_record_says_the_new_ones(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.warns(BenchDeprecationWarning) as caught:
        main(
            [
                "fit",
                "--model",
                "RAN",
                "--model.k",
                "2",
                "--model.network",
                "lenet",
                "--data.pool_limit",
                "64",
                "--trainer.max_steps",
                "1",
                "--trainer.logger",
                "false",
                "--trainer.enable_progress_bar",
                "false",
                "--evaluation.attacks",
                "[]",
            ]
        )
    messages = [str(warning.message) for warning in caught]
    assert any("`k` is deprecated" in m and "`stage_pairs`" in m for m in messages), messages
    assert any("network `lenet` is deprecated" in m and "`lenet5`" in m for m in messages), messages
    (record,) = load_records([tmp_path / "runs" / "leaderboard" / "records"]).records
    assert record["method"]["network"] == "lenet5"
    assert record["method"]["hparams"]["stage_pairs"] == 2 and "k" not in record["method"]["hparams"]


# ---------------------------------------------------------------------------- old records
def _ran_record(record_id: str, seed: int, hparams: dict, network: str) -> dict:
    record = copy.deepcopy(json.loads((RECORDS / "digits-ran.json").read_text()))
    record.update(record_id=record_id, seed=seed)
    record["method"].update(
        {"class": "bench.modules.ran.RAN", "name": "RAN", "network": network, "hparams": {"lam": 0.5, **hparams}}
    )
    return record


def _rows(tmp_path: Path, *records: dict) -> list[dict]:
    folder = tmp_path / "records"
    folder.mkdir(parents=True)
    for record in records:
        (folder / f"{record['record_id']}.json").write_text(json.dumps(record))
    result = generate_leaderboard([folder], tmp_path / "board")
    with result.csv.open() as stream:
        return [row for row in csv.DictReader(stream) if row["method"].startswith("RAN")]


def test_a_record_from_before_the_renames_joins_the_row_of_a_new_run_of_the_same_setting(tmp_path):
    old = _ran_record("old", 0, {"k": 3, "network": "lenet"}, "lenet")
    new = _ran_record("new", 1, {"stage_pairs": 3, "network": "lenet5"}, "lenet5")
    (row,) = _rows(tmp_path, old, new)
    assert row["seeds"] == "2" and row["network"] == "lenet5"
    # the same two records with another stage count are two settings: the rows join on the setting, not on the method
    other = _ran_record("other", 1, {"stage_pairs": 4, "network": "lenet5"}, "lenet5")
    assert len(_rows(tmp_path / "apart", old, other)) == 2


def test_records_of_other_packages_keep_their_names():
    method = {"class": "mypkg.methods.Mine", "network": "lenet", "hparams": {"k": 3, "network": "lenet"}}
    assert current_method_names(method) == method
    suite = current_method_names(
        {"class": "bench.modules.RAN", "network": "vgg", "hparams": {"k": 3, "network": "vgg"}}
    )
    assert suite == {"class": "bench.modules.RAN", "network": "vgg9", "hparams": {"stage_pairs": 3, "network": "vgg9"}}


def test_a_claim_that_selects_a_setting_by_a_retired_name_selects_it_by_the_new_one():
    from bench.claims import parse_claims

    text = """paper: P
claims:
  - claim: noisy features at gamma 1.0
    paper: 1
    check: {left: {method: ComplexNetBaseline, where: {gamma: 1.0, network: lenet}, value: utility.accuracy},
            op: ">", right: 0}
"""
    with pytest.warns(BenchDeprecationWarning, match="deprecated names"):
        claims = parse_claims(text)
    assert claims.claims[0].comparisons[0].left.where == (("network", "lenet5"), ("noise_level", 1.0))
