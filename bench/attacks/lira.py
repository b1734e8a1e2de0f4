"""LiRA (Carlini et al., S&P 2022), offline and online.

Offline (``lira``): every shadow trains without the queries; the score is the one-sided z of the target's
logit-scaled confidence against the shadows' OUT Gaussian. Online (``lira_online``): IN and OUT shadow models
for every queried example.

The attacker holds the candidates it queries (not their membership): its shadows train on random
halves of the attacker pool together with the candidates, paired so that every sample is in
exactly half of the shadows (:meth:`~bench.attacks.shadow_pool.ShadowPool.membership`). For each
candidate, the shadows that trained on it give phi_in, the others phi_out (phi: the logit-scaled
confidence); the score is the log-likelihood ratio of the target's phi under the two Gaussians,

    Lambda(x) = log N(phi_target; mu_in, sigma_in^2) - log N(phi_target; mu_out, sigma_out^2)

(Carlini et al., Algorithm 1), a member above 0 (equal priors). With few shadows the variances are
one per population (``fixed_variance``: Carlini et al.'s choice below 64 shadows).

Queries mirror the target's training augmentation (:func:`query_augmentations`: shifts, and flips only where the
data's augmentation flips), as in Carlini et al.'s code: each augmented query gets its own Gaussians and the
score is the mean over them; ``details["augmented_queries"]`` says how many.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor
from torch.distributions import Normal

from bench.attacks.membership_inference import (
    MembershipInference,
    augmentation_of,
    best_threshold,
    logit_confidence,
    query_augmentations,
    query_logits,
)
from bench.errors import BenchError


def augmented_phi(module, shadows, images: Tensor, target: Tensor, labels: Tensor, augmentations, batch_size: int):
    """phi of the target (A, N) and of the shadows (A, S, N) on every augmented query; the identity reuses the
    target's logits already queried."""
    target_phi, shadow_phi = [], []
    count = shadows.logits(images[:1], batch_size).shape[0]
    for index, (_, augment) in enumerate(augmentations):
        queried = images if index == 0 else augment(images)
        logits = target if index == 0 else query_logits(module, queried, batch_size, module.device)
        target_phi.append(logit_confidence(logits, labels))
        shadow_phi.append(logit_confidence(shadows.logits(queried, batch_size), labels.expand(count, -1)))
    return torch.stack(target_phi), torch.stack(shadow_phi)


def gaussian_statistics(phi: Tensor, inside: Tensor, fixed_variance: bool) -> tuple[Tensor, Tensor]:
    """Per-example mean and std of ``phi`` (S, N) over the shadows where ``inside`` (S, N) is True."""
    count = inside.sum(0)
    mean = (phi * inside).sum(0) / count.clamp_min(1)
    variance = ((phi - mean).square() * inside).sum(0) / (count - 1).clamp_min(1)
    if fixed_variance:
        usable = count >= 2
        variance = variance[usable].mean().expand_as(mean) if usable.any() else torch.ones_like(mean)
    return mean, variance.sqrt().clamp_min(1e-6)


class LiRAOnline(MembershipInference):
    """Carlini et al.'s likelihood-ratio attack, online: per-example IN and OUT Gaussians.

    Args:
        shadow_models: how many shadows (even: half IN, half OUT for every candidate).
        fixed_variance: one sigma_in and one sigma_out for all candidates.
    """

    name = "lira_online"

    def __init__(
        self,
        shadow_models: int = 8,
        fixed_variance: bool = True,
        shadow_epochs: Optional[int] = None,
        batch_size: Optional[int] = None,
        max_queries: Optional[int] = None,
        query_batch_size: int = 512,
        shadow_recipe: str = "auto",
    ) -> None:
        super().__init__(shadow_epochs, batch_size, max_queries, query_batch_size, shadow_recipe)
        if shadow_models < 2 or shadow_models % 2:
            raise BenchError(
                f"LiRAOnline needs an even number (>= 2) of shadow models, half IN and half OUT, got {shadow_models}"
            )
        self.shadow_models, self.fixed_variance = shadow_models, fixed_variance

    def shadow_need(self):
        return self.pool_recipe(online=True), self.shadow_models

    def score(self, module, datamodule, generator, images, target, labels, is_member):
        shadows, _, _, members = self.shadows(
            module, datamodule, generator, self.shadow_models, queries=(images, labels)
        )
        queries = len(images)
        augmentations = query_augmentations(augmentation_of(datamodule))
        observed, phis = augmented_phi(module, shadows, images, target, labels, augmentations, self.query_batch_size)
        inside = members[:, :queries]
        ratios = []
        for observed_phi, phi in zip(observed, phis):  # one pair of Gaussians per augmented query
            mu_in, sigma_in = gaussian_statistics(phi, inside, self.fixed_variance)
            mu_out, sigma_out = gaussian_statistics(phi, ~inside, self.fixed_variance)
            ratios.append(
                Normal(mu_in, sigma_in).log_prob(observed_phi) - Normal(mu_out, sigma_out).log_prob(observed_phi)
            )
        return (
            torch.stack(ratios).mean(0),
            0.0,
            {
                "shadow_models": self.shadow_models,
                "in_per_query": [int(inside.sum(0).min()), int(inside.sum(0).max())],
                "augmented_queries": len(augmentations),
            },
        )


class LiRA(MembershipInference):
    """Carlini et al.'s likelihood-ratio attack, offline: every shadow is trained without the queries.

    For each query, phi = log(p_y / (1 - p_y)) of each shadow gives a Gaussian N(mu_out, sigma_out^2);
    the score is the one-sided z = (phi_target - mu_out) / sigma_out (a member's phi lies high).
    The decision threshold is calibrated leave-one-shadow-out on the attacker pool.

    Args:
        shadow_models: how many shadow models.
        fixed_variance: one sigma_out for all queries (Carlini et al.'s choice with few shadows).
    """

    name = "lira"

    def __init__(
        self,
        shadow_models: int = 8,
        fixed_variance: bool = True,
        shadow_epochs: Optional[int] = None,
        batch_size: Optional[int] = None,
        max_queries: Optional[int] = None,
        query_batch_size: int = 512,
        shadow_recipe: str = "auto",
    ) -> None:
        super().__init__(shadow_epochs, batch_size, max_queries, query_batch_size, shadow_recipe)
        if shadow_models < 2:
            raise BenchError(f"LiRA fits a Gaussian to shadow models: it needs at least 2, got {shadow_models}")
        self.shadow_models, self.fixed_variance = shadow_models, fixed_variance

    def _z(self, phi: Tensor, phi_out: Tensor, out: Tensor) -> Tensor:
        """z-scores of ``phi`` (N,) against the shadow confidences ``phi_out`` (S, N) where ``out`` (S, N) is True."""
        mean, std = gaussian_statistics(phi_out, out, self.fixed_variance)
        return (phi - mean) / std

    def shadow_need(self):
        return self.pool_recipe(), self.shadow_models

    def score(self, module, datamodule, generator, images, target, labels, is_member):
        shadows, pool_images, pool_labels, members = self.shadows(module, datamodule, generator, self.shadow_models)
        count = self.shadow_models
        # the queries are in no shadow's training half: all shadows are "out" for them (offline LiRA); one
        # Gaussian per augmented query, the mean of their z-scores
        augmentations = query_augmentations(augmentation_of(datamodule))
        observed, phis = augmented_phi(module, shadows, images, target, labels, augmentations, self.query_batch_size)
        scores = torch.stack(
            [
                self._z(phi_target, phi, torch.ones_like(phi, dtype=torch.bool))
                for phi_target, phi in zip(observed, phis)
            ]
        ).mean(0)
        # the threshold: each shadow in turn plays the target, scored against the others that left the sample out
        # (on the same augmented queries, so that the threshold is on the scores' scale)
        phi_pool = [
            logit_confidence(shadows.logits(augment(pool_images), self.query_batch_size), pool_labels.expand(count, -1))
            for _, augment in augmentations
        ]
        calibration, truth = [], []
        for m in range(count):
            others = torch.arange(count) != m
            out = ~members[others]
            known = out.sum(0) >= 1
            z = torch.stack([self._z(phi[m], phi[others], out) for phi in phi_pool]).mean(0)
            calibration.append(z[known])
            truth.append(members[m][known])
        threshold = best_threshold(torch.cat(calibration), torch.cat(truth))
        return scores, threshold, {"shadow_models": count, "augmented_queries": len(augmentations)}
