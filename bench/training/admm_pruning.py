"""ADMM weight pruning as a Lightning Callback, usable with any LightningModule (MCMIA section II-A, IV).

Each pruned layer i has a cardinality constraint S_i = {W_i : card(W_i) <= n_i}. ADMM splits
``min f(W) s.t. W_i in S_i`` into a loss term and a projection:

    W-step:  minimise f(W) + sum_i rho/2 ||W_i - Z_i + U_i||^2   (the optimizer, every step)
    Z-step:  Z_i = Pi_S(W_i + U_i)                                (Eq. 19: keep the n_i largest magnitudes)
    U-step:  U_i = U_i + W_i - Z_i                                (Eq. 17, the scaled dual)

The augmented-Lagrangian term enters through its gradient, rho (W_i - Z_i + U_i), added to W_i's
gradient after backward: the same update as adding the term to the loss, but it works with any
module, automatic or manual optimization, and leaves every rank identical under DDP (it is added
after the gradients are all-reduced). After ``admm_updates`` Z/U updates the layers are hard
pruned to Pi_S(W_i) with ``torch.nn.utils.prune`` masks and training goes on with the masks
(masked retraining): the pruned weights stay exactly zero.

A checkpoint of a pruned module holds ``<name>_orig`` and ``<name>_mask``; call
:func:`bench.networks.pruning.restore_pruning` on a fresh module before loading it (PrivacyModule does so itself).
"""

from __future__ import annotations

from typing import Any, Optional, Union

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor, nn

from bench.errors import BenchError
from bench.networks.pruning import apply_mask, current_weight, effective_weight, is_masked, sparsity
from bench.training.distributed import destroy_process_group_at_exit

PHASES = ("admm", "retrain")
PRUNABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def project_cardinality(weight: Tensor, keep: int) -> Tensor:
    """Eq. 19: the Euclidean projection onto {card <= keep}: the ``keep`` largest magnitudes, others zero."""
    mask = torch.zeros(weight.numel(), dtype=torch.bool, device=weight.device)
    if keep > 0:
        mask[weight.detach().abs().flatten().topk(keep, sorted=False).indices] = True
    return weight * mask.view_as(weight)


def keep_count(numel: int, sparsity: float) -> int:
    """n_i: how many weights a layer of ``numel`` weights keeps at ``sparsity`` (the fraction set to zero)."""
    return numel - int(round(sparsity * numel))


def prunable_layers(module: nn.Module, submodule: Optional[str] = None) -> dict[str, nn.Module]:
    """Convolutional and linear layers (their ``weight``) under ``submodule`` (None: the whole module)."""
    root = module.get_submodule(submodule) if submodule else module
    prefix = f"{submodule}." if submodule else ""
    return {prefix + name: layer for name, layer in root.named_modules() if isinstance(layer, PRUNABLE)}


class ADMMPruning(Callback):
    """Prune a model's convolutional and linear weights by ADMM, then retrain it with masks.

    Args:
        sparsity: the fraction of each layer's weights set to zero: one number for every layer,
            or ``{layer name: fraction}`` (layers not named are left dense).
        submodule: prune only the layers under this attribute (e.g. ``network``), so that
            auxiliary networks (an adversary, a decoder) stay dense. None: the whole module.
        rho: the initial penalty rho of the augmented Lagrangian.
        rho_multiplier: rho is multiplied by this after every Z/U update (the schedule of
            ADMM pruning, Zhang et al. 2018) up to ``rho_max``.
        rho_max: the largest rho.
        update_every: Z/U are updated every this many ``interval`` units.
        interval: ``epoch`` or ``step`` (optimizer steps that touch a pruned layer).
        admm_updates: Z/U updates before hard pruning; then masked retraining to the end of fit.
    """

    def __init__(
        self,
        sparsity: Union[float, dict[str, float]] = 0.9,
        submodule: Optional[str] = None,
        rho: float = 1e-3,
        rho_multiplier: float = 1.3,
        rho_max: float = 1.0,
        update_every: int = 1,
        interval: str = "epoch",
        admm_updates: int = 10,
    ) -> None:
        fractions = sparsity.values() if isinstance(sparsity, dict) else [sparsity]
        if any(not 0.0 <= float(f) < 1.0 for f in fractions):
            raise BenchError(f"sparsity must lie in [0, 1) (the fraction of weights pruned), got {sparsity}")
        if rho <= 0 or rho_max < rho or rho_multiplier < 1:
            raise BenchError(
                f"need 0 < rho <= rho_max and rho_multiplier >= 1, got rho={rho}, rho_max={rho_max}, "
                f"rho_multiplier={rho_multiplier}"
            )
        if interval not in ("epoch", "step"):
            raise BenchError(f"interval must be 'epoch' or 'step', got '{interval}'")
        if update_every < 1 or admm_updates < 0:
            raise BenchError(f"update_every must be >= 1 and admm_updates >= 0, got {update_every}, {admm_updates}")
        self.sparsity = sparsity
        self.submodule = submodule
        self.initial_rho = rho
        self.rho_multiplier = rho_multiplier
        self.rho_max = rho_max
        self.update_every = update_every
        self.interval = interval
        self.admm_updates = admm_updates
        # the ADMM state, saved in checkpoints
        self.rho = rho
        self.phase = "admm"
        self.updates = 0
        self.ticks = 0
        self.Z: dict[str, Tensor] = {}
        self.U: dict[str, Tensor] = {}
        self._layers: dict[str, nn.Module] = {}

    def fresh_copy(self) -> "ADMMPruning":
        """The same schedule from its start (shadow models trained by a pruned target's recipe get their own)."""
        return type(self)(
            sparsity=self.sparsity,
            submodule=self.submodule,
            rho=self.initial_rho,
            rho_multiplier=self.rho_multiplier,
            rho_max=self.rho_max,
            update_every=self.update_every,
            interval=self.interval,
            admm_updates=self.admm_updates,
        )

    # ------------------------------------------------------------------ layers and targets
    def layers(self, module: nn.Module) -> dict[str, nn.Module]:
        found = prunable_layers(module, self.submodule)
        if isinstance(self.sparsity, dict):
            unknown = set(self.sparsity) - set(found)
            if unknown:
                raise BenchError(
                    f"ADMMPruning: no convolutional or linear layer(s) {sorted(unknown)}; layers are {sorted(found)}"
                )
            found = {name: layer for name, layer in found.items() if name in self.sparsity}
        if not found:
            raise BenchError(f"ADMMPruning: {type(module).__name__} has no convolutional or linear layer to prune")
        return found

    def keep(self, name: str, layer: nn.Module) -> int:
        """n_i of layer ``name``."""
        fraction = self.sparsity[name] if isinstance(self.sparsity, dict) else self.sparsity
        return keep_count(current_weight(layer).numel(), float(fraction))

    # ------------------------------------------------------------------ Lightning hooks
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._layers = self.layers(pl_module)
        destroy_process_group_at_exit()  # the module may be any LightningModule, not one of bench's methods

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.phase == "retrain":  # resumed after hard pruning: the masks came back with the weights
            missing = [name for name, layer in self._layers.items() if not is_masked(layer)]
            if missing:
                raise BenchError(
                    f"ADMMPruning resumed in the retrain phase but layers {missing} have no mask; "
                    "restore the module with bench.networks.pruning.restore_pruning first"
                )
            return
        if self.admm_updates == 0:
            self.hard_prune()
            return
        for name, layer in self._layers.items():
            weight = current_weight(layer).detach()
            if name not in self.Z:  # fresh start: Z = Pi_S(W), U = 0
                self.Z[name] = project_cardinality(weight, self.keep(name, layer))
                self.U[name] = torch.zeros_like(weight)
            else:  # resumed: the state was loaded on the CPU
                self.Z[name], self.U[name] = self.Z[name].to(weight.device), self.U[name].to(weight.device)

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer) -> None:
        if self.phase != "admm":
            return
        in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
        touched = False
        for name, layer in self._layers.items():
            weight = current_weight(layer)
            if id(weight) not in in_optimizer or weight.grad is None:
                continue
            # gradient of rho/2 ||W - Z + U||^2, the augmented-Lagrangian term of the W-step
            weight.grad.add_(weight.detach() - self.Z[name] + self.U[name], alpha=self.rho)
            touched = True
        if touched and self.interval == "step":
            self._tick()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.interval == "epoch" and self.phase == "admm":
            self._tick()
        if trainer.loggers:
            pl_module.log_dict(
                {
                    "admm/rho": float(self.rho),
                    "admm/phase": float(PHASES.index(self.phase)),
                    "admm/residual": self.residual(),
                },
                sync_dist=False,
            )

    # ------------------------------------------------------------------ ADMM
    def _tick(self) -> None:
        self.ticks += 1
        if self.ticks % self.update_every == 0:
            self.update()
            if self.updates >= self.admm_updates:
                self.hard_prune()

    @torch.no_grad()
    def update(self) -> None:
        """One Z-step (Eq. 19) and U-step (Eq. 17), then the rho schedule."""
        for name, layer in self._layers.items():
            weight = current_weight(layer).detach()
            self.Z[name] = project_cardinality(weight + self.U[name], self.keep(name, layer))  # Eq. 19
            self.U[name] = self.U[name] + weight - self.Z[name]  # Eq. 17
        self.updates += 1
        self.rho = min(self.rho * self.rho_multiplier, self.rho_max)

    @torch.no_grad()
    def hard_prune(self) -> None:
        """Keep the n_i largest weights of every layer and mask the rest for the remaining training."""
        for name, layer in self._layers.items():
            weight = current_weight(layer).detach()
            kept = project_cardinality(weight, self.keep(name, layer)) != 0
            if int(kept.sum()) < self.keep(name, layer):  # exact zeros among the largest: fill by position
                order = weight.abs().flatten().argsort(descending=True)[: self.keep(name, layer)]
                kept = torch.zeros(weight.numel(), dtype=torch.bool, device=weight.device)
                kept[order] = True
                kept = kept.view_as(weight)
            apply_mask(layer, kept.to(weight.dtype))
        self.phase = "retrain"
        self.Z, self.U = {}, {}  # the constraint now holds exactly: the duals have done their work

    def residual(self) -> float:
        """sum_i ||W_i - Z_i||^2 / sum_i ||W_i||^2: how far the weights still are from the constraint set."""
        if self.phase != "admm" or not self.Z:
            return 0.0
        gap = sum(
            float((current_weight(layer).detach() - self.Z[n]).square().sum()) for n, layer in self._layers.items()
        )
        norm = sum(float(current_weight(layer).detach().square().sum()) for layer in self._layers.values())
        return gap / max(norm, 1e-12)

    # ------------------------------------------------------------------ report and state
    def report(self, module: nn.Module) -> dict[str, float]:
        """Per-layer sparsity, nonzero weights and the compression ratio (x-fold) of the pruned layers."""
        layers = self._layers or self.layers(module)
        total = sum(effective_weight(layer).numel() for layer in layers.values())
        nonzero = sum(int(torch.count_nonzero(effective_weight(layer))) for layer in layers.values())
        report = {f"sparsity/{name}": sparsity(layer) for name, layer in layers.items()}
        report.update(
            {
                "pruned_layer_weights": total,
                "pruned_layer_nonzero": nonzero,
                "pruned_layer_compression": total / max(nonzero, 1),
            }
        )
        return report

    def state_dict(self) -> dict[str, Any]:
        return {
            "rho": self.rho,
            "phase": self.phase,
            "updates": self.updates,
            "ticks": self.ticks,
            "Z": {k: v.detach().cpu() for k, v in self.Z.items()},
            "U": {k: v.detach().cpu() for k, v in self.U.items()},
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.rho, self.phase = float(state_dict["rho"]), str(state_dict["phase"])
        self.updates, self.ticks = int(state_dict["updates"]), int(state_dict["ticks"])
        self.Z, self.U = dict(state_dict["Z"]), dict(state_dict["U"])
