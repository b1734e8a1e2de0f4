"""ATS's two policy scores (Gao et al., CVPR 2021, sections 4.2 and 4.3), vectorized and as plain loops.

Privacy score (Eq. 5-7): how much the gradient distance guides an attacker from a random start x0
towards the transformed image T(x). With x'(i) = (1 - i) x0 + i T(x),

    S_pri(T) = 1/(|D| K) sum_x sum_{j<K} GradSim(x'(j/K), T(x)),    GradSim = cosine of the two gradients

on a semi-trained model in eval mode (lower: the attacker gets less guidance, more privacy).

Accuracy score (Eq. 8-10, after Mellor et al.'s training-free NAS score): J holds, per sample of a
transformed mini-batch, the gradient of the randomly initialised model's summed outputs with respect
to the input; Sigma_J is the correlation matrix of J's rows and sigma its eigenvalues (of a symmetric
matrix: ``eigvalsh``). S_acc = -(1/N) sum_i [log(sigma_i + eps) + 1/(sigma_i + eps)], eps = 1e-5, averaged
over rounds (mini-batches). The sign: Eq. 10 as printed lacks it, but every threshold T_acc of appendix A
is negative and Algorithm 1 keeps the policies with S_acc >= T_acc, as Mellor et al.'s score does.

The vectorized versions compute every per-sample gradient with ``torch.func`` (``vmap`` over images and
interpolation points, one backward for a whole Jacobian); the loops compute them one by one with
``torch.autograd`` and exist to check the vectorized versions and to measure the speed-up.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from bench.transforms.policy import Policy

EPSILON = 1e-5


def _transform(policy: Optional[Policy], images: Tensor, generator: Optional[torch.Generator]) -> Tensor:
    return images if policy is None else policy(images, generator)


def interpolation_points(starts: Tensor, targets: Tensor, points: int) -> Tensor:
    """x'(j/K) = (1 - j/K) x0 + (j/K) T(x) for j < K (Eq. 7): (D, K, C, H, W)."""
    steps = torch.arange(points, dtype=targets.dtype, device=targets.device).div(points).view(1, -1, 1, 1, 1)
    return (1 - steps) * starts.unsqueeze(1) + steps * targets.unsqueeze(1)


def privacy_score(model: nn.Module, policy: Optional[Policy], images: Tensor, labels: Tensor, points: int = 10,
                  starts: Optional[Tensor] = None, generator: Optional[torch.Generator] = None,
                  chunk: int = 256) -> Tensor:
    """S_pri of Eq. 7 on ``model`` (put in eval mode) for ``images`` (D, C, H, W) with ``labels`` (D,).

    ``starts`` are the attacker's random starts x0 (default: uniform noise from ``generator``, drawn after
    the policy's own draws); ``chunk`` bounds how many per-sample gradients are held at once.
    """
    model.eval()
    targets = _transform(policy, images, generator)
    if starts is None:
        starts = torch.rand(images.shape, generator=generator, dtype=images.dtype).to(images.device)
    params = {name: p.detach() for name, p in model.named_parameters()}
    buffers = dict(model.named_buffers())

    def loss(params: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        return F.cross_entropy(functional_call(model, (params, buffers), (x.unsqueeze(0),)), y.unsqueeze(0))

    per_sample = vmap(grad(loss), in_dims=(None, 0, 0))  # per-sample gradients with respect to the parameters
    images_per_chunk = max(1, chunk // (points + 1))
    total = torch.zeros((), dtype=torch.float64, device=images.device)
    for start in range(0, len(images), images_per_chunk):
        target, label = targets[start : start + images_per_chunk], labels[start : start + images_per_chunk]
        count = target.shape[0]
        path = interpolation_points(starts[start : start + count], target, points)
        # the K interpolation points of every image and the image itself, in one vmap
        inputs = torch.cat([path.flatten(0, 1), target])
        gradients = per_sample(params, inputs, torch.cat([label.repeat_interleave(points), label]))
        flat = torch.cat([g.flatten(1) for g in gradients.values()], dim=1)
        along, reference = flat[: count * points].view(count, points, -1), flat[count * points :].unsqueeze(1)
        total += F.cosine_similarity(along, reference, dim=-1, eps=1e-12).sum().double()  # Eq. 5
    return total / (len(images) * points)


def privacy_score_loop(model: nn.Module, policy: Optional[Policy], images: Tensor, labels: Tensor, points: int = 10,
                       starts: Optional[Tensor] = None, generator: Optional[torch.Generator] = None) -> Tensor:
    """:func:`privacy_score`, one image and one interpolation point at a time."""
    model.eval()
    targets = _transform(policy, images, generator)
    if starts is None:
        starts = torch.rand(images.shape, generator=generator, dtype=images.dtype).to(images.device)
    parameters = [p for p in model.parameters()]

    def gradient(x: Tensor, y: Tensor) -> Tensor:
        loss = F.cross_entropy(model(x.unsqueeze(0)), y.unsqueeze(0))
        return torch.cat([g.flatten() for g in torch.autograd.grad(loss, parameters)])

    total = 0.0
    for x0, target, label in zip(starts, targets, labels):
        reference = gradient(target, label)
        for j in range(points):
            point = (1 - j / points) * x0 + (j / points) * target  # Eq. 6, x'(j/K)
            along = gradient(point, label)
            total += (along @ reference / (along.norm() * reference.norm()).clamp_min(1e-12)).double()
    return total / (len(images) * points)


def _score_from_jacobians(jacobians: Tensor) -> Tensor:
    """Eq. 9-10 for (R, N, D) Jacobians: the mean over rounds of each round's S_acc."""
    jacobians = jacobians.double()
    centred = jacobians - jacobians.mean(dim=2, keepdim=True)  # Eq. 9, J - M_J (each row about its mean)
    covariance = centred @ centred.transpose(1, 2)
    scale = covariance.diagonal(dim1=1, dim2=2).sqrt().clamp_min(1e-30)
    correlation = covariance / (scale.unsqueeze(2) * scale.unsqueeze(1))
    eigenvalues = torch.linalg.eigvalsh(correlation)  # symmetric: real eigenvalues
    shifted = eigenvalues + EPSILON
    return -(shifted.log() + shifted.reciprocal()).mean(dim=1).mean()  # Eq. 10 (sign: see the module docstring)


def input_jacobians(model: nn.Module, images: Tensor) -> Tensor:
    """Eq. 8: each sample's gradient of the model's summed outputs with respect to itself, (N, C*H*W).

    In eval mode samples do not interact, so one backward of the batch's total gives every row."""
    model.eval()
    inputs = images.detach().clone().requires_grad_(True)
    (gradient,) = torch.autograd.grad(model(inputs).sum(), inputs)
    return gradient.flatten(1)


def accuracy_score(model: nn.Module, policy: Optional[Policy], batches: Tensor,
                   generator: Optional[torch.Generator] = None) -> Tensor:
    """S_acc of Eq. 10 on the randomly initialised ``model``, averaged over the rounds of ``batches`` (R, N, C, H, W)."""
    rounds, size = batches.shape[:2]
    transformed = _transform(policy, batches.flatten(0, 1), generator)
    return _score_from_jacobians(input_jacobians(model, transformed).view(rounds, size, -1))


def accuracy_score_loop(model: nn.Module, policy: Optional[Policy], batches: Tensor,
                        generator: Optional[torch.Generator] = None) -> Tensor:
    """:func:`accuracy_score`, one sample's Jacobian row and one round at a time."""
    model.eval()
    rounds, size = batches.shape[:2]
    transformed = _transform(policy, batches.flatten(0, 1), generator).view_as(batches)
    scores = []
    for batch in transformed:
        rows = []
        for image in batch:
            x = image.unsqueeze(0).detach().clone().requires_grad_(True)
            (row,) = torch.autograd.grad(model(x).sum(), x)
            rows.append(row.flatten())
        scores.append(_score_from_jacobians(torch.stack(rows).unsqueeze(0)))
    return torch.stack(scores).mean()
