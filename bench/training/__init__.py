"""Training-time tools usable with any LightningModule (methods import them; the harness does not)."""

from bench.training.admm_pruning import ADMMPruning

__all__ = ["ADMMPruning"]
