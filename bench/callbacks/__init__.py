"""Lightning callbacks of the suite."""

from bench.callbacks.privacy_evaluation import PrivacyEvaluation
from bench.training.admm_pruning import ADMMPruning  # lives with the training-time tools; a callback too

__all__ = ["ADMMPruning", "PrivacyEvaluation"]
