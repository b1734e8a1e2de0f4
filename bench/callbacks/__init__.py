"""Lightning callbacks of the suite."""

from bench.callbacks.admm_pruning import ADMMPruning
from bench.callbacks.privacy_evaluation import PrivacyEvaluation

__all__ = ["ADMMPruning", "PrivacyEvaluation"]
