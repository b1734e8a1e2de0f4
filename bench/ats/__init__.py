"""ATS's automatic transformation search: privacy and accuracy scores (here) and Algorithm 1 (``bench.ats.search``)."""

from bench.ats.scores import (
    accuracy_score,
    accuracy_score_loop,
    class_representatives,
    privacy_score,
    privacy_score_loop,
)

__all__ = ["accuracy_score", "accuracy_score_loop", "class_representatives", "privacy_score", "privacy_score_loop"]
