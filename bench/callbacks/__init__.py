"""Lightning callbacks of the suite."""

from bench.callbacks.privacy_evaluation import PrivacyEvaluation

__all__ = ["PrivacyEvaluation"]
