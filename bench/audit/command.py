"""``bench audit``: the black-box suite on a classifier trained elsewhere, or the membership metrics of saved scores.

Every input is checked, in one line each, before any shadow model trains: the factory builds a module, the weights
fit it, the members are valid indices, one step of the recipe runs and the network answers the data's classes.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Optional

from bench.errors import BenchError, CommandLineParser
from bench.records import DEFAULT_RECORDS_DIR

EPILOG = """examples:
  bench audit --model mypkg.nets:build --weights model.pt --members members.npy --data Digits
  bench audit --model torchvision:resnet18 --weights model.pt --members members.npy --data CIFAR10 \
      --train mypkg.fit:train
  bench audit --scores scores.npz
(docs/auditing_a_model.md: the formats, the recipe's assumptions)"""


def parser() -> CommandLineParser:
    parser = CommandLineParser(
        prog="bench audit",
        description="Audit a classifier trained elsewhere (black-box membership inference), or saved scores.",
        epilog=EPILOG,
    )
    parser.add_argument("--model", help="PKG.MODULE:FACTORY building the torch.nn.Module, or torchvision:NAME")
    parser.add_argument("--weights", help="its state dict (torch.save; read weights_only, loaded strictly)")
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
        "--attacks", default=None, help="JSON list of {class_path, init_args} (default: every black-box attack)"
    )
    parser.add_argument("--scores", default=None, help="audit saved scores (.npz) instead of a model")
    parser.add_argument("--seed", type=int, default=0, help="the evaluation seed")
    parser.add_argument("--records_dir", default=DEFAULT_RECORDS_DIR, help="where the record goes")
    parser.add_argument("--leaderboard_dir", default=None, help="regenerate a leaderboard here afterwards")
    parser.add_argument("--experiment", default=None, help="the record's experiment (default: external-<factory>)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, ...")
    return parser


def audit_command(argv: list[str]) -> None:
    args = parser().parse_args(argv)
    if args.scores is not None:
        extra = [f"--{key}" for key in ("model", "weights", "members", "train") if getattr(args, key) is not None]
        if extra:
            raise BenchError(f"--scores audits saved scores without a model: drop {', '.join(extra)}")
        return _audit_scores(args)
    missing = [f"--{key}" for key in ("model", "weights", "members") if getattr(args, key) is None]
    if missing:
        raise BenchError(f"bench audit needs {', '.join(missing)} (or --scores FILE); bench audit --help")
    outcome = audit_classifier(args)
    print(outcome.summary(), flush=True)
    if not outcome.complete:
        raise outcome.incomplete_error()


def _attacks(spec: Optional[str]) -> list:
    from bench import registry
    from bench.checkpoints import instantiate_attack
    from bench.threat_models import ThreatModel

    if spec is None:
        return [cls() for cls in registry.attacks().values() if cls.threat_model is ThreatModel.BLACK_BOX_OUTPUTS]
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

    from bench import registry
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
    from bench.evaluator import Evaluator, Outcome
    from bench.threat_models import ThreatModel

    data_class = registry.resolve_class("datamodule", args.data, allow_import=True)
    data_args = {"seed": args.data_seed, "pool_limit": args.pool_limit}
    if args.data_dir is not None:
        data_args["data_dir"] = args.data_dir
    datamodule = data_class(**data_args)
    members = read_members(args.members, source_size(datamodule))
    assign_member_pools(datamodule, members)
    spec = datamodule.spec
    factory = network_factory(args.model, spec.num_classes)
    train_function = import_typed(args.train, "--train") if args.train is not None else None
    module = ExternalClassifier(spec, factory, args.model, train_function, args.train, args.lr)
    load_weights(module.network, args.weights, args.model)
    module = module.to(torch.device(args.device)).eval()
    attacks = _attacks(args.attacks)
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
    run = {"world_size": 1, "precision": "32-true", "config_names": [], "budget": None}
    record, evaluation = evaluator.evaluate(module, datamodule, config=config, training=None, run=run)
    record = record.parse({**record.to_dict(), "external": external})
    record, path, failed = evaluator.write(record, evaluation)
    outcome = Outcome(record, path, evaluation, fallback_from=failed)
    evaluator.refresh_leaderboard(outcome)
    return outcome


def _assumptions(args, attacks: list, members: int) -> list[str]:
    epochs = sorted({getattr(a, "shadow_epochs") for a in attacks if hasattr(a, "shadow_epochs")})
    batches = sorted({getattr(a, "batch_size") for a in attacks if hasattr(a, "batch_size")})
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
