"""The contract test, for any method: ``check_method_contract(MyMethod, tmp_path)`` in your own tests.

It is what ``tests/test_contract.py`` runs on every shipped method: the method builds from the data
spec alone, offers what its threat models require, fits a tiny run, is attacked by exactly the
registered attacks that apply to it (each at the tiny budget of ``bench/configs/pieces/budget/tiny.yaml``),
leaves one valid record, and restores bit for bit from its checkpoint. A method that declares a
threat model or capability no registered attack exercises fails too: the harness would report
nothing for it.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Optional

import torch
import yaml

from bench import registry
from bench.attacks.base import Attack
from bench.threat_models import ThreatModel

TINY_BUDGET = Path(registry.PIECE_DIR) / "budget" / "tiny.yaml"


def _expect(condition: bool, message: str) -> None:
    if not condition:  # not `assert`: the checks must hold under `python -O` too
        raise AssertionError(message)


@functools.cache
def _tiny_budget() -> dict[str, dict[str, Any]]:
    """Attack class name -> its init arguments at the tiny budget (names resolve in the registry only)."""
    entries = yaml.safe_load(TINY_BUDGET.read_text())["evaluation"]["attacks"]
    return {
        registry.lookup("attack", entry["class_path"]).__name__: dict(entry.get("init_args") or {}) for entry in entries
    }


def tiny_attacks() -> list[Attack]:
    """One instance of every registered attack at the tiny budget; an attack without an entry there fails."""
    budget = _tiny_budget()
    missing = sorted(set(registry.attacks()) - set(budget))
    _expect(not missing, f"attacks {missing} have no tiny budget: add them to {TINY_BUDGET}")
    return [cls(**budget[name]) for name, cls in registry.attacks().items()]


def unexercised_declarations(method: type) -> list[str]:
    """The threat models and capabilities ``method`` declares that no registered attack would use."""
    applicable = [
        attack
        for attack in registry.attacks().values()
        if attack.threat_model in method.threat_models and set(attack.requires) <= set(method.capabilities)
    ]
    unused = [
        f"threat model '{threat.value}'"
        for threat in method.threat_models
        if not any(attack.threat_model is threat for attack in applicable)
    ]
    unused += [
        f"capability '{capability.value}'"
        for capability in method.capabilities
        if not any(capability in attack.requires for attack in applicable)
    ]
    return unused


def check_method_contract(method: type, tmp_path: Path, datamodule: Optional[Any] = None) -> dict[str, Any]:
    """Raise AssertionError unless ``method`` honours the contract; return the record of its tiny run.

    ``datamodule`` defaults to the embedded digits capped at 64 images a pool; ``tmp_path`` receives
    the checkpoint and the record. Takes a few seconds on a CPU for the shipped methods.
    """
    import lightning as L

    from bench.checkpoints import load_checkpoint
    from bench.datamodules import Digits
    from bench.evaluator import Evaluator, fallback_config, run_facts_from_trainer, training_progress
    from bench.modules.base import PrivacyModule
    from bench.records import load_records

    name = getattr(method, "__name__", repr(method))
    _expect(
        isinstance(method, type) and issubclass(method, PrivacyModule), f"{name} is not a subclass of PrivacyModule"
    )
    _expect(bool(method.threat_models), f"{name} declares no threat model: the harness could not attack it")
    unused = unexercised_declarations(method)
    _expect(not unused, f"{name} declares {', '.join(unused)}, which no registered attack exercises")
    registry.register("method", method)  # the caller names it, as `--model pkg.Class` would: its checkpoint may name it

    # 64 per pool: shadows train like the target on half the attacker pool, 32 samples, as many as ResizedDNN's PCA
    # keeps components (a smaller half stops its recipe before the PCA phase, or fails it)
    datamodule = Digits(batch_size=16, pool_limit=64) if datamodule is None else datamodule
    registry.register("datamodule", type(datamodule))
    datamodule.prepare_data()
    datamodule.setup("fit")
    module = method(data_spec=datamodule.spec)  # every method must be constructible from the data spec alone
    classes = datamodule.spec.num_classes
    images = datamodule.pool("test").tensors()[0][:4]
    _expect(module(images).shape == (4, classes), f"{name}(x) must return (batch, {classes}) logits")
    if ThreatModel.FEATURE_RELEASE in module.threat_models:
        released = module.release(images)
        _expect(released.shape[0] == 4, f"{name}.release(x) must keep the batch dimension first")
        _expect(
            module.predict_from_release(released).shape == (4, classes),
            f"{name}.predict_from_release(release(x)) must return (batch, {classes}) logits",
        )
        _expect(isinstance(module.client_network(), torch.nn.Module), f"{name}.client_network() must be an nn.Module")

    attacks = tiny_attacks()
    trainer = L.Trainer(
        max_epochs=1,
        limit_train_batches=2,
        limit_val_batches=1,
        logger=False,
        accelerator="cpu",
        default_root_dir=tmp_path,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, datamodule)

    # the evaluator the callback and `bench evaluate` hand trained methods to, called directly
    evaluator = Evaluator(attacks=attacks, records_dir=str(tmp_path / "records"))
    evaluator.check_preconditions(module, datamodule)
    config = fallback_config(module, datamodule, trainer, evaluator)
    outcome = evaluator.run(
        module,
        datamodule,
        config=config,
        training=training_progress(trainer),
        run=run_facts_from_trainer(trainer, datamodule, config),
    )
    failed = {entry.attack: entry.error for entry in outcome.record.failed_attacks}
    _expect(not failed, f"{name}: attacks failed: {failed}")

    loaded = load_records([tmp_path / "records"])
    _expect(loaded.problems == [] and len(loaded.models) == 1, f"{name}: expected one valid record, got {loaded}")
    record = loaded.models[0]
    _expect(record.method.name == name, f"the record names {record.method.name}, not {name}")
    _expect(0.0 <= record.utility["accuracy"] <= 1.0, f"{name}: accuracy outside [0, 1]")
    expected = sorted(attack.name for attack in attacks if attack.applies_to(module))
    attacked = sorted(entry.attack for entry in record.privacy)
    _expect(
        attacked == expected, f"{name} was attacked by {attacked}, expected exactly the applicable attacks {expected}"
    )
    for entry in record.privacy:
        _expect(bool(entry.metrics), f"{name}: attack {entry.attack} reported no metrics")

    # `bench evaluate` rebuilds the very same model from the checkpoint
    restored, restored_data, _ = load_checkpoint(trainer.checkpoint_callback.best_model_path, device="cpu")
    _expect(
        type(restored) is method and type(restored_data) is type(datamodule),
        f"the checkpoint restores {type(restored).__name__} on {type(restored_data).__name__}",
    )
    original_state, restored_state = module.state_dict(), restored.state_dict()
    _expect(original_state.keys() == restored_state.keys(), f"{name}: the restored state has other keys")
    for key in original_state:
        torch.testing.assert_close(restored_state[key], original_state[key], rtol=0, atol=0)
    module.eval(), restored.eval()
    with torch.no_grad():  # stochastic releases draw the same noise under the same seed
        torch.manual_seed(0)
        expected_logits = module(images)
        torch.manual_seed(0)
        torch.testing.assert_close(restored(images), expected_logits)
    return record.to_dict()
