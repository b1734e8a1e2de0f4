"""RMIA (Zarifzadeh, Liu, Bui, Shokri, ICML 2024: "Low-cost high-power membership inference attacks").

For a candidate x and population samples z (the attacker pool), with Pr(x | theta) the target's
probability of x's label and Pr(x) its average over reference models,

    LR_theta(x, z) = (Pr(x | theta) / Pr(x)) / (Pr(z | theta) / Pr(z))          (Eq. 3)
    Score_MIA(x)   = Pr_z( LR_theta(x, z) >= gamma )                             (Eq. 4)

* :class:`RMIA` (offline): the reference models train on random halves of the attacker pool, never
  on the candidates, so Pr(x) comes from OUT models only, linearly corrected for the missing IN
  models: Pr(x) = ((1 + a) Pr_OUT(x) + (1 - a)) / 2 (Appendix B.2.2). ``a`` is chosen as the paper
  does, by letting one reference model play the target against the others and keeping the ``a``
  with the largest AUC on its own (known) members of the attacker pool.
* :class:`RMIAOnline`: the reference models also train on the candidates (paired halves: every
  sample is IN half of them), Pr(x) is the mean over all of them.

The score is a fraction over the population, a monotone function of Pr(x | theta) / Pr(x); its
ties (e.g. many candidates above every z) are broken by that ratio itself, which changes no
decision and no ROC point of the fraction. The decision threshold is calibrated on the attacker
pool with a reference model as the target.

Queries mirror the target's training augmentation as LiRA's do (:func:`query_augmentations`: shifts, flips only
where the data's augmentation flips). Every augmented version v of x and of each z gets its own probabilities from
the target and the reference models, hence its own pairwise ratio LR_theta(v(x), v(z)); the score is Eq. 4 averaged
over the augmented queries, i.e. the share of (v, z) pairs with LR >= gamma, an x seen through v compared only with
z seen through v. The combination is LiRA's (Carlini et al.'s code: a statistic per augmented query, the mean of the
per-query scores); the RMIA reference code read for this (ml_privacy_meter, modules/mia/attacks/rmia.py) queries
without augmentation, so it does not fix one. The offline ``a`` and the threshold are calibrated on
the same augmented queries, so that they are on the score's scale. ``details["augmented_queries"]`` says how many;
without augmentation there is one query and the score is the single-query one, bit for bit.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from bench.attacks.membership_inference import (
    MembershipInference,
    augmentation_of,
    best_threshold,
    query_augmentations,
    query_logits,
)
from bench.errors import BenchError
from bench.metrics.membership import delong_interval

#: offline a grid searched by the calibration (the paper's values lie in [0.2, 1])
A_GRID = tuple(round(0.1 * i, 1) for i in range(11))


def true_class_probability(logits: Tensor, labels: Tensor) -> Tensor:
    """Pr(x | theta): the softmax probability of x's label, float64; logits (..., N, C), labels (N,)."""
    logits = logits.double()
    return logits.log_softmax(-1).gather(-1, labels.expand(*logits.shape[:-1]).unsqueeze(-1)).squeeze(-1).exp()


def population_probability(reference: Tensor, inside: Tensor, offline_a: Optional[float]) -> Tensor:
    """Pr(x) from reference probabilities (..., S, N) (a leading dimension: one per augmented query) and their
    membership (S, N): the mean over all models (online, ``offline_a`` None), or over the OUT ones with the
    offline correction ((1 + a) Pr_OUT + (1 - a)) / 2."""
    if offline_a is None:
        return reference.mean(-2)
    out = ~inside
    p_out = (reference * out).sum(-2) / out.sum(-2).clamp_min(1)
    return ((1 + offline_a) * p_out + (1 - offline_a)) / 2


def rmia_score(p_x_target: Tensor, p_x: Tensor, p_z_target: Tensor, p_z: Tensor, gamma: float) -> Tensor:
    """Eq. 4 with ties broken by the ratio: the share of z with LR(x, z) >= gamma, plus a tie-break below 1/|Z|.

    Inputs (N,) and (P,), or (A, N) and (A, P) for A augmented queries, each x compared with the z of its own row;
    returns one score per row and x (the caller averages the rows)."""
    tiny = torch.finfo(torch.float64).tiny
    log_ratio_x = p_x_target.clamp_min(tiny).log() - p_x.clamp_min(tiny).log()
    log_ratio_z = (p_z_target.clamp_min(tiny).log() - p_z.clamp_min(tiny).log()).sort().values
    # LR(x, z) >= gamma  <=>  log ratio_z <= log ratio_x - log gamma
    dominated = torch.searchsorted(log_ratio_z, log_ratio_x - math.log(gamma), right=True).double()
    tie_break = 0.5 + 0.999 * torch.atan(log_ratio_x) / math.pi  # in (0, 1), increasing in the ratio
    return (dominated + tie_break) / log_ratio_z.shape[-1]


class RMIA(MembershipInference):
    """RMIA offline: reference models that never saw the candidates, the ``a`` correction.

    Args:
        reference_models: how many reference models (on random halves of the attacker pool; >= 2 to calibrate a).
        gamma: the pairwise likelihood-ratio threshold of Eq. 4 (the paper's default 1).
        offline_a: the offline correction; None: calibrated (see the module docstring).
        population: at most this many attacker-pool samples z.
    """

    name = "rmia"
    online = False

    def __init__(
        self,
        reference_models: int = 4,
        gamma: float = 1.0,
        offline_a: Optional[float] = None,
        population: int = 2000,
        shadow_epochs: Optional[int] = None,
        batch_size: Optional[int] = None,
        max_queries: Optional[int] = None,
        query_batch_size: int = 512,
        shadow_recipe: str = "auto",
    ) -> None:
        super().__init__(shadow_epochs, batch_size, max_queries, query_batch_size, shadow_recipe)
        if reference_models < 2 or (self.online and reference_models % 2):
            raise BenchError(
                f"{type(self).__name__} needs {'an even number of ' if self.online else ''}reference models "
                f">= 2 (one plays the target to calibrate), got {reference_models}"
            )
        if gamma <= 0 or population < 2:
            raise BenchError(
                f"{type(self).__name__}: gamma must be positive and population >= 2, got {gamma}, {population}"
            )
        if offline_a is not None and not 0 <= offline_a <= 1:
            raise BenchError(f"RMIA: offline_a must lie in [0, 1], got {offline_a}")
        self.reference_models, self.gamma, self.population = reference_models, gamma, population
        self.offline_a = offline_a

    def _simulate(self, probabilities: Tensor, members: Tensor, z: Tensor, a: Optional[float]) -> tuple[Tensor, Tensor]:
        """Reference model 0 plays the target on the attacker pool; ``probabilities`` (A, S, P) per augmented query.

        Returns (scores averaged over the augmented queries, its membership) where some other model is OUT.
        """
        target, others, inside = probabilities[:, 0], probabilities[:, 1:], members[1:]
        usable = (~inside).sum(0) >= 1
        p = population_probability(others, inside, a)
        scores = rmia_score(target, p, target[:, z], p[:, z], self.gamma).mean(0)
        return scores[usable], members[0][usable]

    def shadow_need(self):
        return self.pool_recipe(online=self.online), self.reference_models

    def score(self, module, datamodule, generator, images, target, labels, is_member):
        queries = len(images)
        if self.online:
            references, data, data_labels, members = self.shadows(
                module, datamodule, generator, self.reference_models, queries=(images, labels)
            )
        else:
            references, data, data_labels, members = self.shadows(module, datamodule, generator, self.reference_models)
            data, data_labels = torch.cat([images, data]), torch.cat([labels, data_labels])
            members = torch.cat([torch.zeros(self.reference_models, queries, dtype=torch.bool), members], 1)
        # every sample through every augmented query (the identity first): (A, S, Q + P)
        augmentations = query_augmentations(augmentation_of(datamodule))
        probabilities = torch.stack(
            [
                true_class_probability(references.logits(augment(data), self.query_batch_size), data_labels)
                for _, augment in augmentations
            ]
        )
        pool = torch.arange(queries, len(data))
        z = pool[torch.randperm(len(pool), generator=generator)[: self.population]]
        # the offline a: one reference model as the target, the others as its references, on the attacker pool
        rotated = [torch.roll(torch.arange(self.reference_models), -m) for m in range(self.reference_models)]
        a = None
        details = {
            "reference_models": self.reference_models,
            "gamma": self.gamma,
            "population": len(z),
            "mode": "online" if self.online else "offline",
            "augmented_queries": len(augmentations),
        }
        if not self.online:
            a = self.offline_a
            if a is None:

                def simulated_auc(candidate: float) -> float:
                    aucs = []
                    for order in rotated[: min(2, self.reference_models)]:
                        scores, truth = self._simulate(
                            probabilities[:, order][..., pool], members[order][:, pool], z - queries, candidate
                        )
                        aucs.append(delong_interval(scores, truth)[0] if 0 < truth.sum() < len(truth) else 0.5)
                    return sum(aucs) / len(aucs)

                a = max(A_GRID, key=simulated_auc)
                details["offline_a_calibrated"] = True
            details["offline_a"] = a
        calibration, truth = [], []
        for order in rotated:
            scores, known = self._simulate(probabilities[:, order][..., pool], members[order][:, pool], z - queries, a)
            calibration.append(scores)
            truth.append(known)
        threshold = best_threshold(torch.cat(calibration), torch.cat(truth))
        p_x = population_probability(probabilities[..., :queries], members[:, :queries], a)
        p_z = population_probability(probabilities[..., z], members[:, z], a)
        # the target on the same augmented queries (its logits on the plain queries are already known)
        p_target = torch.stack(
            [
                true_class_probability(
                    target
                    if index == 0
                    else query_logits(module, augment(images), self.query_batch_size, module.device),
                    labels,
                )
                for index, (_, augment) in enumerate(augmentations)
            ]
        )
        p_z_target = torch.stack(
            [
                true_class_probability(
                    query_logits(module, augment(data[z]), self.query_batch_size, module.device), data_labels[z]
                )
                for _, augment in augmentations
            ]
        )
        scores = rmia_score(p_target, p_x, p_z_target, p_z, self.gamma).mean(0)
        return scores, threshold, details


class RMIAOnline(RMIA):
    """RMIA online: the reference models also train on the candidates (every sample IN half of them), no ``a``."""

    name = "rmia_online"
    online = True

    def __init__(
        self,
        reference_models: int = 8,
        gamma: float = 1.0,
        population: int = 2000,
        shadow_epochs: Optional[int] = None,
        batch_size: Optional[int] = None,
        max_queries: Optional[int] = None,
        query_batch_size: int = 512,
        shadow_recipe: str = "auto",
    ) -> None:
        super().__init__(
            reference_models,
            gamma,
            None,
            population,
            shadow_epochs,
            batch_size,
            max_queries,
            query_batch_size,
            shadow_recipe,
        )
