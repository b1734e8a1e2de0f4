"""Privacy mechanisms that methods share or that stand on their own (noise on data before it leaves the client)."""

from bench.privacy.nullspace_noise import NullSpaceNoise

__all__ = ["NullSpaceNoise"]
