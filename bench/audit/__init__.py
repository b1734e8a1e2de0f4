"""``bench audit``: bench's verdicts on a classifier or a split model's client trained elsewhere, or on saved scores
(docs/auditing_a_model.md)."""

from bench.audit.external import ExternalClassifier, assign_member_pools, read_members
from bench.audit.scores import load_scores, score_saved
from bench.audit.split import ExternalRelease

__all__ = ["ExternalClassifier", "ExternalRelease", "assign_member_pools", "load_scores", "read_members", "score_saved"]
