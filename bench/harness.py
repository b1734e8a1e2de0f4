"""The uniform evaluation harness: utility, cost and every attack of a method's threat models.

The harness talks to a method only through :class:`~bench.modules.base.PrivacyModule`'s
contract (``forward``, ``threat_models`` and what each threat model requires) and to the data
only through the DataModule's pools. It runs on one process with a fixed seed, so the same
checkpoint always gets the same numbers, whether it was trained on one device or many.
"""

from __future__ import annotations

import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence

import lightning
import torch

import bench
from bench import registry
from bench.attacks.base import Attack
from bench.attacks.cache import caching_decoders
from bench.attacks.shadow_pool import ShadowPool, TargetTraining, sharing_shadows, training_like
from bench.datamodules.base import PrivacyDataModule
from bench.errors import class_path
from bench.metrics.cost import client_flops_per_sample, count_parameters, released_bytes_per_sample
from bench.metrics.reconstruction import ExampleImages
from bench.metrics.utility import utility_from_batches
from bench.records import SCHEMA_VERSION, Record, new_record_id, plain_json, run_facts_from_config, utc_now
from bench.threat_models import ThreatModel

if TYPE_CHECKING:  # the harness uses the contract only; importing the methods would make it depend on all of them
    from bench.modules.base import PrivacyModule


@dataclass
class Evaluation:
    utility: dict[str, float]
    privacy: list[dict[str, Any]]
    cost: dict[str, Any]
    examples: dict[str, ExampleImages] = field(default_factory=dict)  # attack -> originals and reconstructions
    started: str = ""
    finished: str = ""
    #: attacks of the method's threat models that do not apply to its task: {attack, threat_model, class, reason}
    skipped: list[dict[str, Any]] = field(default_factory=list)


def default_attacks() -> list[Attack]:
    """One instance of every registered attack, with its default configuration."""
    return [cls() for cls in registry.attacks().values()]


@torch.no_grad()
def test_utility(module: PrivacyModule, datamodule: PrivacyDataModule) -> dict[str, float]:
    """``accuracy`` on the test pool: top-1, or for attribute vectors 1 - the mean attribute error rate, which is
    recorded beside it with every attribute's accuracy (see :func:`bench.metrics.utility.utility_from_batches`)."""
    # the harness runs on one process: no synchronisation with the other DDP ranks
    batches = (
        (module(images.to(module.device)), labels.to(module.device))
        for images, labels in datamodule.pool_dataloader("test")
    )
    return utility_from_batches(batches, module.spec, datamodule.label_names, device=module.device)


def test_accuracy(module: PrivacyModule, datamodule: PrivacyDataModule) -> float:
    """The utility column's number: top-1 accuracy, or 1 - mean attribute error."""
    return test_utility(module, datamodule)["accuracy"]


@torch.no_grad()
def measure_cost(module: PrivacyModule, datamodule: PrivacyDataModule) -> dict[str, Any]:
    cost: dict[str, Any] = count_parameters(module)
    cost.update(module.training_report())  # e.g. per-layer sparsity, DP epsilon, the deployed part's size
    cost["compression_ratio"] = cost["parameters"] / max(cost["nonzero_parameters"], 1)  # x-fold; 1 when dense
    sample = datamodule.pool("test")[0][0].unsqueeze(0).to(module.device)
    cost["raw_bytes_per_sample"] = int(sample[0].numel())  # 8-bit pixels
    if ThreatModel.FEATURE_RELEASE in module.threat_models:
        released = module.release(sample)
        cost["released_bytes_per_sample"] = released_bytes_per_sample(released)
        cost["client_parameters"] = count_parameters(module.client_network())["parameters"]
        try:
            cost["client_flops_per_sample"] = client_flops_per_sample(module.release, sample)
        except RuntimeError:  # an op the FLOP counter cannot trace; cost stays honest by omission
            cost["client_flops_per_sample"] = None
    return cost


def evaluate(
    module: PrivacyModule,
    datamodule: PrivacyDataModule,
    attacks: Optional[Sequence[Attack]] = None,
    seed: int = 0,
    budget_check: bool = False,
    shadow_cache: Optional[str | Path] = None,
    target: Optional[TargetTraining] = None,
) -> Evaluation:
    """Measure utility and cost, and run every attack whose threat model ``module`` declares.

    ``budget_check`` reruns every learned attack (one with ``budget_args``) at twice its training
    budget and records, in its ``details["budget_check"]``, the relative change of its primary metric.
    ``shadow_cache``: a folder where the membership attacks' shadow models, and in its ``decoders`` folder the
    reconstruction attacks' fitted decoders, are kept, keyed by everything that determines them, for a rerun or
    another attack setting of the same target to reuse (:class:`~bench.attacks.shadow_pool.ShadowCache`,
    :class:`~bench.attacks.cache.DecoderCache`); None: trained in every evaluation.
    ``target``: how the target trained, which the shadows of the membership attacks copy where the attack states
    no epochs or batch size; None: as ``module``'s Trainer and ``datamodule`` tell it.
    """
    attacks = default_attacks() if attacks is None else list(attacks)
    was_training = module.training
    module.eval()
    datamodule.setup("test")
    started, clock = utc_now(), time.perf_counter()
    devices = [module.device] if module.device.type == "cuda" else []
    # stochastic releases (noise, random phases) draw from a seeded generator: same checkpoint, same numbers
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        target = target or TargetTraining.of(module, datamodule)
        return _evaluate(
            module, datamodule, attacks, seed, was_training, started, clock, budget_check, shadow_cache, target
        )


def _evaluate(
    module, datamodule, attacks, seed, was_training, started, clock, budget_check, shadow_cache, target
) -> Evaluation:
    try:
        utility = test_utility(module, datamodule)
        cost = measure_cost(module, datamodule)
        privacy, examples, skipped = [], {}, []
        applicable = []
        for attack in attacks:
            if attack.applies_to(module):
                applicable.append(attack)
                continue
            reason = attack.not_applicable_reason(module)
            if reason is not None:  # of the method's threat models, but not of its task: say so in the record
                skipped.append(
                    {
                        "attack": attack.name,
                        "threat_model": attack.threat_model.value,
                        "class": class_path(attack),
                        "reason": reason,
                    }
                )
        decoder_folder = None if shadow_cache is None else Path(shadow_cache) / "decoders"
        # shadows train like the target unless an attack says otherwise; fitted decoders are kept beside the shadows
        with training_like(target), caching_decoders(decoder_folder) as decoders:
            shadows = shadow_pool_for(applicable, seed, shadow_cache)
            with sharing_shadows(shadows):
                for attack in applicable:
                    entry, example = _run_attack(attack, module, datamodule, seed, budget_check)
                    privacy.append(entry)
                    if example is not None:
                        examples[attack.name] = example
    finally:
        module.train(was_training)
    cost["evaluation_seconds"] = round(time.perf_counter() - clock, 3)
    if decoders is not None and (decoders.trained or decoders.loaded):
        cost["decoders_trained"], cost["decoders_loaded"] = decoders.trained, decoders.loaded
    if shadows.models_trained or shadows.models_loaded:  # each entry's details["shadow_pool"] says its pool
        cost["shadow_models_trained"] = shadows.models_trained
        cost["shadow_models_loaded"] = shadows.models_loaded
        cost.update({f"shadow_pool_{kind}": size for kind, size in shadows.sizes().items()})
    return Evaluation(utility, privacy, cost, examples, started, utc_now(), skipped=skipped)


def shadow_pool_for(attacks: Sequence[Attack], seed: int, cache_dir: Optional[str | Path] = None) -> ShadowPool:
    """The evaluation's shadow pool, each of its pools sized for the attack that needs most of it."""
    pool = ShadowPool(seed, cache_dir=cache_dir)
    for attack in attacks:
        need = getattr(attack, "shadow_need", None)
        planned = need() if callable(need) else None
        if planned is not None:
            pool.plan(*planned)
    return pool


def _run_attack(attack: Attack, module, datamodule, seed: int, budget_check: bool):
    """One attack's privacy entry (its error instead of metrics if it raised) and its examples, if any."""
    generator = torch.Generator().manual_seed(seed)
    attack_clock = time.perf_counter()
    try:
        with torch.inference_mode(False), torch.enable_grad():
            result = attack.run(module, datamodule, generator)
        if budget_check and attack.budget_args:
            result.details["budget_check"] = _budget_check(attack, result, module, datamodule, seed)
    except Exception as error:  # one attack's failure never costs the others their results
        seconds = round(time.perf_counter() - attack_clock, 3)
        entry = {**_failed_entry(attack, error), "seconds": seconds, "device": str(module.device)}
        print(f"bench: attack {attack.name} FAILED: {entry['error']} ({seconds:.1f} s)", file=sys.stderr, flush=True)
        return entry, None
    seconds = round(time.perf_counter() - attack_clock, 3)
    shown = ", ".join(f"{key} {value:.4g}" for key, value in result.metrics.items() if isinstance(value, (int, float)))
    print(f"bench: attack {attack.name}: {shown} ({seconds:.1f} s)", flush=True)
    entry = {
        **_entry_of(attack),
        "metrics": result.metrics,
        "details": result.details,
        # e.g. an FPR too low for the non-members scored: beside the metrics it qualifies
        "warnings": list(result.details.get("warnings", [])),
        # the budget check's rerun included: what this attack cost the evaluation
        "seconds": seconds,
        "device": str(module.device),
    }
    return entry, result.examples


def _entry_of(attack: Attack) -> dict[str, Any]:
    """The privacy entry's description of ``attack`` (what ran, how it is read), without its results."""
    return {
        "attack": attack.name,
        "threat_model": attack.threat_model.value,
        "role": attack.role.value,
        "class": class_path(attack),
        "config": attack.config(),
        "directions": dict(attack.metric_directions),
        "primary_metric": attack.primary_metric,
    }


def _failed_entry(attack: Attack, error: Exception) -> dict[str, Any]:
    """The entry of an attack that raised: its error (type and first line), no metrics."""
    text = str(error).strip()
    message = f"{type(error).__name__}: {text.splitlines()[0]}" if text else type(error).__name__
    return {**_entry_of(attack), "metrics": {}, "details": {}, "warnings": [], "error": message[:500]}


BUDGET_CHECK_FACTOR = 2


def _budget_check(attack: Attack, result, module, datamodule, seed: int) -> dict[str, Any]:
    """Rerun ``attack`` at twice its budget.

    A primary metric that still moves means the attacker was not at its plateau.
    """
    rerun = attack.with_budget(BUDGET_CHECK_FACTOR).run(module, datamodule, torch.Generator().manual_seed(seed))
    metric = attack.primary_metric
    value, scaled = result.metrics[metric], rerun.metrics[metric]
    return {
        "factor": BUDGET_CHECK_FACTOR,
        "metric": metric,
        "value": value,
        "value_at_factor": scaled,
        "relative_change": (scaled - value) / abs(value) if value else None,
        "budget": {name: getattr(attack, name) * BUDGET_CHECK_FACTOR for name in attack.budget_args},
        "converged": rerun.details.get("converged"),
        "epochs_run": rerun.details.get("epochs_run"),
    }


def git_revision() -> Optional[str]:
    """The source tree's commit (with ``+dirty`` when it has changes), or None outside a checkout."""
    root = Path(__file__).resolve().parent.parent
    try:
        revision = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5)
        if revision.returncode != 0:
            return None
        # only the code counts: runs rewrite the tracked leaderboard files themselves
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", "bench", "pyproject.toml"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
        return revision.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def build_record(
    evaluation: Evaluation,
    module: PrivacyModule,
    datamodule: PrivacyDataModule,
    *,
    config: dict[str, Any],
    seed: Optional[int],
    evaluation_seed: int,
    run: Optional[dict[str, Any]] = None,
    paper: Optional[dict[str, Any]] = None,
    wandb: Optional[dict[str, Any]] = None,
    fit_seconds: Optional[float] = None,
    training: Optional[dict[str, Any]] = None,
    experiment: Optional[str] = None,
) -> Record:
    """The result record of one evaluation (:class:`bench.records.Record`), validated as it is built.

    ``run``: the run facts (:class:`bench.records.RunFacts`: world size, effective batch, precision, config
    names, budget), from the trainer that ran or the configuration of the checkpoint's run (None: derived from
    ``config`` and ``training``, as for a schema 1 record).
    """
    if run is None:
        run = run_facts_from_config(config, training)
    cost = dict(evaluation.cost)
    cost["fit_seconds"] = None if fit_seconds is None else round(fit_seconds, 3)
    record = {
        "schema_version": SCHEMA_VERSION,
        "record_id": new_record_id(),
        "created": utc_now(),
        "started": evaluation.started,
        "finished": evaluation.finished,
        "method": module.describe(),
        "dataset": datamodule.describe(),
        "seed": seed,
        "evaluation_seed": evaluation_seed,
        "training": training,
        "run": run,
        "config": config,
        "utility": evaluation.utility,
        "privacy": evaluation.privacy,
        "skipped_attacks": evaluation.skipped,
        "cost": cost,
        "paper": paper,
        "software": {
            "bench": bench.__version__,
            "git_revision": git_revision(),
            "torch": torch.__version__,
            "lightning": lightning.__version__,
            "python": platform.python_version(),
        },
        "wandb": wandb,
        "artifacts": {},
    }
    if experiment is not None:
        record["experiment"] = str(experiment)
    return Record.parse(plain_json(record))
