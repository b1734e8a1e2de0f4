"""How every learned attacker trains: on its own pool, until its own validation loss stops improving.

A learned attacker (a feature-inversion decoder, the measurement decoder, the phase critic D', the
learned phase estimator) holds out ``validation_fraction`` of the attacker pool, trains on the rest
and, after every epoch, measures its loss on the held-out part. Training stops when that loss has
not improved (by a relative ``min_delta``) for ``patience`` epochs or when ``max_epochs`` is spent;
the best state is restored either way. The :class:`TrainingReport` says which of the two happened:
an attacker that hit its maximum may not have converged, and its record says so
(``details["converged"]``), so a weak attacker never passes for a strong defense.

The learning rate follows ``schedule``: ``constant`` (Adam at ``lr`` throughout, the loop as it was before issue
27, bit for bit), ``plateau`` (Adam from a larger ``lr``, multiplied by ``lr_factor`` (0.5) after every
``lr_patience`` + 1 epochs in a row without an improvement: :class:`torch.optim.lr_scheduler.ReduceLROnPlateau`
on the same validation loss with the same ``min_delta`` as the stopping rule) or ``onecycle`` (one cycle of
``cycle_epochs`` epochs, :class:`torch.optim.lr_scheduler.OneCycleLR` stepped per batch: the rate rises from
``lr / 25`` to ``lr`` over the first 30 % of the cycle and anneals to ``lr / 25e4``, Smith and Topin 2019, while
Adam's beta1 goes from 0.95 to 0.85 and back, OneCycleLR's default; the stopping rule waits for the cycle's end,
since its warm-up raises the loss on purpose; after it training goes on from ``lr / 25``, beta1 0.95, under the
plateau schedule until the stopping rule holds; the stop may come at the first epoch after the cycle, when the
cycle's best epoch is ``patience`` epochs behind). The stopping rule is the same under
all three: training ends when the validation loss has not improved for ``patience`` epochs, whatever the rate is
by then, so ``converged`` means the same under each. With the default ``lr_patience`` (a third of ``patience``)
the rate has been halved twice (three rates tried) before a plateau stops training, so a plateau is never just a
rate too large to settle.

Measured on the feature-inversion decoders of ``dnn/mnist_shared`` (``benchmarks/attacker_recipe.py``; the numbers
are in :class:`~bench.attacks.FeatureInversion`'s docstring, whose default it is): one cycle of 60 epochs then
patience 10 stops the mirror decoder at 0.23-0.27x the constant rate's epochs at -3.4 % to +0.5 % validation MSE,
and ``unet_small`` at 0.86x its epochs at -19 %.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass
from typing import Any, Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from bench.errors import BenchError

#: the learning-rate schedules of :func:`train_until_plateau`
SCHEDULES = ("constant", "plateau", "onecycle")

#: the one-cycle schedule's starting rate is ``lr / ONECYCLE_DIV`` (OneCycleLR's default), and so is the rate the
#: plateau schedule takes over with after the cycle
ONECYCLE_DIV = 25.0

#: loss(model, sample indices, generator) -> mean loss of those samples; the generator draws any
#: randomness of the loss (augmentations, fake angles), fixed for the validation split
LossFunction = Callable[[nn.Module, Tensor, torch.Generator], Tensor]


@dataclass
class TrainingReport:
    """The budget a learned attacker used, and whether it stopped on a plateau (``converged``)."""

    converged: bool  # True: stopped because the validation loss stopped improving; False: hit max_epochs
    epochs_run: int
    max_epochs: int
    best_epoch: int  # 1-based; the restored state is this epoch's
    patience: int
    train_samples: int
    validation_samples: int
    validation_loss: float  # of the restored state
    schedule: str = "constant"  # the learning-rate schedule (SCHEDULES)
    lr_start: Optional[float] = None  # the configured rate: the first epoch's, or the peak of a one-cycle
    lr_end: Optional[float] = None  # the learning rate of the last epoch run
    cycle_epochs: Optional[int] = None  # onecycle: the cycle's length (capped by max_epochs)

    def as_details(self) -> dict[str, Any]:
        return asdict(self)


def check_budget(name: str, epochs: int, patience: int, validation_fraction: float) -> None:
    """One clear line for a budget that cannot train (before any query is made)."""
    if epochs < 1 or patience < 1:
        raise BenchError(
            f"{name} needs epochs (the maximum budget) >= 1 and patience >= 1, got {epochs} and {patience}"
        )
    if not 0 < validation_fraction < 1:
        raise BenchError(
            f"{name}: validation_fraction is the share of the attacker pool held out to decide when "
            f"training has converged; it must lie in (0, 1), got {validation_fraction}"
        )


def check_schedule(
    name: str, schedule: str, lr_factor: float = 0.5, lr_patience: Optional[int] = None, cycle_epochs: int = 1
) -> None:
    """One clear line for a learning-rate schedule that does not exist, cannot decay or has no cycle."""
    if schedule not in SCHEDULES:
        raise BenchError(f"{name}: unknown schedule {schedule!r}; choose one of {list(SCHEDULES)}")
    if not isinstance(cycle_epochs, int) or isinstance(cycle_epochs, bool) or cycle_epochs < 1:
        raise BenchError(
            f"{name}: cycle_epochs (the one-cycle schedule's length) must be a whole number >= 1, got {cycle_epochs!r}"
        )
    if not 0 < lr_factor < 1 or (lr_patience is not None and lr_patience < 0):
        raise BenchError(
            f"{name} needs 0 < lr_factor < 1 and lr_patience >= 0 (or None), got {lr_factor} and {lr_patience}"
        )


def default_lr_patience(patience: int) -> int:
    """The plateau schedule's patience when none is given: a third of the stopping patience (at least 1), so the
    rate is halved at least twice in the ``patience`` epochs without an improvement that stop training
    (patience 10: halved after the 4th and the 8th)."""
    return max(1, patience // 3)


def validation_split(count: int, fraction: float, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """A random (train, validation) split of ``range(count)``, at least one sample on each side."""
    if count < 2:
        raise BenchError(
            f"a learned attacker needs at least 2 attacker samples (one to train, one to validate), got {count}"
        )
    order = torch.randperm(count, generator=generator)
    held_out = min(max(1, round(count * fraction)), count - 1)
    return order[held_out:], order[:held_out]


def train_until_plateau(
    model: nn.Module,
    loss: LossFunction,
    train: Tensor,
    validation: Tensor,
    generator: torch.Generator,
    *,
    max_epochs: int,
    patience: int,
    batch_size: int,
    lr: float,
    min_delta: float = 1e-3,
    description: str = "attacker",
    progress: bool = False,
    parameters: Optional[Sequence[nn.Parameter]] = None,
    schedule: str = "constant",
    lr_factor: float = 0.5,
    lr_patience: Optional[int] = None,
    cycle_epochs: int = 60,
) -> TrainingReport:
    """Adam on ``loss`` over mini-batches of ``train`` indices; early stopping on the mean loss of ``validation``.

    An epoch improves when its validation loss is below ``best - min_delta * |best|``. The model ends
    in eval mode holding the best state. Validation randomness comes from one seed drawn here from
    ``generator``, the same at every epoch, so validation losses compare like with like.

    ``schedule``: ``constant`` keeps ``lr``; ``plateau`` multiplies it by ``lr_factor`` after every
    ``lr_patience`` + 1 epochs in a row without an improvement (the same ``min_delta``; ``lr_patience`` None:
    :func:`default_lr_patience`); ``onecycle`` runs one cycle of ``cycle_epochs`` (at most ``max_epochs``) before
    the stopping rule applies, then the plateau schedule from ``lr / ONECYCLE_DIV``. None changes the stopping rule,
    nor draws from ``generator``.
    """
    check_schedule(description, schedule, lr_factor, lr_patience, cycle_epochs)
    device = next(model.parameters()).device
    trainable = [p for p in (model.parameters() if parameters is None else parameters) if p.requires_grad]
    optimizer = torch.optim.Adam(trainable, lr=lr)
    cycle = min(cycle_epochs, max_epochs) if schedule == "onecycle" else 0

    def on_plateau() -> torch.optim.lr_scheduler.ReduceLROnPlateau:
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer,
            mode="min",
            factor=lr_factor,
            patience=default_lr_patience(patience) if lr_patience is None else lr_patience,
            threshold=min_delta,
            threshold_mode="rel",
        )

    # batch-norm cannot train on one sample: a remainder of one is skipped, and seen next epoch
    skip_single = any(isinstance(layer, nn.modules.batchnorm._BatchNorm) for layer in model.modules())
    batches = math.ceil(len(train) / batch_size) - int(skip_single and len(train) > 1 and len(train) % batch_size == 1)
    scheduler = on_plateau() if schedule == "plateau" else None
    per_batch = (
        torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=cycle * batches, div_factor=ONECYCLE_DIV)
        if cycle
        else None
    )
    lr_end = optimizer.param_groups[0]["lr"]
    validation_seed = int(torch.randint(2**31 - 1, (1,), generator=generator))
    train, validation = train.to(device), validation.to(device)

    best_loss, best_epoch, best_state, epochs_run = math.inf, 0, None, 0
    bar = tqdm(range(1, max_epochs + 1), desc=description, disable=not progress, leave=False, dynamic_ncols=True)
    for epoch in bar:
        model.train()
        order = train[torch.randperm(len(train), generator=generator).to(device)]
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            if skip_single and len(batch) < 2 and len(order) > 1:
                continue
            value = loss(model, batch, generator)
            optimizer.zero_grad(set_to_none=True)
            value.backward()
            optimizer.step()
            if per_batch is not None and per_batch.last_epoch + 1 < per_batch.total_steps:
                per_batch.step()  # not past the cycle's last batch, whose rate is the cycle's lowest
        epochs_run, lr_end = epoch, optimizer.param_groups[0]["lr"]
        current = validation_loss(model, loss, validation, validation_seed, batch_size)
        if scheduler is not None:
            scheduler.step(current)
        if per_batch is not None and epoch == cycle:  # the cycle is over: the plateau schedule takes over
            per_batch = None
            for group in optimizer.param_groups:  # beta1 stays where the cycle left it, 0.95 (as measured)
                group["lr"] = lr / ONECYCLE_DIV
            scheduler = on_plateau()
        if current < best_loss - min_delta * abs(best_loss) or best_state is None:
            best_loss, best_epoch, best_state = current, epoch, copy.deepcopy(model.state_dict())
        if progress:
            bar.set_postfix(validation=f"{current:.4g}", best=f"{best_loss:.4g}", refresh=False)
        if epoch - best_epoch >= patience and epoch > cycle:
            break
    model.load_state_dict(best_state)
    model.eval()
    return TrainingReport(
        converged=epochs_run - best_epoch >= patience and epochs_run > cycle,
        epochs_run=epochs_run,
        max_epochs=max_epochs,
        best_epoch=best_epoch,
        patience=patience,
        train_samples=len(train),
        validation_samples=len(validation),
        validation_loss=best_loss,
        schedule=schedule,
        lr_start=lr,
        lr_end=lr_end,
        cycle_epochs=cycle or None,
    )


@torch.no_grad()
def validation_loss(model: nn.Module, loss: LossFunction, indices: Tensor, seed: int, batch_size: int) -> float:
    """The mean loss over ``indices`` in eval mode, with the randomness of ``seed``."""
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    total = 0.0
    for start in range(0, len(indices), batch_size):
        batch = indices[start : start + batch_size]
        total += loss(model, batch, generator).item() * len(batch)
    return total / len(indices)


#: an attack's settings that :func:`fit_decoder` takes as they are (each attack with a learned decoder has them all)
FIT_SETTINGS = (
    "epochs",
    "batch_size",
    "lr",
    "patience",
    "validation_fraction",
    "progress",
    "schedule",
    "lr_factor",
    "lr_patience",
    "cycle_epochs",
)


def fit_settings(attack) -> dict[str, Any]:
    """The keyword arguments of :func:`fit_decoder` that ``attack`` configures: its budget and recipe."""
    return {name: getattr(attack, name) for name in FIT_SETTINGS}


def fit_decoder(
    decoder: nn.Module,
    inputs: Tensor,
    images: Tensor,
    generator: torch.Generator,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    patience: int,
    validation_fraction: float,
    description: str,
    progress: bool,
    schedule: str = "constant",
    lr_factor: float = 0.5,
    lr_patience: Optional[int] = None,
    cycle_epochs: int = 60,
) -> TrainingReport:
    """Train ``decoder`` to map ``inputs`` to ``images`` by MSE, with early stopping on a held-out share.

    ``epochs`` is the maximum budget; the decoder's frozen layers stay as they are. ``schedule``, ``lr_factor``,
    ``lr_patience``, ``cycle_epochs``: the learning-rate schedule (:func:`train_until_plateau`).
    """
    train, validation = validation_split(len(images), validation_fraction, generator)

    def mse(model: nn.Module, batch: Tensor, _: torch.Generator) -> Tensor:
        return F.mse_loss(model(inputs[batch]), images[batch])

    return train_until_plateau(
        decoder,
        mse,
        train,
        validation,
        generator,
        max_epochs=epochs,
        patience=patience,
        batch_size=batch_size,
        lr=lr,
        description=description,
        progress=progress,
        schedule=schedule,
        lr_factor=lr_factor,
        lr_patience=lr_patience,
        cycle_epochs=cycle_epochs,
    )


def summarise(reports: dict[str, TrainingReport], main: str) -> dict[str, Any]:
    """Record details of an attack's learners: ``converged`` (all of them), the budget of ``main``
    (``epochs_run``, ``max_epochs``) and every learner's report under ``training``."""
    return {
        "converged": all(report.converged for report in reports.values()),
        "epochs_run": reports[main].epochs_run,
        "max_epochs": reports[main].max_epochs,
        "training": {name: report.as_details() for name, report in reports.items()},
    }
