"""What the harness costs against what the method costs: training time, each attack's time, its floor, the ratios.

For each config (default: every shipped ``*mnist_shared*`` config and the quickstart), one ``bench fit`` in this
process with its default attack list, side by side:

* ``fit s``: the method's training (the record's ``cost.fit_seconds``);
* each attack's wall time (timed around the harness's call of the attack, in every version of the code);
* its floor: for an attack that trains shadow models, the models it trained times one target-recipe training (one
  shadow of the same recipe, epochs and data, timed here alone); for a learned attacker, a plain Adam loop of the
  same network, loss and batches (no validation, no early stopping) times the epochs it ran;
* per config: the feature-release attacks' time over training (issue 27's target: <= 5x) and the membership
  suite's time over (distinct shadow models the suite needs x one target-recipe training) (target: <= 1.3x);
  the distinct models are the most any attack needs of each pool (offline, online) per shadow setting, whatever
  the code under test trains.

    OMP_NUM_THREADS=2 python benchmarks/harness_cost.py [--configs dnn/mnist_shared mcmia/mnist_shared_none quickstart
        mcmia/mnist_shared_none+mcmia/mia_suite_mnist_shared_core]   (a+b: --config a --config b)
        [--max_epochs 3] [--pool_limit 400] [--shadow_epochs 5] [--attack_epochs 20] [--json out.json]

``--max_epochs`` caps the target's epochs, ``--pool_limit`` every data pool, ``--shadow_epochs`` and
``--attack_epochs`` every attack's shadow epochs and learner budget: a few minutes on a CPU. Run from the repository
root (the ``mnist_shared`` configs read ``../shared/datasets/mnist``), with ``PYTHONPATH`` at the checkout to measure.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
import yaml

from bench import registry

#: attack settings capped by --shadow_epochs and by --attack_epochs
SHADOW_BUDGET = ("shadow_epochs",)
LEARNER_BUDGET = ("epochs", "critic_epochs", "estimator_epochs", "attack_epochs")


@dataclass
class AttackCost:
    name: str
    seconds: float = 0.0
    device: str = ""
    membership: bool = False
    shadow_fits: list[dict[str, Any]] = field(default_factory=list)  # one per ShadowModels.fit during the attack
    learners: list[dict[str, Any]] = field(default_factory=list)  # one per train_until_plateau during the attack
    need: Optional[tuple[tuple, int]] = None  # (pool key, models): what the attack needs of a shared pool
    floor: Optional[float] = None
    module: Any = None


class Recorder:
    """Hooks around the harness's attack calls, shadow fits and learner loops (present in every version of the code)."""

    def __init__(self) -> None:
        self.attacks: list[AttackCost] = []
        self.current: Optional[AttackCost] = None

    def install(self, stack: contextlib.ExitStack) -> None:
        import bench.harness
        from bench.attacks import shadow_models

        run_attack, fit = bench.harness._run_attack, shadow_models.ShadowModels.fit

        def timed_attack(attack, module, datamodule, *args, **kwargs):
            self.current = AttackCost(
                attack.name,
                device=str(module.device),
                module=module,
                membership=attack.threat_model.value == "black_box_outputs",
                need=_need(attack),
            )
            started = time.perf_counter()
            try:
                return run_attack(attack, module, datamodule, *args, **kwargs)
            finally:
                self.current.seconds = time.perf_counter() - started
                self.attacks.append(self.current)
                self.current = None

        def recorded_fit(shadows, images, labels, members, epochs, batch_size, generator, transform=None):
            if self.current is not None:
                self.current.shadow_fits.append(
                    {
                        "count": shadows.count,
                        "recipe": shadows.recipe,
                        "images": images,
                        "labels": labels,
                        "members": members[:1].clone(),
                        "epochs": epochs,
                        "batch_size": batch_size,
                        "transform": transform,
                    }
                )
            return fit(shadows, images, labels, members, epochs, batch_size, generator, transform=transform)

        stack.enter_context(_patched(bench.harness, "_run_attack", timed_attack))
        stack.enter_context(_patched(shadow_models.ShadowModels, "fit", recorded_fit))
        self._patch_learners(stack)

    def _patch_learners(self, stack: contextlib.ExitStack) -> None:
        import bench.attacks  # noqa: F401  (every attack module, so every importer of the loop is patched)
        from bench.attacks import training

        loop = training.train_until_plateau

        def recorded_loop(model, loss, train, validation, generator, **kwargs):
            report = loop(model, loss, train, validation, generator, **kwargs)
            if self.current is not None:
                self.current.learners.append(
                    {
                        "model": model,
                        "loss": loss,
                        "train": train,
                        "epochs_run": report.epochs_run,
                        "batch_size": kwargs["batch_size"],
                        "lr": kwargs["lr"],
                        "parameters": kwargs.get("parameters"),
                    }
                )
            return report

        for module in list(sys.modules.values()):
            ours = getattr(module, "__name__", "").startswith("bench.")
            if ours and getattr(module, "train_until_plateau", None) is loop:
                stack.enter_context(_patched(module, "train_until_plateau", recorded_loop))


@contextlib.contextmanager
def _patched(owner, name: str, value):
    saved = getattr(owner, name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, saved)


def _need(attack) -> Optional[tuple[tuple, int]]:
    """The shadow models a membership attack needs: ((pool kind, epochs, batch size, recipe), count); None for none."""
    if attack.threat_model.value != "black_box_outputs" or not hasattr(attack, "shadow_epochs"):
        return None
    count = getattr(attack, "shadow_models", getattr(attack, "reference_models", None))
    if count is None:
        count = 0 if attack.name == "nasr" else 1
    if not count:
        return None
    kind = "online" if attack.name.endswith("online") else "offline"
    return (kind, attack.shadow_epochs, attack.batch_size, attack.shadow_recipe), count


# ---------------------------------------------------------------------- floors
def _timed(function) -> float:
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


def one_shadow_seconds(module, fit: dict[str, Any]) -> float:
    """One shadow of the same recipe, data and epochs, trained alone: one target-recipe training."""
    from bench.attacks.shadow_models import ShadowModels

    shadow = ShadowModels(
        module,
        1,
        torch.Generator().manual_seed(0),
        module.device,
        recipe=fit["recipe"],
        augmented=fit["transform"] is not None,
    )
    return _timed(
        lambda: shadow.fit(
            fit["images"],
            fit["labels"],
            fit["members"],
            fit["epochs"],
            fit["batch_size"],
            torch.Generator().manual_seed(1),
            transform=fit["transform"],
        )
    )


def plain_loop_seconds(learner: dict[str, Any]) -> float:
    """A plain Adam loop of the same network, loss and batches over the epochs the learner ran (one epoch timed)."""
    model = copy.deepcopy(learner["model"]).train()
    parameters = learner["parameters"]
    if parameters is not None:  # the learner trained a subset: the same subset of the copy
        chosen = {id(p) for p in parameters}
        parameters = [q for p, q in zip(learner["model"].parameters(), model.parameters()) if id(p) in chosen]
    trainable = [p for p in (model.parameters() if parameters is None else parameters) if p.requires_grad]
    optimizer = torch.optim.Adam(trainable, lr=learner["lr"])
    train, batch_size, generator = learner["train"], learner["batch_size"], torch.Generator().manual_seed(0)

    def epoch() -> None:
        for start in range(0, len(train), batch_size):
            value = learner["loss"](model, train[start : start + batch_size], generator)
            optimizer.zero_grad(set_to_none=True)
            value.backward()
            optimizer.step()

    epoch()  # warm-up
    return _timed(epoch) * learner["epochs_run"]


def add_floors(attacks: list[AttackCost]) -> dict[str, float]:
    """Each attack's floor; returns the one-shadow time per pool key (the suite's floor unit)."""
    one_shadow: dict[tuple, float] = {}
    for cost in attacks:
        floor = 0.0
        for fit in cost.shadow_fits:
            key = (fit["recipe"], fit["epochs"], fit["batch_size"], len(fit["images"]))
            if key not in one_shadow:
                one_shadow[key] = one_shadow_seconds(cost.module, fit)
            floor += fit["count"] * one_shadow[key]
        floor += sum(plain_loop_seconds(learner) for learner in cost.learners)
        cost.floor = floor if (cost.shadow_fits or cost.learners) else None
    return {str(key): value for key, value in one_shadow.items()}


# ---------------------------------------------------------------------- one config
def capped_attacks(config: str, shadow_epochs: Optional[int], attack_epochs: Optional[int]) -> Optional[list]:
    """The config's attack list (its last ``evaluation.attacks`` over its composed files) with budgets capped."""
    attacks = None
    for path in [path for name in config.split("+") for path in registry.composed_configs(name)]:
        listed = ((yaml.safe_load(Path(path).read_text()) or {}).get("evaluation") or {}).get("attacks")
        if listed is not None:
            attacks = copy.deepcopy(listed)
    if attacks is None or (shadow_epochs is None and attack_epochs is None):
        return None
    from bench.registry import resolve_class

    for spec in attacks:
        init = spec.setdefault("init_args", {}) or {}
        spec["init_args"] = init
        parameters = _init_parameters(resolve_class("attack", spec["class_path"]))
        for name in parameters:
            cap = shadow_epochs if name in SHADOW_BUDGET else attack_epochs if name in LEARNER_BUDGET else None
            if cap is not None:
                init[name] = min(int(init.get(name, parameters[name])), cap)
    return attacks


def _init_parameters(cls) -> dict[str, Any]:
    import inspect

    return {
        name: parameter.default
        for name, parameter in inspect.signature(cls.__init__).parameters.items()
        if parameter.default is not inspect.Parameter.empty and isinstance(parameter.default, int)
    }


def run_config(config: str, args, workdir: Path) -> dict[str, Any]:
    from bench.cli import main

    records = workdir / "records"
    configs = [argument for name in config.split("+") for argument in ("--config", name)]
    argv = [
        "fit",
        *configs,
        "--trainer.logger",
        "false",
        "--trainer.default_root_dir",
        str(workdir),
        "--evaluation.records_dir",
        str(records),
        "--evaluation.leaderboard_dir",
        "null",
    ]
    if args.max_epochs is not None:
        argv += ["--trainer.max_epochs", str(args.max_epochs)]
    if args.pool_limit is not None:
        argv += ["--data.init_args.pool_limit", str(args.pool_limit)]
    attacks = capped_attacks(config, args.shadow_epochs, args.attack_epochs)
    if attacks is not None:
        override = workdir / "attacks.yaml"
        override.write_text(yaml.safe_dump({"evaluation": {"attacks": attacks}}))
        argv += ["--config", str(override)]
    recorder = Recorder()
    output = io.StringIO()
    with contextlib.ExitStack() as stack:
        recorder.install(stack)
        with contextlib.redirect_stdout(output):
            try:
                main(argv)
            except SystemExit as exit_:
                if exit_.code not in (0, None):
                    print(output.getvalue()[-3000:], file=sys.stderr)
                    raise
    (record_path,) = sorted(records.rglob("*.json"))
    record = json.loads(record_path.read_text())
    units = add_floors(recorder.attacks)
    return {
        "config": config,
        "fit_seconds": record["cost"].get("fit_seconds"),
        "target_epochs": (record.get("training") or {}).get("epochs"),
        "one_shadow_seconds": units,
        "attacks": [_row(cost) for cost in recorder.attacks],
        **_suite(recorder.attacks, record),
    }


def _row(cost: AttackCost) -> dict[str, Any]:
    return {
        "attack": cost.name,
        "seconds": round(cost.seconds, 2),
        "device": cost.device,
        "membership": cost.membership,
        "floor": None if cost.floor is None else round(cost.floor, 2),
        "ratio": None if not cost.floor else round(cost.seconds / cost.floor, 2),
        "shadow_models_trained": sum(fit["count"] for fit in cost.shadow_fits),
        "learner_epochs": [learner["epochs_run"] for learner in cost.learners],
    }


def _suite(attacks: list[AttackCost], record: dict[str, Any]) -> dict[str, Any]:
    fit = record["cost"].get("fit_seconds") or float("nan")
    release = [cost for cost in attacks if not cost.membership]
    membership = [cost for cost in attacks if cost.membership]
    needed: dict[tuple, int] = {}
    for cost in membership:
        if cost.need is not None:
            needed[cost.need[0]] = max(needed.get(cost.need[0], 0), cost.need[1])
    trained = sum(fit_["count"] for cost in membership for fit_ in cost.shadow_fits)
    unit = [fit_ for cost in membership for fit_ in cost.shadow_fits]
    one = None
    if unit:
        per_model = [
            cost.floor / max(1, sum(f["count"] for f in cost.shadow_fits))
            for cost in membership
            if cost.shadow_fits and not cost.learners and cost.floor
        ]
        one = min(per_model) if per_model else None
    distinct = sum(needed.values())
    membership_seconds = sum(cost.seconds for cost in membership)
    floor = distinct * one if one else None
    return {
        "release_seconds": round(sum(cost.seconds for cost in release), 2),
        "release_over_fit": round(sum(cost.seconds for cost in release) / fit, 2) if release else None,
        "membership_seconds": round(membership_seconds, 2),
        "shadow_models_needed": distinct,
        "shadow_models_trained": trained,
        "membership_floor": None if floor is None else round(floor, 2),
        "membership_over_floor": None if not floor else round(membership_seconds / floor, 2),
    }


def _names_a_model(config: str) -> bool:
    return any("model" in (yaml.safe_load(Path(path).read_text()) or {}) for path in registry.composed_configs(config))


def default_configs() -> list[str]:
    """Every shipped ``*mnist_shared*`` config and the quickstart; an attack suite (no model of its own) on top of the
    MCMIA baseline, as its header says to apply it."""
    names = sorted(name for name in registry.configs() if "mnist_shared" in name)
    return [name if _names_a_model(name) else f"mcmia/mnist_shared_none+{name}" for name in names] + ["quickstart"]


def print_table(results: list[dict[str, Any]]) -> None:
    print(f"{'config / attack':<44} {'seconds':>9} {'floor':>9} {'ratio':>7}  notes")
    for result in results:
        print(
            f"{result['config']:<44} {result['fit_seconds'] or 0:>9.1f} {'':>9} {'':>7}  training "
            f"({result['target_epochs']} epochs)"
        )
        for row in result["attacks"]:
            floor = "" if row["floor"] is None else f"{row['floor']:.1f}"
            ratio = "" if row["ratio"] is None else f"{row['ratio']:.2f}"
            notes = [row["device"]]
            if row["shadow_models_trained"]:
                notes.append(f"{row['shadow_models_trained']} shadows trained")
            if row["learner_epochs"]:
                notes.append(f"learner epochs {row['learner_epochs']}")
            print(f"  {row['attack']:<42} {row['seconds']:>9.1f} {floor:>9} {ratio:>7}  {', '.join(notes)}")
        if result["release_over_fit"] is not None:
            print(
                f"  {'= feature release / training':<42} {result['release_seconds']:>9.1f} {'':>9} "
                f"{result['release_over_fit']:>7.2f}  (target <= 5)"
            )
        if result["membership_floor"] is not None:
            print(
                f"  {'= membership suite / distinct shadows':<42} {result['membership_seconds']:>9.1f} "
                f"{result['membership_floor']:>9.1f} {result['membership_over_floor']:>7.2f}  "
                f"{result['shadow_models_needed']} needed, {result['shadow_models_trained']} trained (target <= 1.3)"
            )


def main(argv: Optional[list[str]] = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--configs",
        nargs="+",
        default=None,
        help="config names, a+b for two applied in turn (default: every *mnist_shared* and quickstart)",
    )
    parser.add_argument("--max_epochs", type=int, default=None, help="cap the target's epochs")
    parser.add_argument("--pool_limit", type=int, default=None, help="cap every data pool")
    parser.add_argument("--shadow_epochs", type=int, default=None, help="cap every attack's shadow epochs")
    parser.add_argument("--attack_epochs", type=int, default=None, help="cap every learned attacker's epochs")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    results = []
    for config in args.configs or default_configs():
        with tempfile.TemporaryDirectory(prefix="harness_cost_") as workdir:
            results.append(run_config(config, args, Path(workdir)))
        print(f"done: {config}", file=sys.stderr, flush=True)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{torch.cuda.get_device_name() if torch.cuda.is_available() else 'CPU'}"
    )
    print_table(results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
