"""ATS's two policy scores (Gao et al., CVPR 2021, sections 4.2 and 4.3), vectorized and as plain loops.

Privacy score (Eq. 5-7): how much the gradient distance guides an attacker from a random start x0
towards the transformed image T(x), along x'(i) = (1 - i) x0 + i T(x), on a semi-trained model in eval
mode (lower: the attacker gets less guidance, more privacy). Two readings, both here:

* ``reference`` (the default): what the authors' code computes (``benchmark/search_transform_attack.py:
  reconstruct``): GradSim is the mean over the model's parameter tensors of each tensor's cosine, taken at
  K + 1 = 21 points i = j / K, j = 0..K (the last is T(x) itself), and integrated with the trapezoid rule;
* ``paper``: Eq. 7 as printed, one cosine over all parameters together, a left Riemann sum over j < K.

Accuracy score (Eq. 8-10, after Mellor et al.'s training-free NAS score): J holds, per sample of a
transformed mini-batch, the gradient of the randomly initialised model's summed outputs with respect to
the input; Sigma_J is the correlation matrix of J's rows and sigma its eigenvalues (of a symmetric matrix:
``eigvalsh``). Per round, S_acc = -sum_i [log(sigma_i + eps) + 1/(sigma_i + eps)], eps = 1e-5, averaged over
rounds. Two scales:

* ``reduction="sum"`` (the default): the reference's (``eval_score``: ``-np.sum(...)``), on N = one image
  per class (``accuracy_metric`` keeps the first image of each label in a window of 100 validation images:
  :func:`class_representatives`); the paper's thresholds T_acc (-10, -12 on F-MNIST, -80, -85 on CIFAR-100,
  appendix A) are on this scale. Since the eigenvalues of an N x N correlation matrix are non-negative and
  sum to N and log(v) + 1/v >= 1 (equality at v = 1), S_acc <= -N (up to eps): -N exactly when the rows are
  uncorrelated, far below when two rows nearly coincide. With N = 10 classes, T_acc = -10 therefore rejects
  every policy; -12 does not (see ``docs/ats_transformations.md``).
* ``reduction="mean"``: Eq. 10 as printed, 1/N times the sum (bench's earlier default, N = any batch size);
  its values sit near -1 and the paper's thresholds do not apply to it.

The sign: Eq. 10 as printed lacks it; the reference's ``eval_score`` has it, every T_acc is negative and
Algorithm 1 keeps the policies with S_acc >= T_acc.

The vectorized S_pri needs only cosines, so by default it never holds the per-sample gradients: one batched
forward and backward over every interpolation point and target, each layer's per-sample gradients reduced to
their dot products with the target's and their squared norms as the backward reaches the layer
(:func:`bench.batching.per_sample.gradient_statistics`; ``torch.func.vmap`` and unfold + batched matmul are kept
as options). The vectorized S_acc takes one backward for a whole Jacobian. The loops compute every gradient
one by one with ``torch.autograd``, as the authors' code does, and exist to check the vectorized versions and
to measure the speed-up.
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from bench.batching.per_sample import Unsupported, gradient_statistics, per_sample_gradients
from bench.errors import BenchError
from bench.transforms.policy import Policy

EPSILON = 1e-5
COSINE_EPS = 1e-8  # F.cosine_similarity's, which the reference's cal_dis uses
SCORE_VARIANTS = ("reference", "paper")
REDUCTIONS = ("sum", "mean")
PER_SAMPLE = ("statistics", "vmap", "unfold")
#: the reference's S_acc batches: windows of 100 validation images from index 200 on, one per round
REFERENCE_WINDOW, REFERENCE_OFFSET = 100, 200
#: the reference's interpolation intervals (``bin_num``); Eq. 7's K is the same number of points less one
REFERENCE_POINTS = 20

Batches = Union[Tensor, Sequence[Tensor]]


def _transform(policy: Optional[Policy], images: Tensor, generator: Optional[torch.Generator]) -> Tensor:
    return images if policy is None else policy(images, generator)


def _check_variant(variant: str) -> None:
    if variant not in SCORE_VARIANTS:
        raise BenchError(f"unknown privacy-score variant '{variant}'; choose one of {list(SCORE_VARIANTS)}")


def interpolation_steps(
    points: int, variant: str = "reference", dtype=torch.float64, device=None
) -> tuple[Tensor, Tensor]:
    """The steps i of x'(i) and their quadrature weights (summing to 1): j / K for j = 0..K with trapezoid
    weights (reference), or j / K for j < K with weights 1 / K (Eq. 7)."""
    _check_variant(variant)
    if variant == "reference":
        steps = torch.arange(points + 1, dtype=dtype, device=device) / points
        weights = torch.full((points + 1,), 1.0 / points, dtype=dtype, device=device)
        weights[0] = weights[-1] = 0.5 / points
    else:
        steps = torch.arange(points, dtype=dtype, device=device) / points
        weights = torch.full((points,), 1.0 / points, dtype=dtype, device=device)
    return steps, weights


def interpolation_points(starts: Tensor, targets: Tensor, points: int, variant: str = "paper") -> Tensor:
    """x'(i) = (1 - i) x0 + i T(x) at the steps of :func:`interpolation_steps`: (D, steps, C, H, W)."""
    steps, _ = interpolation_steps(points, variant, targets.dtype, targets.device)
    steps = steps.view(1, -1, 1, 1, 1)
    return (1 - steps) * starts.unsqueeze(1) + steps * targets.unsqueeze(1)


def _grad_sim(along: Sequence[Tensor], reference: Sequence[Tensor], layerwise: bool) -> Tensor:
    """GradSim (Eq. 5) of per-layer flat gradients (..., P_l) against broadcastable references: the mean over
    parameter tensors of each one's cosine (the reference's ``cal_dis(..., 'cos')`` averaged over layers) or one
    cosine over all parameters together (Eq. 5 as printed)."""
    if layerwise:
        return torch.stack([F.cosine_similarity(a, r, dim=-1, eps=COSINE_EPS) for a, r in zip(along, reference)]).mean(
            0
        )
    return F.cosine_similarity(torch.cat(list(along), -1), torch.cat(list(reference), -1), dim=-1, eps=COSINE_EPS)


def _grad_sim_of_statistics(dots: Tensor, squares: Tensor, references: Tensor, layerwise: bool) -> Tensor:
    """:func:`_grad_sim` of every sample against its reference from per-tensor dot products and squared norms
    ((tensors, M), :func:`bench.batching.per_sample.gradient_statistics`), with ``F.cosine_similarity``'s clamping of
    each norm at ``COSINE_EPS``."""
    if not layerwise:  # one cosine over all parameters together
        dots, squares = dots.sum(0, keepdim=True), squares.sum(0, keepdim=True)
    norms = squares.sqrt().clamp_min(COSINE_EPS)
    return (dots / (norms * norms[:, references])).mean(0)


def _starts(images: Tensor, starts: Optional[Tensor], generator: Optional[torch.Generator]) -> Tensor:
    # the reference's noise_input: uniform in [0, 1] pixel space (then normalised, which our networks do inside)
    if starts is None:
        starts = torch.rand(images.shape, generator=generator, dtype=images.dtype).to(images.device)
    return starts


def privacy_score(
    model: nn.Module,
    policy: Optional[Policy],
    images: Tensor,
    labels: Tensor,
    points: int = REFERENCE_POINTS,
    starts: Optional[Tensor] = None,
    generator: Optional[torch.Generator] = None,
    chunk: int = 256,
    variant: str = "reference",
    per_sample: str = "statistics",
) -> Tensor:
    """S_pri on ``model`` (put in eval mode) for ``images`` (D, C, H, W) with ``labels`` (D,): float64.

    ``per_sample`` chooses how the per-sample gradients are formed: ``statistics`` (the default: one batched
    forward and backward, each layer's per-sample gradients formed a chunk at a time in a hook during the
    backward -- convolutions by grouped convolution backward -- and reduced at once to their dot products with the
    target's gradient and their squared norms, all the cosines need:
    :func:`bench.batching.per_sample.gradient_statistics`;
    1.2-1.3x the floor of one plain batched forward and backward on the 2-core CPU, ``benchmarks/ats_scores.py``),
    ``vmap`` (``torch.func.vmap(grad)``, any network) or ``unfold`` (every per-sample gradient by unfold + batched
    matmul: :mod:`bench.batching.per_sample`; slower: it materialises every convolution's unfolded input).
    ``statistics`` and ``unfold`` fall back to ``vmap`` for layers they do not cover.
    ``points`` is K (the reference's ``bin_num``, 20); ``variant`` ``reference`` or ``paper`` (module docstring).
    ``starts`` are the attacker's random starts x0 (default: uniform noise from ``generator``, drawn after
    the policy's own draws); ``chunk`` bounds how many inputs (points and targets) one pass takes, and with
    ``vmap`` and ``unfold`` how many per-sample gradients are held at once.
    """
    if per_sample not in PER_SAMPLE:
        raise BenchError(f"per_sample must be one of {list(PER_SAMPLE)}, got '{per_sample}'")
    model.eval()
    steps, weights = interpolation_steps(points, variant, images.dtype, images.device)
    targets = _transform(policy, images, generator)
    starts = _starts(images, starts, generator)
    params = {name: p.detach() for name, p in model.named_parameters()}
    buffers = dict(model.named_buffers())

    def loss(params: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        return F.cross_entropy(functional_call(model, (params, buffers), (x.unsqueeze(0),)), y.unsqueeze(0))

    by_vmap = vmap(grad(loss), in_dims=(None, 0, 0))  # per-sample gradients with respect to the parameters
    use_unfold = per_sample == "unfold"
    use_statistics = per_sample == "statistics"

    def gradients_of(inputs: Tensor, targets_: Tensor) -> list[Tensor]:
        nonlocal use_unfold
        if use_unfold:
            try:
                return per_sample_gradients(model, inputs, targets_)
            except Unsupported:
                use_unfold = False
        return [g.flatten(1) for g in by_vmap(params, inputs, targets_).values()]

    count_steps = len(steps)
    images_per_chunk = max(1, chunk // (count_steps + 1))
    total = torch.zeros((), dtype=torch.float64, device=images.device)
    for start in range(0, len(images), images_per_chunk):
        target, label = targets[start : start + images_per_chunk], labels[start : start + images_per_chunk]
        count = target.shape[0]
        path = interpolation_points(starts[start : start + count], target, points, variant)
        # every interpolation point of every image and the image itself, in one vmap
        inputs = torch.cat([path.flatten(0, 1), target])
        input_labels = torch.cat([label.repeat_interleave(count_steps), label])
        if use_statistics:
            own = torch.arange(count * count_steps, count * (count_steps + 1), device=images.device)
            references = torch.cat([own.repeat_interleave(count_steps), own])  # each point's target, each target itself
            try:
                dots, squares = gradient_statistics(model, inputs, input_labels, references)
                similarity = _grad_sim_of_statistics(dots, squares, references, variant == "reference")
                total += (similarity[: count * count_steps].view(count, count_steps).double() * weights.double()).sum()
                continue
            except Unsupported:
                use_statistics = False
        flat = gradients_of(inputs, torch.cat([label.repeat_interleave(count_steps), label]))
        along = [f[: count * count_steps].view(count, count_steps, -1) for f in flat]
        reference = [f[count * count_steps :].unsqueeze(1) for f in flat]
        similarity = _grad_sim(along, reference, variant == "reference")  # (count, steps)
        total += (similarity.double() * weights.double()).sum()
    return total / len(images)


def privacy_score_loop(
    model: nn.Module,
    policy: Optional[Policy],
    images: Tensor,
    labels: Tensor,
    points: int = REFERENCE_POINTS,
    starts: Optional[Tensor] = None,
    generator: Optional[torch.Generator] = None,
    variant: str = "reference",
) -> Tensor:
    """:func:`privacy_score` as the authors' code computes it: one image and one interpolation point at a time
    (batch 1, one backward per point)."""
    model.eval()
    steps, weights = interpolation_steps(points, variant, images.dtype, images.device)
    targets = _transform(policy, images, generator)
    starts = _starts(images, starts, generator)
    parameters = [p for p in model.parameters()]

    def gradient(x: Tensor, y: Tensor) -> list[Tensor]:
        loss = F.cross_entropy(model(x.unsqueeze(0)), y.unsqueeze(0))
        return [g.flatten() for g in torch.autograd.grad(loss, parameters)]

    total = 0.0
    for x0, target, label in zip(starts, targets, labels):
        reference = gradient(target, label)
        for step, weight in zip(steps.tolist(), weights.tolist()):
            point = (1 - step) * x0 + step * target  # Eq. 6, x'(i)
            total += weight * _grad_sim(gradient(point, label), reference, variant == "reference").double()
    return total / len(images)


def _check_reduction(reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise BenchError(
            f"unknown S_acc reduction '{reduction}'; choose 'sum' (the reference's scale) or 'mean' (Eq. 10 as printed)"
        )


def _score_of_round(jacobian: Tensor, reduction: str) -> Tensor:
    """Eq. 9-10 for one round's (N, D) Jacobian."""
    jacobian = jacobian.double()
    centred = jacobian - jacobian.mean(dim=1, keepdim=True)  # Eq. 9, J - M_J (each row about its mean: np.corrcoef)
    covariance = centred @ centred.T
    scale = covariance.diagonal().sqrt().clamp_min(1e-30)
    correlation = covariance / (scale.unsqueeze(1) * scale.unsqueeze(0))
    shifted = torch.linalg.eigvalsh(correlation) + EPSILON  # symmetric: real eigenvalues
    terms = shifted.log() + shifted.reciprocal()
    return -(terms.sum() if reduction == "sum" else terms.mean())  # Eq. 10 (sign and scale: module docstring)


def _score_from_jacobians(jacobians: Union[Tensor, Sequence[Tensor]], reduction: str = "sum") -> Tensor:
    """The mean over rounds of each round's S_acc, for (R, N, D) Jacobians or a list of (N_r, D) ones."""
    _check_reduction(reduction)
    return torch.stack([_score_of_round(j, reduction) for j in jacobians]).mean()


def input_jacobians(model: nn.Module, images: Tensor) -> Tensor:
    """Eq. 8: each sample's gradient of the model's summed outputs with respect to itself, (N, C*H*W).

    In eval mode samples do not interact, so one backward of the batch's total gives every row."""
    model.eval()
    inputs = images.detach().clone().requires_grad_(True)
    (gradient,) = torch.autograd.grad(model(inputs).sum(), inputs)
    return gradient.flatten(1)


def _transformed_rounds(
    policy: Optional[Policy], batches: Batches, generator: Optional[torch.Generator]
) -> list[Tensor]:
    rounds = list(batches)
    if not rounds:
        raise BenchError("S_acc needs at least one round of images")
    sizes = [len(r) for r in rounds]
    transformed = _transform(policy, torch.cat(rounds), generator)  # one draw for all rounds: loop == vectorized
    return list(transformed.split(sizes))


def accuracy_score(
    model: nn.Module,
    policy: Optional[Policy],
    batches: Batches,
    generator: Optional[torch.Generator] = None,
    reduction: str = "sum",
) -> Tensor:
    """S_acc of Eq. 10 on the randomly initialised ``model``, averaged over rounds: ``batches`` is (R, N, C, H, W)
    or a list of (N_r, C, H, W) rounds (:func:`class_representatives` gives the reference's)."""
    _check_reduction(reduction)
    rounds = _transformed_rounds(policy, batches, generator)
    rows = input_jacobians(model, torch.cat(rounds)).split([len(r) for r in rounds])
    return _score_from_jacobians(rows, reduction)


def accuracy_score_loop(
    model: nn.Module,
    policy: Optional[Policy],
    batches: Batches,
    generator: Optional[torch.Generator] = None,
    reduction: str = "sum",
) -> Tensor:
    """:func:`accuracy_score`, one sample's Jacobian row and one round at a time."""
    _check_reduction(reduction)
    model.eval()
    scores = []
    for batch in _transformed_rounds(policy, batches, generator):
        rows = []
        for image in batch:
            x = image.unsqueeze(0).detach().clone().requires_grad_(True)
            (row,) = torch.autograd.grad(model(x).sum(), x)
            rows.append(row.flatten())
        scores.append(_score_of_round(torch.stack(rows), reduction))
    return torch.stack(scores).mean()


def class_representatives(
    images: Tensor, labels: Tensor, rounds: int = 10, window: int = REFERENCE_WINDOW, offset: int = REFERENCE_OFFSET
) -> list[Tensor]:
    """The reference's S_acc rounds: round r takes the first image of every label among images
    [offset + r window, offset + (r + 1) window) (``accuracy_metric``), so N = the labels present there
    (all 10 on MNIST-like data, about 63 of CIFAR-100's 100)."""
    needed = offset + rounds * window
    if len(images) < needed:
        raise BenchError(
            f"S_acc's {rounds} rounds of {window} images from index {offset} need {needed} images, "
            f"got {len(images)}; lower --rounds or --acc_window"
        )
    batches = []
    for r in range(rounds):
        lo = offset + r * window
        seen: dict[int, int] = {}
        for k, label in enumerate(labels[lo : lo + window].tolist()):
            seen.setdefault(int(label), lo + k)
        if len(seen) < 2:
            raise BenchError(f"S_acc round {r} has images of {len(seen)} label only; a correlation needs two")
        batches.append(images[sorted(seen.values())])
    return batches
