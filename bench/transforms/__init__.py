"""Image transformations as a privacy defense: the ATS library (Table 5) and its policies."""

from bench.transforms.library import LIBRARY, MAGNITUDES, Transformation
from bench.transforms.policy import Policy, load_policy, parse_policy, random_policy

__all__ = ["LIBRARY", "MAGNITUDES", "Transformation", "Policy", "load_policy", "parse_policy", "random_policy"]
