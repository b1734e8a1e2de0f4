"""Membership inference against any classifier of the suite, through its outputs alone.

Members are the DataModule's ``train`` pool, non-members its ``nonmember`` pool; the attacker
queries the trained method as a black box and trains everything of its own (shadow and reference
models, attack models, thresholds) on the ``attacker`` pool -- and, for the online attacks, on the
queried candidates themselves, never on their membership. Shadow models are trained by the
target's own recipe (:mod:`bench.attacks.shadow_models`: ``fresh_copy()``, its training_step,
optimizers, callbacks, augmentation, through a Lightning Trainer), batched under ``vmap`` when
that recipe is plain cross-entropy; the record says which (``shadow_recipe``).

Attacks (each reports attack accuracy, AUC, TPR at 1% and 0.1% FPR with the achieved FPR, the
threshold and intervals, an empirical epsilon lower bound, and its ROC curve):

* :class:`LossThreshold` (Yeom et al. 2018): a low loss (or a high logit-scaled confidence) means
  member; the threshold is calibrated on a shadow model.
* :class:`NasrAttack` (Nasr et al. 2018, as published): their inference model h(f(x), y) trained on
  the *target's* outputs for a known fraction of its members and of non-members, scored on the rest.
* :class:`NasrShadow`: the same h trained on a shadow model's members and non-members instead.
* :class:`ShokriShadow` (Shokri et al. 2017): several shadow models, one attack model per class
  (or one global) on their prediction vectors.
* :class:`LiRA` (Carlini et al. 2022), offline: a Gaussian fitted to shadow models' logit-scaled
  confidences on each query (every shadow is "out" for it), a one-sided test.
* :class:`LiRAOnline` and the RMIA attacks live in :mod:`bench.attacks.rmia` and
  :mod:`bench.attacks.lira` (offline and online).
"""

from __future__ import annotations

import copy
from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bench.attacks.base import Attack, AttackResult
from bench.attacks.shadow_models import RECIPES
from bench.attacks.shadow_pool import (
    FALLBACK_BATCH_SIZE,
    FALLBACK_EPOCHS,
    PooledShadows,
    PoolRecipe,
    ShadowPool,
    TargetTraining,
    current_shadow_pool,
    current_target_training,
    training_like,
)
from bench.errors import BenchError
from bench.metrics.membership import (
    DIRECTIONS,
    canary_report,
    epsilon_lower_bound,
    membership_report,
    membership_slices,
    roc_curve,
)
from bench.networks.classifiers import InferenceModel
from bench.threat_models import Role, ThreatModel

#: the audit's delta when the method states none (DP-SGD states its own)
AUDIT_DELTA = 1e-5
#: the per-example scores' pool column: which pool each query came from
POOL_CODES = {"train": 0, "nonmember": 1, "canary": 2}


# ---------------------------------------------------------------------- queries
@torch.no_grad()
def query_logits(model, images: Tensor, batch_size: int, device: torch.device) -> Tensor:
    """The black-box queries: ``model``'s logits on ``images``, batched, returned in float64 on the CPU."""
    return torch.cat(
        [model(images[i : i + batch_size].to(device)).double().cpu() for i in range(0, len(images), batch_size)]
    )


def logit_confidence(logits: Tensor, labels: Tensor) -> Tensor:
    """LiRA's phi = log(p_y / (1 - p_y)), computed stably from logits (in float64): z_y - logsumexp(z_{j != y})."""
    logits = logits.double()
    true = logits.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    others = logits.scatter(-1, labels.unsqueeze(-1), float("-inf"))
    return true - others.logsumexp(-1)


def true_class_log_probability(logits: Tensor, labels: Tensor) -> Tensor:
    """log p_y in float64, accurate where p_y is within 1e-300 of 1: -softplus(-phi), phi the logit confidence.

    float32 cross-entropy is exactly 0 for confident members, and so is a float64 log-softmax once
    the margin passes ~37 logits (logsumexp rounds log(1 + e^-40) to 0); log1p(e^-phi) does not.
    """
    return -F.softplus(-logit_confidence(logits, labels))


def best_threshold(scores: Tensor, is_member: Tensor) -> float:
    """The threshold maximising balanced accuracy on the attacker's own labelled scores (a shadow's in/out)."""
    order = scores.double().argsort(descending=True)
    sorted_scores, members = scores.double()[order], is_member[order].double()
    tpr = members.cumsum(0) / members.sum().clamp_min(1)
    fpr = (1 - members).cumsum(0) / (1 - members).sum().clamp_min(1)
    # only cut between distinct scores: equal scores get one decision
    distinct = torch.ones_like(sorted_scores, dtype=torch.bool)
    distinct[:-1] = sorted_scores[:-1] != sorted_scores[1:]
    balanced = torch.where(distinct, (tpr + 1 - fpr) / 2, torch.tensor(-1.0, dtype=torch.float64))
    return float(sorted_scores[int(balanced.argmax())])


def target_queries(
    datamodule, max_queries: Optional[int], generator: torch.Generator, with_index: bool = False
) -> tuple[Tensor, ...]:
    """Members (train pool) and non-members (nonmember pool), at most ``max_queries`` of each.

    Returns images, labels, is_member (and, ``with_index``, each query's index in its pool). Canaries are not among
    them (:func:`canary_queries`): the members are the training pool's natural samples.
    """
    parts = []
    for pool, member in (("train", 1), ("nonmember", 0)):
        images, labels = datamodule.pool(pool).tensors()
        natural = getattr(datamodule, "natural_train_size", None) if pool == "train" else None
        if natural is not None:
            images, labels = images[:natural], labels[:natural]
        index = torch.arange(len(images))
        if max_queries is not None and len(images) > max_queries:
            index = torch.randperm(len(images), generator=generator)[:max_queries]
            images, labels = images[index], labels[index]
        parts.append((images, labels, torch.full((len(images),), member), index))
    columns = tuple(torch.cat(t) for t in zip(*parts))
    return columns if with_index else columns[:3]


def canary_queries(datamodule) -> Optional[tuple[Tensor, Tensor, Tensor]]:
    """(images, labels, inclusion) of the DataModule's canary candidates, None without canaries.

    The attacker queries every candidate with its (possibly wrong) label; inclusion is only measured against."""
    read = getattr(datamodule, "canary_queries", None)
    return read() if read is not None else None


#: how many of the most exposed training images the record keeps (and the evaluator shows as a grid)
MOST_EXPOSED = 32


def _most_exposed(images, scores, is_member, pool, index, labels) -> dict[str, Any]:
    """The training images (natural members and included canaries) the attack scores highest: the records at risk."""
    trained = (is_member == 1) & ~torch.isnan(scores)
    candidates = trained.nonzero().squeeze(1)
    top = candidates[scores[candidates].argsort(descending=True, stable=True)[:MOST_EXPOSED]]
    pools = {code: name for name, code in POOL_CODES.items()}
    return {
        "images": images[top].detach().cpu(),
        "entries": [
            {"pool": pools[int(pool[i])], "index": int(index[i]), "label": int(labels[i]), "score": float(scores[i])}
            for i in top.tolist()
        ],
    }


def query_augmentations(transform) -> list[tuple[str, Any]]:
    """The deterministic queries that mirror the target's training augmentation (Carlini et al.'s LiRA code):
    the identity first, then every shift by 0 or +-padding pixels of a ``RandomCrop`` (zero padding, as the crop
    pads) and, only where the augmentation flips, each of them mirrored. None: the identity alone."""
    steps = list(getattr(transform, "transforms", [transform] if transform is not None else []))
    padding = next((step.padding for step in steps if type(step).__name__ == "RandomCrop"), 0)
    padding = int(padding[0] if isinstance(padding, (list, tuple)) else padding or 0)
    flips = any(type(step).__name__ == "RandomHorizontalFlip" for step in steps)

    def shifted(dx: int, dy: int, flip: bool):
        def apply(images: Tensor) -> Tensor:
            if dx or dy:
                height, width = images.shape[-2:]
                padded = F.pad(images, (padding, padding, padding, padding))
                images = padded[..., padding + dy : padding + dy + height, padding + dx : padding + dx + width]
            return images.flip(-1) if flip else images

        return apply

    offsets = [0, -padding, padding] if padding else [0]
    return [
        (f"shift({dx},{dy}){'+flip' if flip else ''}", shifted(dx, dy, flip))
        for flip in ([False, True] if flips else [False])
        for dy in offsets
        for dx in offsets
    ]


def augmentation_of(datamodule):
    """The target DataModule's training augmentation (part of the target's recipe), None when it has none."""
    pool = datamodule.pool("train")
    return getattr(pool, "transform", None)


# ---------------------------------------------------------------------- attacks
def _source(stated: Optional[int], target: Optional[int]) -> str:
    """Where a shadow setting came from, for the record."""
    return "attack" if stated is not None else "target" if target is not None else "fallback"


class MembershipInference(Attack):
    """Shared configuration and reporting of the membership-inference attacks.

    Args:
        shadow_epochs: epochs each shadow model trains (on half the attacker pool); None: the target's (the epochs
            its Trainer completed, or its checkpoint's), 30 where they are unknown (a model trained elsewhere).
        batch_size: shadow-model mini-batch size; None: the target's (its DataModule's ``batch_size`` times its
            Trainer's devices), 32 where it is unknown.
        max_queries: at most this many members and as many non-members are queried (None: all).
        query_batch_size: target queries per batch.
        shadow_recipe: ``auto`` (the target's recipe; batched when it is plain cross-entropy),
            ``target`` or ``plain`` (cross-entropy with the target's first optimizer, whatever its recipe).
    """

    abstract = True
    threat_model = ThreatModel.BLACK_BOX_OUTPUTS
    role = Role.ADVERSARY
    metric_directions = DIRECTIONS
    primary_metric = "attack_accuracy"
    tasks = ("multiclass",)  # loss, confidence and per-class attack models all read one true class per image
    min_pool_sizes = {"attacker": 4, "train": 1, "nonmember": 1}  # shadows train on halves of the attacker pool

    def __init__(
        self,
        shadow_epochs: Optional[int] = None,
        batch_size: Optional[int] = None,
        max_queries: Optional[int] = None,
        query_batch_size: int = 512,
        shadow_recipe: str = "auto",
    ) -> None:
        if (shadow_epochs is not None and shadow_epochs < 1) or (batch_size is not None and batch_size < 1):
            raise BenchError(
                f"{type(self).__name__}: shadow_epochs and batch_size must be positive (or None: the target's)"
            )
        if query_batch_size < 1:
            raise BenchError(f"{type(self).__name__}: query_batch_size must be positive, got {query_batch_size}")
        if max_queries is not None and max_queries < 1:
            raise BenchError(f"{type(self).__name__}: max_queries must be positive or None, got {max_queries}")
        if shadow_recipe not in RECIPES:
            raise BenchError(f"{type(self).__name__}: shadow_recipe must be one of {RECIPES}, got '{shadow_recipe}'")
        self.shadow_epochs = shadow_epochs
        self.batch_size = batch_size
        self.max_queries = max_queries
        self.query_batch_size = query_batch_size
        self.shadow_recipe = shadow_recipe
        self._shadow_details: dict[str, Any] = {}
        #: the last run's per-example columns (pool, index, label, member, score), read by the evaluator
        self.per_example_scores: Optional[dict[str, Any]] = None
        #: the last run's most exposed training images (highest scores among members and included canaries)
        self.most_exposed: Optional[dict[str, Any]] = None
        self._shadow_warnings: list[str] = []

    def shadow_training(self, target: Optional[TargetTraining] = None) -> tuple[int, int]:
        """The shadows' (epochs, batch size): the attack's own, else the target's (``target``, or the evaluation's:
        :func:`~bench.attacks.shadow_pool.training_like`), else the fallback."""
        target = target or current_target_training() or TargetTraining()
        epochs = self.shadow_epochs or target.epochs or FALLBACK_EPOCHS
        return epochs, self.batch_size or target.batch_size or FALLBACK_BATCH_SIZE

    def config(self) -> dict[str, Any]:
        """The init arguments as the attack runs in this evaluation: the shadows' epochs and batch size resolved (the
        target's where the attack states none), so that records of one recipe compare however it was written."""
        settings = super().config()
        if current_target_training() is not None:
            epochs, batch_size = self.shadow_training()
            settings.update({k: v for k, v in (("shadow_epochs", epochs), ("batch_size", batch_size)) if k in settings})
        return settings

    def pool_recipe(self, online: bool = False) -> PoolRecipe:
        """The shadow pool this attack's shadows come from (attacks of the same recipe share one per evaluation)."""
        epochs, batch_size = self.shadow_training()
        return PoolRecipe("online" if online else "offline", epochs, batch_size, self.shadow_recipe)

    def shadow_need(self) -> Optional[tuple[PoolRecipe, int]]:
        """The pool this attack draws from and how many of its models it needs (None: it trains no shadows); the
        harness sizes each evaluation's pools by them."""
        return None

    def shadows(
        self,
        module,
        datamodule,
        generator: torch.Generator,
        count: int,
        queries: Optional[tuple[Tensor, Tensor]] = None,
    ) -> tuple[PooledShadows, Tensor, Tensor, Tensor]:
        """``count`` shadows trained on random halves of the attacker pool, or (online) on paired halves of the
        ``queries`` followed by the attacker pool: (shadows, images, labels, members). They are the first models
        of the evaluation's shared pool (:func:`~bench.attacks.shadow_pool.sharing_shadows`), or of a pool of
        this attack's own, seeded alike, outside one."""
        images, labels = datamodule.pool("attacker").tensors()
        if queries is not None:
            images, labels = torch.cat([queries[0], images]), torch.cat([queries[1], labels])
        if len(images) // 2 < max(2, self.min_shadow_members):
            raise BenchError(
                f"{self.name}: {len(images)} attacker samples are too few for shadow models (each trains on "
                f"half: at least {2 * max(2, self.min_shadow_members)} needed); give the attacker pool "
                "a larger share in --data.fractions or raise --data.pool_limit"
            )
        augmentation = augmentation_of(datamodule)
        pool = current_shadow_pool() or ShadowPool(generator.initial_seed(), shared=False)
        shadows, members = pool.draw(
            module, self.pool_recipe(online=queries is not None), count, images, labels, augmentation
        )
        epochs, batch_size = self.shadow_training()
        target = current_target_training() or TargetTraining()
        self._shadow_details = {
            **shadows.describe(),
            "shadow_epochs": epochs,
            "shadow_batch_size": batch_size,
            # where each came from: the attack's setting, the target's training, or the fallback (target unknown)
            "shadow_training_from": {
                "epochs": _source(self.shadow_epochs, target.epochs),
                "batch_size": _source(self.batch_size, target.batch_size),
            },
        }
        self._shadow_warnings = [
            f"{self.name}: shadows trained {mine} {what}, the target {theirs}; leave {name} unset to train them "
            "like the target"  # a schedule over epochs (ADMM pruning, a noise calibration) plays out differently
            for name, what, mine, theirs in (
                ("shadow_epochs", "epochs", self.shadow_epochs, target.epochs),
                ("batch_size", "samples a batch", self.batch_size, target.batch_size),
            )
            if mine is not None and theirs is not None and mine != theirs
        ]
        return shadows, images, labels, members

    #: the fewest samples a shadow may train on
    min_shadow_members = 2

    def run(self, module, datamodule, generator: torch.Generator) -> AttackResult:
        if current_target_training() is not None:  # inside the harness's evaluation
            return self._run(module, datamodule, generator)
        with training_like(TargetTraining.of(module, datamodule)):  # alone: as its Trainer and DataModule tell it
            return self._run(module, datamodule, generator)

    def _run(self, module, datamodule, generator: torch.Generator) -> AttackResult:
        images, labels, is_member, index = target_queries(datamodule, self.max_queries, generator, with_index=True)
        natural = len(images)
        pool = torch.where(is_member.bool(), POOL_CODES["train"], POOL_CODES["nonmember"])
        canaries = canary_queries(datamodule)
        if canaries is not None:  # candidates are queries like any other: online shadows train on them blind
            images, labels = torch.cat([images, canaries[0]]), torch.cat([labels, canaries[1]])
            # only an attack granted known members (Nasr et al.'s) reads is_member; it may then know canaries too
            is_member = torch.cat([is_member, canaries[2].long()])
            index = torch.cat([index, datamodule.canary_set.indices])
            pool = torch.cat([pool, torch.full((len(canaries[0]),), POOL_CODES["canary"])])
        target = query_logits(module, images, self.query_batch_size, module.device)
        self._shadow_details, self._shadow_warnings = {}, []
        scores, threshold, details = self.score(module, datamodule, generator, images, target, labels, is_member)
        correct = target.argmax(1).cpu() == labels  # the target's own prediction: a slice of the risk
        per_example = {  # the record's per-example risk file (the evaluator writes it; arrays, never in the JSON)
            "pool": pool.numpy().astype(np.int8),
            "index": index.numpy(),
            "label": labels.numpy(),
            "member": is_member.numpy().astype(np.int8),  # canaries: their inclusion
            "correct": correct.numpy(),
            "score": scores.detach().double().cpu().numpy(),
        }
        self.most_exposed = _most_exposed(images, scores, is_member, pool, index, labels)
        delta = float(getattr(module, "hparams", {}).get("delta", AUDIT_DELTA))
        canary_metrics, canary_details, canary_warnings = {}, {}, []
        if canaries is not None:
            canary_scores, inclusion = scores[natural:], is_member[natural:]
            scored = ~torch.isnan(canary_scores)
            canary_metrics, canary_details, canary_warnings = canary_report(
                canary_scores[scored], inclusion[scored], delta
            )
            accountant = getattr(module, "epsilon", None)
            if callable(accountant):  # DP-SGD: the accountant's epsilon beside the audit's lower bound
                canary_details["canary_audit"]["accountant_epsilon"] = float(accountant())
            scores, is_member = scores[:natural], is_member[:natural]
        scored = ~torch.isnan(scores)  # an attack that learns from known members scores only the others
        scores, is_member = scores[scored], is_member[scored]
        metrics, report, warnings = membership_report(scores, is_member, threshold)
        report["slices"] = {
            "class": membership_slices(scores, is_member, labels[:natural][scored]),
            "correct": membership_slices(scores, is_member, correct[:natural][scored]),
        }
        metrics.update(canary_metrics)
        report.update(canary_details)
        warnings += canary_warnings
        audit = epsilon_lower_bound(scores, is_member, delta, generator)
        metrics["empirical_epsilon"] = audit["epsilon"]
        details.update(self._shadow_details)
        details.update(
            report,
            empirical_epsilon=audit,
            members=int(is_member.sum()),
            nonmembers=int((1 - is_member).sum()),
            threshold=threshold,
            roc=roc_curve(scores, is_member),
            warnings=self._shadow_warnings + warnings,
        )
        details["intervals"] = (
            {  # the leaderboard's reading of each metric's interval
                name: report[name]["interval"]
                for name in report
                if isinstance(report[name], dict) and "interval" in report[name]
            }
            | {"auc": report["auc_interval"]}
            | ({"canary_auc": report["canary_auc_interval"]} if canaries is not None else {})
        )
        self.per_example_scores = per_example
        details["most_exposed"] = self.most_exposed["entries"]
        return AttackResult(metrics, details=details)

    def score(
        self, module, datamodule, generator, images: Tensor, target: Tensor, labels: Tensor, is_member: Tensor
    ) -> tuple[Tensor, float, dict[str, Any]]:
        """Membership scores of the queries (``images``, whose logits from the target are ``target``), higher:
        member; NaN for queries the attack does not score (it was told their membership); the decision
        threshold; details. ``is_member`` is the truth: only an attack whose threat model grants known
        members (Nasr et al.'s) may read it, and only for the queries it then leaves unscored."""
        raise TypeError(f"{type(self).__name__} must implement score()")


def _attack_score(logits: Tensor, labels: Tensor, kind: str) -> Tensor:
    if kind == "loss":
        return true_class_log_probability(logits, labels)
    # the top confidence, logit-scaled (log p_max / (1 - p_max)): softmax saturates at 1.0 for confident members
    return logit_confidence(logits, logits.argmax(-1))


class LossThreshold(MembershipInference):
    """Yeom et al.: a member has a low loss (``statistic="loss"``) or a high top confidence (``"confidence"``).

    Both in float64 (the loss as log p_y, the confidence logit-scaled), so confident members do not
    tie. The threshold maximises the attack's balanced accuracy on one shadow model's own members
    and non-members (halves of the attacker pool).
    """

    name = "loss_threshold"

    def __init__(
        self,
        statistic: str = "loss",
        shadow_epochs: Optional[int] = None,
        batch_size: Optional[int] = None,
        max_queries: Optional[int] = None,
        query_batch_size: int = 512,
        shadow_recipe: str = "auto",
    ) -> None:
        if statistic not in ("loss", "confidence"):
            raise BenchError(f"LossThreshold statistic must be 'loss' or 'confidence', got '{statistic}'")
        super().__init__(shadow_epochs, batch_size, max_queries, query_batch_size, shadow_recipe)
        self.statistic = statistic

    def shadow_need(self):
        return self.pool_recipe(), 1

    def score(self, module, datamodule, generator, images, target, labels, is_member):
        shadows, images, shadow_labels, members = self.shadows(module, datamodule, generator, 1)
        calibration = _attack_score(shadows.logits(images)[0], shadow_labels, self.statistic)
        threshold = best_threshold(calibration, members[0])
        return _attack_score(target, labels, self.statistic), threshold, {}


def train_attack_model(
    model: nn.Module,
    inputs: tuple[Tensor, ...],
    targets: Tensor,
    epochs: int,
    batch_size: int,
    lr: float,
    generator: torch.Generator,
    validation_fraction: float = 0.2,
) -> tuple[nn.Module, dict[str, Any]]:
    """Binary cross-entropy training of an attack model ``model(*inputs) -> logit`` (Adam), to convergence on its own
    validation split: ``validation_fraction`` of the samples are held out and the epoch with the lowest validation
    loss is kept (all samples train when there are too few to hold any out)."""
    order = torch.randperm(len(targets), generator=generator)
    held = int(len(targets) * validation_fraction) if len(targets) >= 20 else 0
    valid, train = order[:held], order[held:]
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    best_loss, best_state, best_epoch = float("inf"), None, epochs

    def loss_on(index: Tensor) -> Tensor:
        return F.binary_cross_entropy_with_logits(model(*(t[index] for t in inputs)).float(), targets[index].float())

    for epoch in range(epochs):
        model.train()
        shuffled = train[torch.randperm(len(train), generator=generator)]
        for start in range(0, len(shuffled), batch_size):
            loss = loss_on(shuffled[start : start + batch_size])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        if held:
            model.eval()
            with torch.no_grad():
                validation = float(loss_on(valid))
            if validation < best_loss:
                best_loss, best_state, best_epoch = validation, copy.deepcopy(model.state_dict()), epoch + 1
    if best_state is not None:
        model.load_state_dict(best_state)
    return model.eval(), {
        "attack_model_epochs": best_epoch,
        "attack_model_validation": held,
        "attack_model_validation_loss": None if best_state is None else best_loss,
    }


def _seeded_inference_model(num_classes: int, generator: torch.Generator) -> nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(int(torch.randint(2**31, (1,), generator=generator)))
        return InferenceModel(num_classes)


def _probabilities(logits: Tensor) -> Tensor:
    # h reads the softmax vector (Nasr et al.); the network itself is float32
    return logits.double().softmax(-1).float()


class NasrAttack(MembershipInference):
    """Nasr et al.'s attack as published: h(softmax f(x), y) trained on the target's own outputs.

    The attacker knows ``known_fraction`` of the smaller side of the queries: as many members as non-members (Nasr
    et al.'s adversary holds a subset of the training set D and of reference data D'); h trains
    on the target's outputs for those (with a validation split for its epoch), its decision
    threshold is the best on them, and it is scored on every other query. The record says how many
    were known.

    Args:
        known_fraction: the share of the smaller side of the queries (members or non-members) that the attacker
            knows, as many of each.
        attack_epochs / attack_lr / attack_batch_size: h's training (Adam; lr 0.001 in the paper).
    """

    name = "nasr"

    def __init__(
        self,
        known_fraction: float = 0.5,
        attack_epochs: int = 100,
        attack_lr: float = 1e-3,
        attack_batch_size: int = 64,
        max_queries: Optional[int] = None,
        query_batch_size: int = 512,
    ) -> None:
        super().__init__(max_queries=max_queries, query_batch_size=query_batch_size)
        if not 0 < known_fraction < 1:
            raise BenchError(f"NasrAttack: known_fraction must lie in (0, 1), got {known_fraction}")
        if attack_epochs < 1 or attack_lr <= 0:
            raise BenchError(
                f"NasrAttack: attack_epochs and attack_lr must be positive, got {attack_epochs}, {attack_lr}"
            )
        self.known_fraction = known_fraction
        self.attack_epochs, self.attack_lr, self.attack_batch_size = attack_epochs, attack_lr, attack_batch_size

    def known_count(self, members: int, nonmembers: int) -> int:
        """How many members (and as many non-members) the attacker knows: ``known_fraction`` of the smaller side, so
        that both sides keep unknown queries to score however unbalanced the pools are."""
        return int(round(self.known_fraction * min(members, nonmembers)))

    def known_set_problem(self, members: int, nonmembers: int) -> Optional[str]:
        """Why ``members`` and ``nonmembers`` queries are too few to know some and score the others (None: enough)."""
        count = self.known_count(members, nonmembers)
        if count < 2 or count >= min(members, nonmembers):
            return (
                f"knowing {self.known_fraction:.0%} of min(members {members}, non-members {nonmembers}) queries "
                f"is {count} of each (needs at least 2 to train h and 1 unknown of each to score)"
            )
        return None

    def pool_problem(self, sizes: dict[str, int]) -> Optional[str]:
        queried = [min(sizes.get(pool, 0), self.max_queries or sizes.get(pool, 0)) for pool in ("train", "nonmember")]
        return self.known_set_problem(*queried) or super().pool_problem(sizes)

    def score(self, module, datamodule, generator, images, target, labels, is_member):
        members, nonmembers = is_member.nonzero().squeeze(1), (1 - is_member).nonzero().squeeze(1)
        problem = self.known_set_problem(len(members), len(nonmembers))
        if problem is not None:
            raise BenchError(f"NasrAttack: {problem}")
        count = self.known_count(len(members), len(nonmembers))
        known = torch.cat(
            [
                members[torch.randperm(len(members), generator=generator)[:count]],
                nonmembers[torch.randperm(len(nonmembers), generator=generator)[:count]],
            ]
        )
        h = _seeded_inference_model(module.spec.num_classes, generator)
        probabilities = _probabilities(target)
        _, training = train_attack_model(
            h,
            (probabilities[known], labels[known]),
            is_member[known],
            self.attack_epochs,
            self.attack_batch_size,
            self.attack_lr,
            generator,
        )
        with torch.no_grad():  # h's logit, not its sigmoid: float32 sigmoids of confident members tie at 1.0
            scores = h(probabilities, labels).double()
        # the decision threshold: the best on the queries the attacker knows (h at its validation epoch need not be
        # calibrated at logit 0)
        threshold = best_threshold(scores[known], is_member[known])
        scores[known] = float("nan")  # the known queries are the attacker's training data, not its test
        return (
            scores,
            threshold,
            {"known_fraction": self.known_fraction, "known_members": count, "known_nonmembers": count, **training},
        )


class NasrShadow(MembershipInference):
    """Nasr et al.'s inference model h(softmax f(x), y) trained black-box on a shadow model's members and non-members.

    Args:
        attack_epochs: epochs of h (Adam, lr ``attack_lr``, the paper's 0.001), kept at its best validation epoch.
        attack_batch_size: h's mini-batch size.
    """

    name = "nasr_shadow"

    def __init__(
        self,
        attack_epochs: int = 100,
        attack_lr: float = 1e-3,
        attack_batch_size: int = 64,
        shadow_epochs: Optional[int] = None,
        batch_size: Optional[int] = None,
        max_queries: Optional[int] = None,
        query_batch_size: int = 512,
        shadow_recipe: str = "auto",
    ) -> None:
        super().__init__(shadow_epochs, batch_size, max_queries, query_batch_size, shadow_recipe)
        if attack_epochs < 1 or attack_lr <= 0:
            raise BenchError(
                f"NasrShadow: attack_epochs and attack_lr must be positive, got {attack_epochs}, {attack_lr}"
            )
        self.attack_epochs, self.attack_lr, self.attack_batch_size = attack_epochs, attack_lr, attack_batch_size

    def shadow_need(self):
        return self.pool_recipe(), 1

    def score(self, module, datamodule, generator, images, target, labels, is_member):
        shadows, images, shadow_labels, members = self.shadows(module, datamodule, generator, 1)
        h = _seeded_inference_model(module.spec.num_classes, generator)
        _, training = train_attack_model(
            h,
            (_probabilities(shadows.logits(images)[0]), shadow_labels),
            members[0],
            self.attack_epochs,
            self.attack_batch_size,
            self.attack_lr,
            generator,
        )
        with torch.no_grad():
            scores = h(_probabilities(target), labels).double()
        return scores, 0.0, training


class _PerClassMLP(nn.Module):
    """One small MLP per class (Shokri et al.'s per-class attack models), trained together as one batched model."""

    def __init__(self, num_classes: int, groups: int, hidden: int = 64) -> None:
        super().__init__()
        self.w1 = nn.Parameter(torch.randn(groups, num_classes, hidden) * num_classes**-0.5)
        self.b1 = nn.Parameter(torch.zeros(groups, hidden))
        self.w2 = nn.Parameter(torch.randn(groups, hidden) * hidden**-0.5)
        self.b2 = nn.Parameter(torch.zeros(groups))
        self.per_class = groups > 1

    def forward(self, features: Tensor, labels: Tensor) -> Tensor:
        group = labels if self.per_class else torch.zeros_like(labels)
        hidden = torch.relu(torch.einsum("nc,nch->nh", features, self.w1[group]) + self.b1[group])
        return (hidden * self.w2[group]).sum(1) + self.b2[group]


def _sorted_probabilities(logits: Tensor) -> Tensor:
    # one attack model for every class sees the sorted vector (class-agnostic); per class, the vector as it is
    return _probabilities(logits).sort(-1, descending=True).values


class ShokriShadow(MembershipInference):
    """Shokri et al.: ``shadow_models`` shadows on random halves of the attacker pool, then attack models
    on their prediction vectors labelled in/out: one per class (``per_class``) or one global.

    Args:
        shadow_models: how many shadow models.
        per_class: one attack model per class (Shokri's) or one for all classes.
        attack_epochs / attack_lr: the attack models' training (Adam), kept at the best validation epoch.
    """

    name = "shokri"

    def __init__(
        self,
        shadow_models: int = 4,
        per_class: bool = True,
        attack_epochs: int = 100,
        attack_lr: float = 1e-3,
        shadow_epochs: Optional[int] = None,
        batch_size: Optional[int] = None,
        max_queries: Optional[int] = None,
        query_batch_size: int = 512,
        shadow_recipe: str = "auto",
    ) -> None:
        super().__init__(shadow_epochs, batch_size, max_queries, query_batch_size, shadow_recipe)
        if shadow_models < 1 or attack_epochs < 1 or attack_lr <= 0:
            raise BenchError("ShokriShadow: shadow_models, attack_epochs and attack_lr must be positive")
        self.shadow_models, self.per_class = shadow_models, per_class
        self.attack_epochs, self.attack_lr = attack_epochs, attack_lr

    def _features(self, logits: Tensor) -> Tensor:
        # Shokri et al.'s prediction vectors (log-probabilities, whose wrong-class entries reach -30, swamp the MLP)
        return _probabilities(logits) if self.per_class else _sorted_probabilities(logits)

    def shadow_need(self):
        return self.pool_recipe(), self.shadow_models

    def score(self, module, datamodule, generator, images, target, labels, is_member):
        shadows, images, shadow_labels, members = self.shadows(module, datamodule, generator, self.shadow_models)
        logits = shadows.logits(images)  # (shadows, N, classes)
        features = self._features(logits.flatten(0, 1))
        with torch.random.fork_rng():
            torch.manual_seed(int(torch.randint(2**31, (1,), generator=generator)))
            attack = _PerClassMLP(module.spec.num_classes, module.spec.num_classes if self.per_class else 1)
        _, training = train_attack_model(
            attack,
            (features, shadow_labels.repeat(self.shadow_models)),
            members.flatten(),
            self.attack_epochs,
            64,
            self.attack_lr,
            generator,
        )
        with torch.no_grad():
            scores = attack(self._features(target), labels).double()  # the logit: P(member) >= 0.5 where it is >= 0
        return scores, 0.0, training
