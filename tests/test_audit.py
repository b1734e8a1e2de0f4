"""`bench audit`: a classifier or a split model's client trained outside bench, and saved scores, get the suite's
verdicts (issue 26)."""

from __future__ import annotations

import csv
import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from bench.attacks.feature_inversion import FeatureInversion, clear_fitted_decoders
from bench.attacks.lira import LiRA
from bench.attacks.membership_inference import LossThreshold, query_logits, target_queries
from bench.audit import assign_member_pools
from bench.cli import main
from bench.datamodules.digits import Digits
from bench.evaluator import Evaluator
from bench.modules.base import PrivacyModule
from bench.modules.split_network import EncoderRelease
from bench.threat_models import ThreatModel

MEMBERS = 150
ATTACKS = [
    {"class_path": "LossThreshold", "init_args": {"shadow_epochs": 2}},
    {"class_path": "LiRA", "init_args": {"shadow_models": 2, "shadow_epochs": 2}},
]
METRICS = ("attack_accuracy", "auc", "tpr_at_1pct_fpr", "empirical_epsilon")


def tiny_network() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


def not_a_module():
    return "a string"


def broken_recipe(model, dataset):
    raise RuntimeError("out of coffee")


RECIPE_CALLS = []


def user_recipe(model, dataset):
    """A user's own training function: plain PyTorch over the whole dataset bench hands it."""
    RECIPE_CALLS.append(len(dataset))
    images, labels = zip(*(dataset[i] for i in range(len(dataset))))
    return train_plain(model.train(), torch.stack(images), torch.stack(labels), epochs=2)


def train_plain(network: nn.Module, images: torch.Tensor, labels: torch.Tensor, epochs: int = 30) -> nn.Module:
    """Plain PyTorch, no bench: Adam, cross-entropy, mini-batches of 16 in a seeded order."""
    generator = torch.Generator().manual_seed(1)
    optimizer = torch.optim.Adam(network.parameters(), lr=1e-2)
    for _ in range(epochs):
        order = torch.randperm(len(images), generator=generator)
        for start in range(0, len(order), 16):
            batch = order[start : start + 16]
            loss = nn.functional.cross_entropy(network(images[batch]), labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return network.eval()


class PlainClassifier(PrivacyModule):
    """The same network as a method of the suite (default recipe: cross-entropy, Adam)."""

    threat_models = (ThreatModel.BLACK_BOX_OUTPUTS,)

    def __init__(self, data_spec=None, lr: float = 1e-3, weight_decay: float = 0.0) -> None:
        super().__init__(data_spec, lr, weight_decay)
        self.network = tiny_network()

    def forward(self, x):
        return self.network(x)


def tiny_client() -> nn.Module:
    """The client part of a split model: what it returns, (N, 4, 4, 4), is what leaves the client."""
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))


class Released(nn.Module):
    """A client whose release is ``how(images)``: the extreme releases, and malformed ones."""

    def __init__(self, how) -> None:
        super().__init__()
        self.how = how

    def forward(self, images):
        return self.how(images)


def identity_client() -> nn.Module:
    return Released(lambda images: images.flatten(1))  # releases the image itself


def constant_client() -> nn.Module:
    return Released(lambda images: torch.zeros(len(images), 16))  # releases nothing about it


def rgb_client() -> nn.Module:
    return nn.Conv2d(3, 4, 3)  # for colour images: the digits have one channel


def tuple_client() -> nn.Module:
    return Released(lambda images: (images, images))


def batch_mean_client() -> nn.Module:
    return Released(lambda images: images.mean(0, keepdim=True))  # one release for the whole batch


def tiny_head() -> nn.Module:
    """The server part: it classifies what tiny_client releases."""
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 10))


class SplitTwin(EncoderRelease, PrivacyModule):
    """tiny_client and tiny_head as a split method of the suite (SplitNetwork's contract)."""

    threat_models = (ThreatModel.FEATURE_RELEASE,)

    def __init__(self, data_spec=None, lr: float = 1e-3, weight_decay: float = 0.0) -> None:
        super().__init__(data_spec, lr, weight_decay)
        self.encoder, self.classifier = tiny_client(), tiny_head()


@pytest.fixture
def user_package(monkeypatch):
    """The user's own code, importable as `audit_user_code:NAME` (what they type on the command line)."""
    module = types.ModuleType("audit_user_code")
    module.tiny_network, module.not_a_module, module.broken_recipe = tiny_network, not_a_module, broken_recipe
    module.user_recipe = user_recipe
    module.tiny_client, module.identity_client, module.constant_client = tiny_client, identity_client, constant_client
    module.tuple_client, module.batch_mean_client, module.rgb_client = tuple_client, batch_mean_client, rgb_client
    module.tiny_head = tiny_head
    monkeypatch.setitem(sys.modules, module.__name__, module)
    return module


def member_datamodule(members: torch.Tensor) -> Digits:
    datamodule = Digits(pool_limit=MEMBERS, seed=0)
    assign_member_pools(datamodule, members)
    return datamodule


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A network trained by plain PyTorch on 150 Digits (outside bench), its weights and members files."""
    folder = tmp_path_factory.mktemp("user")
    members = torch.randperm(1797, generator=torch.Generator().manual_seed(3))[:MEMBERS].sort().values
    np.save(folder / "members.npy", members.numpy())
    images, labels = member_datamodule(members).pool("train").tensors()
    torch.manual_seed(0)
    network = train_plain(tiny_network(), images, labels)
    torch.save(network.state_dict(), folder / "weights.pt")
    return folder, members, network


def audit(argv: list[str], records: Path) -> dict:
    main(["audit", *argv, "--records_dir", str(records)])
    (file,) = records.glob("*.json")
    return json.loads(file.read_text())


def classifier_argv(folder: Path) -> list[str]:
    return [
        "--model", "audit_user_code:tiny_network", "--weights", str(folder / "weights.pt"),
        "--members", str(folder / "members.npy"), "--data", "Digits", "--pool_limit", str(MEMBERS),
        "--attacks", json.dumps(ATTACKS), "--device", "cpu",
    ]  # fmt: skip


def metrics_of(record: dict) -> dict[str, dict[str, float]]:
    return {entry["attack"]: {k: entry["metrics"][k] for k in METRICS} for entry in record["privacy"]}


def test_plain_pytorch_model_audits_like_the_same_model_as_a_method(trained, user_package, tmp_path):
    folder, members, network = trained
    record = audit(classifier_argv(folder), tmp_path / "audit")
    # the same network as a PrivacyModule: same seed, same plain-PyTorch training, hence the same weights
    datamodule = member_datamodule(members)
    torch.manual_seed(0)
    method = PlainClassifier(datamodule.spec)
    train_plain(method.network, *datamodule.pool("train").tensors())
    assert all(torch.equal(a, b) for a, b in zip(method.network.state_dict().values(), network.state_dict().values()))
    attacks = [LossThreshold(shadow_epochs=2), LiRA(shadow_models=2, shadow_epochs=2)]
    run = {"world_size": 1, "precision": "32-true", "config_names": []}
    reference, _ = Evaluator(attacks, seed=0, records_dir=str(tmp_path / "method")).evaluate(
        method.eval(), datamodule, config={}, training=None, run=run
    )
    assert metrics_of(record) == metrics_of(reference.to_dict())
    assert record["utility"]["accuracy"] == reference.utility["accuracy"]
    external = record["external"]
    assert external["kind"] == "classifier" and external["factory"] == "audit_user_code:tiny_network"
    assert len(external["weights_sha256"]) == 64 and external["members"].endswith("members.npy")
    assert any("default recipe" in line for line in external["assumptions"])
    assert record["dataset"]["pool_sizes"]["train"] == MEMBERS


def test_saved_scores_give_the_full_audits_metrics(trained, user_package, tmp_path):
    folder, members, network = trained
    full = audit(classifier_argv(folder), tmp_path / "audit")
    loss_entry = next(entry for entry in full["privacy"] if entry["attack"] == "loss_threshold")
    datamodule = member_datamodule(members)
    images, labels, is_member = target_queries(datamodule, None, torch.Generator())
    logits = query_logits(network, images, 512, torch.device("cpu"))
    scores_file = tmp_path / "scores.npz"
    np.savez(
        scores_file,
        logits=logits.numpy(),
        labels=labels.numpy(),
        membership=is_member.numpy(),
        threshold=np.float64(loss_entry["details"]["threshold"]),
    )
    saved = audit(["--scores", str(scores_file)], tmp_path / "scores")
    assert metrics_of(saved)["loss_threshold"] == metrics_of(full)["loss_threshold"]
    assert saved["external"]["kind"] == "scores" and len(saved["external"]["scores_sha256"]) == 64


def test_saved_scores_with_reference_models_run_lira(tmp_path):
    generator = torch.Generator().manual_seed(0)
    count, classes, references = 200, 4, 4
    labels = torch.randint(classes, (count,), generator=generator)
    membership = torch.arange(count) % 2
    logits = torch.randn(count, classes, generator=generator)
    logits[torch.arange(count), labels] += 3.0 * membership  # members: confident on their label
    inside = torch.rand(references, count, generator=generator) < 0.5
    inside[0], inside[1] = True, False  # every example has an IN and an OUT reference
    reference_logits = torch.randn(references, count, classes, generator=generator)
    reference_logits[:, torch.arange(count), labels] += 3.0 * inside
    np.savez(
        tmp_path / "scores.npz",
        logits=logits.numpy(),
        labels=labels.numpy(),
        membership=membership.numpy(),
        reference_logits=reference_logits.numpy(),
        reference_in=inside.numpy(),
    )
    record = audit(["--scores", str(tmp_path / "scores.npz")], tmp_path / "records")
    metrics = metrics_of(record)
    assert set(metrics) == {"loss_threshold", "lira", "lira_online"}
    assert all(metrics[attack]["auc"] > 0.8 for attack in metrics)


def test_shadows_train_by_the_users_recipe(trained, user_package, tmp_path):
    RECIPE_CALLS.clear()
    argv = classifier_argv(trained[0])
    argv[argv.index("--attacks") + 1] = json.dumps([ATTACKS[0]])
    record = audit([*argv, "--train", "audit_user_code:user_recipe"], tmp_path)
    # once on the probe of 8 attacker samples, then once for the shadow (on its half of the attacker pool)
    assert RECIPE_CALLS == [8, MEMBERS // 2]
    (entry,) = record["privacy"]
    assert entry["details"]["shadow_recipe"] == "target" and entry.get("error") is None
    assert record["external"]["recipe"] == "audit_user_code:user_recipe"


def bad_scores(folder: Path, **change) -> str:
    arrays = {"logits": np.zeros((6, 3)), "labels": np.zeros(6, dtype=np.int64), "membership": np.arange(6) % 2}
    arrays.update(change)
    np.savez(folder / "bad.npz", **{k: v for k, v in arrays.items() if v is not None})
    return str(folder / "bad.npz")


def write_members(folder: Path, values) -> str:
    np.save(folder / "bad_members.npy", np.asarray(values))
    return str(folder / "bad_members.npy")


BAD_INPUTS = {
    "factory not a module": (lambda f, t: {"--model": "audit_user_code:not_a_module"}, "not a torch.nn.Module"),
    "factory missing": (lambda f, t: {"--model": "audit_user_code:nothing"}, "has no nothing"),
    "weights do not fit": (
        lambda f, t: {"--weights": (torch.save({"w": torch.zeros(2)}, t / "w.pt"), str(t / "w.pt"))[1]},
        "does not fit",
    ),
    "weights not weights-only": (
        lambda f, t: {"--weights": (torch.save({"w": object()}, t / "p.pt"), str(t / "p.pt"))[1]},
        "not a weights-only",
    ),
    "members out of range": (lambda f, t: {"--members": write_members(t, [0, 5000])}, "must lie in [0, 1797)"),
    "members duplicated": (lambda f, t: {"--members": write_members(t, [3, 3, 4])}, "listed 2 times"),
    "recipe cannot train": (lambda f, t: {"--train": "audit_user_code:broken_recipe"}, "out of coffee"),
    "scores with NaN": (lambda f, t: {"--scores": bad_scores(t, logits=np.full((6, 3), np.nan))}, "NaN"),
    "scores of mismatched lengths": (lambda f, t: {"--scores": bad_scores(t, labels=np.zeros(5, int))}, "5 entries"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_one_line_before_any_shadow_trains(case, trained, user_package, tmp_path, capsys, monkeypatch):
    folder = trained[0]
    change, expected = BAD_INPUTS[case]
    options = change(folder, tmp_path)
    if "--scores" in options:
        argv = ["--scores", options["--scores"]]
    else:
        argv = classifier_argv(folder)
        for key, value in options.items():
            if key in argv:
                argv[argv.index(key) + 1] = value
            else:
                argv += [key, value]
    trained_shadows = []
    monkeypatch.setattr(
        "bench.attacks.shadow_models.ShadowModels.fit", lambda *a, **k: trained_shadows.append(1) or 1 / 0
    )
    with pytest.raises(SystemExit) as exit_info:
        main(["audit", *argv, "--records_dir", str(tmp_path / "records")])
    assert exit_info.value.code == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bench: error:") and expected in lines[0], lines
    assert not trained_shadows and not list((tmp_path / "records").glob("*.json"))


@pytest.mark.parametrize("example", ["classifier", "split"])
def test_docs_example_runs(example, tmp_path, monkeypatch):
    """docs/auditing_a_model.md: each example's script trains a model outside bench; its `bench audit` audits it."""
    import re
    import runpy
    import shlex

    text = (Path(__file__).resolve().parents[1] / "docs" / "auditing_a_model.md").read_text()
    index = ["classifier", "split"].index(example)
    script = re.findall(r"```python\n(.*?)```", text, re.S)[index]
    command = re.findall(r"```bash\n(.*?)```", text, re.S)[index].strip()
    argv = shlex.split(command)
    assert argv[:3] == ["PYTHONPATH=.", "bench", "audit"]
    factory = argv[argv.index("--release" if example == "split" else "--model") + 1]
    module_name = factory.partition(":")[0]
    (tmp_path / f"{module_name}.py").write_text(script)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, module_name, raising=False)
    runpy.run_path(str(tmp_path / f"{module_name}.py"), run_name="__main__")
    main([*argv[2:], "--device", "cpu"])
    (record,) = (tmp_path / "runs" / "audit").glob("*.json")
    data = json.loads(record.read_text())
    assert data["external"]["factory"] == factory
    if example == "classifier":
        assert factory == "mynet:build" and len(data["privacy"]) == 2
        assert data["utility"]["accuracy"] > 0.8
    else:
        (entry,) = data["privacy"]
        assert factory == "myclient:client" and data["external"]["kind"] == "split" and data["utility"] == {}
        assert entry.get("error") is None and entry["details"]["worst_case_over"] == ["mirror", "affine"]
        # a plain conv layer's features leak the digits: far more test images are identified from their
        # reconstructions than the 1 in test_samples of chance
        chance = 1 / entry["details"]["test_samples"]
        assert entry["metrics"]["identification_rate"] > 20 * chance, entry["metrics"]


def test_leaderboard_says_external(trained, user_package, tmp_path):
    from bench.leaderboard import generate_leaderboard

    argv = classifier_argv(trained[0])
    argv[argv.index("--attacks") + 1] = json.dumps([ATTACKS[0]])
    audit(argv, tmp_path / "records")
    result = generate_leaderboard([str(tmp_path / "records")], tmp_path / "board")
    assert not result.problems and result.rows == 1
    assert "audit_user_code:tiny_network (external)" in Path(result.markdown).read_text()
    with open(Path(result.markdown).parent / "leaderboard.csv", newline="") as handle:
        (row,) = csv.DictReader(handle)
    assert row["external"] == "yes" and row["method"] == "audit_user_code:tiny_network"


# ---------------------------------------------------------------------- split models: bench audit --release
#: a cheap decoder budget (tiny.yaml's spirit): the attack runs in a fraction of a second on 64 attacker images
INVERSION = {"epochs": 3, "max_attacker_samples": 64, "max_test_samples": 32, "progress": False}


@pytest.fixture(scope="module")
def client_weights(tmp_path_factory) -> Path:
    """A split model trained elsewhere: the client's weights (client.pt) and the server part's (head.pt), saved by
    plain PyTorch after a few epochs on the digits' attacker pool."""
    folder = tmp_path_factory.mktemp("client")
    torch.manual_seed(0)
    images, labels = Digits(pool_limit=MEMBERS, seed=0).pool("attacker").tensors()
    client, head = tiny_client(), tiny_head()
    train_plain(nn.Sequential(client, head), images, labels, epochs=10)
    torch.save(client.state_dict(), folder / "client.pt")
    torch.save(head.state_dict(), folder / "head.pt")
    return folder / "client.pt"


def split_argv(release: str, *extra: str, init_args: dict = INVERSION) -> list[str]:
    attack = [{"class_path": "FeatureInversion", "init_args": init_args}]
    return [
        "--release", f"audit_user_code:{release}", "--data", "Digits", "--pool_limit", str(MEMBERS),
        "--attacks", json.dumps(attack), "--device", "cpu", *extra,
    ]  # fmt: skip


def test_split_model_audits_like_the_same_network_as_a_split_method(client_weights, user_package, tmp_path):
    head_weights = client_weights.parent / "head.pt"
    argv = split_argv("tiny_client", "--weights", str(client_weights))
    record = audit([*argv, "--head", "audit_user_code:tiny_head", "--head_weights", str(head_weights)], tmp_path / "a")
    # the same client as the encoder of a split method, through the same evaluator with the same seed; the decoder
    # the audit fitted is forgotten, so that the method's decoder is trained afresh, not reused
    clear_fitted_decoders()
    datamodule = Digits(pool_limit=MEMBERS, seed=0)
    method = SplitTwin(datamodule.spec)
    method.encoder.load_state_dict(torch.load(client_weights, weights_only=True))
    method.classifier.load_state_dict(torch.load(head_weights, weights_only=True))
    run = {"world_size": 1, "precision": "32-true", "config_names": []}
    reference, _ = Evaluator([FeatureInversion(**INVERSION)], seed=0, records_dir=str(tmp_path / "method")).evaluate(
        method.eval(), datamodule, config={}, training=None, run=run
    )
    (entry,) = record["privacy"]
    (expected,) = reference.to_dict()["privacy"]
    assert entry["attack"] == "feature_inversion" and entry.get("error") is None
    assert entry["metrics"] == expected["metrics"]
    assert entry["details"]["decoder_used"] == expected["details"]["decoder_used"]
    assert record["cost"]["released_bytes_per_sample"] == reference.cost["released_bytes_per_sample"]
    assert record["method"]["threat_models"] == ["feature_release"]
    assert record["utility"] == reference.utility and record["utility"]["accuracy"] > 0.5
    external = record["external"]
    assert external["kind"] == "split" and external["factory"] == "audit_user_code:tiny_client"
    assert external["head"] == "audit_user_code:tiny_head"
    assert len(external["weights_sha256"]) == 64 and len(external["head_weights_sha256"]) == 64
    assert any("accuracy of audit_user_code:tiny_head" in line for line in external["assumptions"])
    assert any("attacker pool" in line for line in external["assumptions"])


def test_a_split_audit_tells_a_leaking_release_from_a_private_one(user_package, tmp_path):
    # the image itself against nothing about it: the affine decoder identifies every image of the first, none of the
    # second (no --weights: the clients have no parameters, and the record says so; no --head: no utility)
    affine = {**INVERSION, "decoder": "affine", "epochs": 30, "max_attacker_samples": None}
    rates = {}
    for release in ("identity_client", "constant_client"):
        record = audit(split_argv(release, init_args=affine), tmp_path / release)
        rates[release] = record["privacy"][0]["metrics"]["identification_rate"]
        assert record["external"]["weights_sha256"] is None and record["utility"] == {}
        assert any("no utility" in line for line in record["external"]["assumptions"])
        assert any("no --weights" in line for line in record["external"]["assumptions"])
    assert rates["identity_client"] > 0.9 and rates["constant_client"] < 0.2, rates


def test_a_split_audit_attacks_with_every_decoder_family_by_default():
    from bench.attacks.feature_inversion import FAMILIES
    from bench.audit.command import _attacks

    attacks = _attacks(None, ThreatModel.FEATURE_RELEASE)
    assert all(attack.threat_model is ThreatModel.FEATURE_RELEASE for attack in attacks)
    (inversion,) = [attack for attack in attacks if isinstance(attack, FeatureInversion)]
    assert inversion.decoder == FAMILIES and inversion.epochs == FeatureInversion().epochs


SPLIT_BAD_INPUTS = {
    "factory not a module": (["--release", "audit_user_code:not_a_module"], "not a torch.nn.Module"),
    "weights do not fit": (["--weights", "{wrong}"], "does not fit --release audit_user_code:tiny_client"),
    "release not a tensor": (["--release", "audit_user_code:tuple_client"], "returns a tuple"),
    "release not one row per image": (["--release", "audit_user_code:batch_mean_client"], "one row per image"),
    "client cannot take the images": (["--release", "audit_user_code:rgb_client"], "cannot take (8, 1, 8, 8) images"),
    "with a classifier's option": (["--members", "members.npy"], "drop --members"),
    "head does not classify the release": (["--head", "audit_user_code:tuple_client"], "--head audit_user_code:tuple"),
    "head answers the wrong shape": (["--head", "audit_user_code:identity_client"], "answers (8, 64)"),
    "head weights do not fit": (
        ["--head", "audit_user_code:tiny_head", "--head_weights", "{wrong}"],
        "does not fit --head audit_user_code:tiny_head",
    ),
    "head weights without a head": (["--head_weights", "{wrong}"], "give it"),
    "no attack of a feature release": (
        ["--attacks", json.dumps([{"class_path": "LossThreshold"}])],
        "none of them attacks a feature release",
    ),
}


@pytest.mark.parametrize("case", list(SPLIT_BAD_INPUTS))
def test_bad_split_input_is_one_line_before_any_decoder_trains(case, user_package, tmp_path, capsys, monkeypatch):
    options, expected = SPLIT_BAD_INPUTS[case]
    torch.save({"weight": torch.zeros(3)}, tmp_path / "wrong.pt")
    argv = split_argv("tiny_client")
    for key, value in zip(options[::2], options[1::2]):
        value = value.replace("{wrong}", str(tmp_path / "wrong.pt"))
        if key in argv:
            argv[argv.index(key) + 1] = value
        else:
            argv += [key, value]
    decoders = []
    monkeypatch.setattr(FeatureInversion, "train_decoder", lambda *a, **k: decoders.append(1) or 1 / 0)
    with pytest.raises(SystemExit) as exit_info:
        main(["audit", *argv, "--records_dir", str(tmp_path / "records")])
    assert exit_info.value.code == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bench: error:") and expected in lines[0], lines
    assert not decoders and not list((tmp_path / "records").glob("*.json"))


# ---------------------------------------------------------------------- --device and torchvision:NAME
@pytest.mark.parametrize(
    "device, expected",
    [("banana", "--device banana: not a device"), ("cuda:99", "--device cuda:99: this machine has")],
)
def test_device_is_checked_like_bench_evaluates(device, expected, user_package, tmp_path, capsys):
    argv = split_argv("tiny_client")
    argv[argv.index("--device") + 1] = device
    with pytest.raises(SystemExit) as exit_info:
        main(["audit", *argv, "--records_dir", str(tmp_path)])
    lines = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 1 and len(lines) == 1 and lines[0].startswith("bench: error:"), lines
    if expected.endswith("this machine has") and not torch.cuda.is_available():
        expected = "--device cuda:99: this machine has no usable GPU"
    assert expected in lines[0] and not list(tmp_path.glob("*.json"))


def test_torchvision_classifiers_by_name(trained, tmp_path, capsys):
    from bench.audit.external import network_factory

    network = network_factory("torchvision:squeezenet1_1", 10)()  # weights=None: nothing is downloaded
    assert isinstance(network, nn.Module) and network.classifier[1].out_channels == 10
    torch.save(network.state_dict(), tmp_path / "squeezenet.pt")
    cases = {
        # a name torchvision does not have
        "torchvision:resnet_nine_thousand": "torchvision has no classifier 'resnet_nine_thousand'",
        # a real one, whose weights fit, but which takes 3-channel images larger than the digits' 1 x 8 x 8
        "torchvision:squeezenet1_1": "one step of the default recipe (Adam, cross-entropy) failed on (8, 1, 8, 8)",
    }
    for name, expected in cases.items():
        argv = classifier_argv(trained[0])
        argv[argv.index("--model") + 1] = name
        argv[argv.index("--weights") + 1] = str(tmp_path / "squeezenet.pt")
        with pytest.raises(SystemExit) as exit_info:
            main(["audit", *argv, "--records_dir", str(tmp_path / "records")])
        lines = capsys.readouterr().err.strip().splitlines()
        assert exit_info.value.code == 1 and len(lines) == 1 and expected in lines[0], lines
    assert not list((tmp_path / "records").glob("*.json"))
