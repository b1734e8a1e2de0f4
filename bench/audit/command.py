"""``bench audit``: the black-box suite on a classifier trained elsewhere, the feature-release attacks on the client
part of a split model trained elsewhere, or the membership metrics of saved scores.

Every input is checked, in one line each, before any shadow model or decoder trains: the factory builds a module, the
weights fit it, the members are valid indices, one step of the recipe runs and the network answers the data's
classes; for a split model, the client releases one tensor row per image.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Optional

from bench.errors import BenchError, CommandLineParser
from bench.records import DEFAULT_RECORDS_DIR

EPILOG = """examples:
  bench audit --model mypkg.nets:build --weights model.pt --members members.npy --data Digits
  bench audit --model torchvision:resnet18 --weights model.pt --members members.npy --data CIFAR10 \\
      --train mypkg.fit:train
  bench audit --release mypkg.nets:client --weights client.pt --data Digits \\
      [--head mypkg.nets:server --head_weights server.pt]
  bench audit --scores scores.npz
(docs/auditing_a_model.md: the formats, the recipe's assumptions)"""


def parser() -> CommandLineParser:
    parser = CommandLineParser(
        prog="bench audit",
        description="Audit a classifier (black-box membership inference) or the client of a split model (feature "
        "release) trained elsewhere, or saved scores.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,  # the examples keep their lines
    )
    parser.add_argument("--model", help="PKG.MODULE:FACTORY building the torch.nn.Module, or torchvision:NAME")
    parser.add_argument(
        "--release", help="PKG.MODULE:FUNCTION building the client network of a split model (what it releases)"
    )
    parser.add_argument(
        "--weights", help="the --model's or --release's state dict (torch.save; read weights_only, loaded strictly)"
    )
    parser.add_argument(
        "--head", help="with --release: PKG.MODULE:FUNCTION building the server part (release -> logits), for utility"
    )
    parser.add_argument("--head_weights", help="the --head's state dict (read weights_only, loaded strictly)")
    parser.add_argument("--members", help="which examples of --data trained it: .npy indices or boolean mask, or .txt")
    parser.add_argument(
        "--data", default="Digits", help="the DataModule whose source --members indexes (default Digits)"
    )
    parser.add_argument("--data_dir", default=None, help="where the dataset lives")
    parser.add_argument("--data_seed", type=int, default=0, help="draws the pools beside the members")
    parser.add_argument("--pool_limit", type=int, default=None, help="cap every pool (quick runs)")
    parser.add_argument("--train", default=None, help="PKG.MODULE:FUNCTION, train(model, dataset) -> model: the recipe")
    parser.add_argument("--lr", type=float, default=1e-3, help="the default recipe's Adam learning rate")
    parser.add_argument(
        "--attacks",
        default=None,
        help="JSON list of {class_path, init_args} (default: every black-box attack; with --release, every "
        "feature-release attack, FeatureInversion with one decoder of each family)",
    )
    parser.add_argument("--scores", default=None, help="audit saved scores (.npz) instead of a model")
    parser.add_argument("--seed", type=int, default=0, help="the evaluation seed")
    parser.add_argument("--records_dir", default=DEFAULT_RECORDS_DIR, help="where the record goes")
    parser.add_argument("--leaderboard_dir", default=None, help="regenerate a leaderboard here afterwards")
    parser.add_argument("--experiment", default=None, help="the record's experiment (default: external-<factory>)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (auto: cuda if available)")
    return parser


def audit_command(argv: list[str]) -> None:
    from bench.evaluator import evaluation_device

    args = parser().parse_args(argv)
    if args.scores is not None:
        extra = _given(args, "model", "release", "weights", "head", "head_weights", "members", "train")
        if extra:
            raise BenchError(f"--scores audits saved scores without a model: drop {', '.join(extra)}")
        return _audit_scores(args)
    args.device = evaluation_device(args.device)
    if args.head_weights is not None and args.head is None:
        raise BenchError("--head_weights are the weights of a --head PKG.MODULE:FUNCTION: give it")
    if args.head is not None and args.release is None:
        raise BenchError("--head is the server part of a split model: give its client as --release PKG.MODULE:FUNCTION")
    if args.release is not None:
        extra = _given(args, "model", "members", "train")
        if extra:
            raise BenchError(
                f"--release audits the client of a split model by what it releases: drop {', '.join(extra)} "
                "(they audit a classifier)"
            )
        outcome = audit_split(args)
    else:
        missing = [f"--{key}" for key in ("model", "weights", "members") if getattr(args, key) is None]
        if missing:
            raise BenchError(
                f"bench audit needs {', '.join(missing)} (or --release PKG.MODULE:FUNCTION, or --scores FILE); "
                "bench audit --help"
            )
        outcome = audit_classifier(args)
    print(outcome.summary(), flush=True)
    if not outcome.complete:
        raise outcome.incomplete_error()


def _given(args, *keys: str) -> list[str]:
    return [f"--{key}" for key in keys if getattr(args, key) is not None]


def _registered_attacks(threat_model) -> list[type]:
    from bench import registry

    return [cls for cls in registry.attacks().values() if cls.threat_model is threat_model]


def _attacks(spec: Optional[str], threat_model) -> list:
    """``--attacks``, or by default every registered attack of ``threat_model`` at its default configuration (the
    harness then runs those that apply to the module, as for a method of the suite)."""
    from bench.checkpoints import instantiate_attack

    if spec is None:
        return [cls() for cls in _registered_attacks(threat_model)]
    try:
        specs = json.loads(spec)
    except json.JSONDecodeError as error:
        raise BenchError(f"--attacks: not JSON ({error})") from None
    if not isinstance(specs, list) or not specs:
        raise BenchError("--attacks must be a non-empty JSON list of {class_path, init_args}")
    return [instantiate_attack(item, f"--attacks[{index}]") for index, item in enumerate(specs)]


def audit_classifier(args) -> Any:
    """Check everything, then evaluate through the :class:`~bench.evaluator.Evaluator` and write the record."""
    import torch

    from bench.audit.external import (
        ExternalClassifier,
        assign_member_pools,
        check_recipe,
        file_sha256,
        import_typed,
        load_weights,
        network_factory,
        read_members,
        source_size,
    )
    from bench.evaluator import Evaluator
    from bench.threat_models import ThreatModel

    datamodule, data_args = _datamodule(args)
    members = read_members(args.members, source_size(datamodule))
    assign_member_pools(datamodule, members)
    spec = datamodule.spec
    factory = network_factory(args.model, spec.num_classes)
    train_function = import_typed(args.train, "--train") if args.train is not None else None
    module = ExternalClassifier(spec, factory, args.model, train_function, args.train, args.lr)
    load_weights(module.network, args.weights, args.model)
    module = module.to(torch.device(args.device)).eval()
    attacks = _attacks(args.attacks, ThreatModel.BLACK_BOX_OUTPUTS)
    if not any(attack.threat_model is ThreatModel.BLACK_BOX_OUTPUTS for attack in attacks):
        raise BenchError(
            "--attacks: none of them is a black-box (membership) attack, which is what audits a classifier"
        )
    evaluator = Evaluator(
        attacks,
        seed=args.seed,
        records_dir=args.records_dir,
        leaderboard_dir=args.leaderboard_dir,
        experiment=args.experiment or f"external-{args.model}",
    )
    evaluator.check_preconditions(module, datamodule)
    probe_images, probe_labels = (t[:8] for t in datamodule.pool("attacker").tensors())
    check_recipe(module, probe_images.to(module.device), probe_labels.to(module.device))
    external = {
        "kind": "classifier",
        "factory": args.model,
        "weights_sha256": file_sha256(args.weights),
        "members": str(Path(args.members).resolve()),
        "recipe": args.train or f"default: cross-entropy, Adam (lr {args.lr})",
        "assumptions": _assumptions(args, attacks, len(members)),
    }
    config = {
        "model": {"factory": args.model, "weights": str(Path(args.weights).resolve()), "train": args.train},
        "data": {"class_path": args.data, "init_args": data_args, "members": external["members"]},
        "evaluation": {"seed": args.seed, "attacks": [_describe(a) for a in attacks]},
    }
    return _evaluate_and_write(evaluator, module, datamodule, config, external)


def _datamodule(args) -> tuple[Any, dict[str, Any]]:
    """The ``--data`` DataModule (a registered name or a class path the user typed) and its init arguments."""
    from bench import registry

    data_class = registry.resolve_class("datamodule", args.data, allow_import=True)
    data_args = {"seed": args.data_seed, "pool_limit": args.pool_limit}
    if args.data_dir is not None:
        data_args["data_dir"] = args.data_dir
    return data_class(**data_args), data_args


def _evaluate_and_write(evaluator, module, datamodule, config: dict, external: dict, drop_utility: bool = False):
    """The harness through the evaluator; the record gets its ``external`` section (and, for a client without a
    server part, no utility), is written, and the leaderboard refreshed."""
    from bench.evaluator import Outcome

    run = {"world_size": 1, "precision": "32-true", "config_names": [], "budget": None}
    record, evaluation = evaluator.evaluate(module, datamodule, config=config, training=None, run=run)
    changes: dict[str, Any] = {"external": external}
    if drop_utility:
        changes["utility"] = {}
        evaluation.utility = {}
    record = record.parse({**record.to_dict(), **changes})
    record, path, failed = evaluator.write(record, evaluation)
    outcome = Outcome(record, path, evaluation, fallback_from=failed)
    evaluator.refresh_leaderboard(outcome)
    return outcome


def audit_split(args) -> Any:
    """The client of a split model: checked (it builds, its weights fit, it releases a tensor row per image), then
    the feature-release attacks through the :class:`~bench.evaluator.Evaluator`, and the record."""
    import torch

    from bench.audit.external import file_sha256, import_typed, load_weights
    from bench.audit.split import ExternalRelease, check_release
    from bench.evaluator import Evaluator
    from bench.threat_models import ThreatModel

    datamodule, data_args = _datamodule(args)
    if datamodule.download:
        datamodule.prepare_data()
    factory = import_typed(args.release, "--release")
    head = None if args.head is None else import_typed(args.head, "--head")
    module = ExternalRelease(datamodule.spec, factory, args.release, head, args.head)
    if args.weights is not None:
        load_weights(module.client, args.weights, args.release, "--release")
    if args.head_weights is not None:
        load_weights(module.head, args.head_weights, args.head, "--head")
    module = module.to(torch.device(args.device)).eval()
    # the defaults: the feature inversion trains one decoder of each family that takes the release (an unknown
    # client may be inverted best by any of them) and reports the worst case over them
    attacks = _attacks(args.attacks, ThreatModel.FEATURE_RELEASE)
    if not any(attack.applies_to(module) for attack in attacks):
        raise BenchError(
            "--attacks: none of them attacks a feature release without the method's own parts (e.g. "
            "FeatureInversion), which is what audits a split model's client"
        )
    evaluator = Evaluator(
        attacks,
        seed=args.seed,
        records_dir=args.records_dir,
        leaderboard_dir=args.leaderboard_dir,
        experiment=args.experiment or f"external-{args.release}",
    )
    evaluator.check_preconditions(module, datamodule)
    check_release(module, datamodule.pool("attacker").tensors()[0][:8].to(module.device))
    weights = None if args.weights is None else str(Path(args.weights).resolve())
    external = {
        "kind": "split",
        "factory": args.release,
        "weights_sha256": None if args.weights is None else file_sha256(args.weights),
        "head": args.head,
        "head_weights_sha256": None if args.head_weights is None else file_sha256(args.head_weights),
        "assumptions": _split_assumptions(args),
    }
    head_weights = None if args.head_weights is None else str(Path(args.head_weights).resolve())
    config = {
        "model": {"release": args.release, "weights": weights, "head": args.head, "head_weights": head_weights},
        "data": {"class_path": args.data, "init_args": data_args},
        "evaluation": {"seed": args.seed, "attacks": [_describe(a) for a in attacks]},
    }
    return _evaluate_and_write(evaluator, module, datamodule, config, external, drop_utility=args.head is None)


def _split_assumptions(args) -> list[str]:
    return [
        "the client network takes images in [0, 1] (any normalisation is part of it) and releases exactly what "
        "it returns",
        f"the attacker queries the client as a black box on the {args.data} attacker pool (drawn from the same "
        "distribution as the images it attacks, disjoint from them) and is scored on the test pool",
        (
            "no utility: only the client was given (no server part, --head), so the record has no accuracy"
            if args.head is None
            else f"utility: the test pool's accuracy of {args.head} on the client's release"
        ),
        *(["no --weights: the client's parameters are as its factory built them"] if args.weights is None else []),
        *(
            [f"no --head_weights: {args.head}'s parameters are as its factory built them"]
            if args.head is not None and args.head_weights is None
            else []
        ),
    ]


def _assumptions(args, attacks: list, members: int) -> list[str]:
    # the target's training is unknown here: each attack's own setting, else the fallback
    recipes = [a.shadow_training() for a in attacks if callable(getattr(a, "shadow_training", None))]
    epochs, batches = sorted({e for e, _ in recipes}), sorted({b for _, b in recipes})
    assumptions = [
        f"the target trained on exactly the {members} examples of --members (indices into the {args.data} source); "
        "the pools beside them are drawn from the rest",
        "the network takes images in [0, 1] (any normalisation is part of the network)",
    ]
    if args.train is None:
        assumptions.append(
            f"shadow and reference models train by a declared default recipe (cross-entropy, Adam lr {args.lr}, "
            f"shadow_epochs {epochs}, batch size {batches}, no augmentation), not the target's own: if the target's "
            "recipe differs, the shadows and so the attacks may be weaker than an adversary who knows it"
        )
    else:
        assumptions.append(f"shadow and reference models train by the user's {args.train} (the target's recipe)")
    return assumptions


def _describe(attack) -> dict[str, Any]:
    from bench.checkpoints import describe_attack

    return describe_attack(attack)


def _audit_scores(args) -> None:
    import bench
    from bench.audit.scores import describe_file, load_scores, score_saved
    from bench.harness import git_revision
    from bench.records import SCHEMA_VERSION, Record, new_record_id, plain_json, utc_now, write_record

    scores = load_scores(args.scores)
    entries = score_saved(scores, seed=args.seed)
    external = {
        "kind": "scores",
        **describe_file(args.scores),
        "assumptions": [
            "membership labels, logits or losses and reference models are as the file says; bench trained nothing",
            "empirical epsilon at delta 1e-5 (the file states no delta)",
        ],
    }
    name = Path(args.scores).stem
    record = Record.parse(
        plain_json(
            {
                "schema_version": SCHEMA_VERSION,
                "record_id": new_record_id(),
                "created": utc_now(),
                "method": {"name": "external", "label": f"external scores ({name})", "hparams": {}},
                "dataset": {"name": "external", "pool_sizes": {"queries": int(len(scores["membership"]))}},
                "evaluation_seed": args.seed,
                "run": {"world_size": 1, "precision": "unknown", "config_names": [], "budget": None},
                "config": {"scores": external["scores"], "evaluation": {"seed": args.seed}},
                "utility": {},
                "privacy": entries,
                "cost": {},
                "software": {"bench": bench.__version__, "git_revision": git_revision()},
                "experiment": args.experiment or f"external-scores-{name}",
                "external": external,
            }
        )
    )
    path = write_record(record, args.records_dir)
    parts = [
        f"{entry['attack']} " + " ".join(f"{k} {v:.4g}" for k, v in entry["metrics"].items() if v is not None)
        for entry in entries
    ]
    print(f"\nbench: audit of saved scores {args.scores}: " + " | ".join(parts), flush=True)
    print(f"  result record: {path}", file=sys.stdout, flush=True)
