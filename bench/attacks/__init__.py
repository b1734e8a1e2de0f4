"""The harness's attacks, one module per attack, each bound to one threat model."""

from bench.attacks.base import Attack, AttackResult
from bench.attacks.compressed_reconstruction import (
    AffineInversion,
    MeasurementDecoder,
    PseudoInverse,
    ReleasedTrainingData,
)
from bench.attacks.feature_inversion import DECODERS, FeatureInversion
from bench.attacks.gradient_inversion import GradientInversion
from bench.attacks.lira import LiRA, LiRAOnline
from bench.attacks.membership_inference import LossThreshold, NasrAttack, NasrShadow, ShokriShadow
from bench.attacks.own_decoder import OwnDecoder
from bench.attacks.phase_inversion import LearnedPhaseInversion, PhaseInversion
from bench.attacks.rmia import RMIA, RMIAOnline

__all__ = [
    "Attack",
    "AttackResult",
    "AffineInversion",
    "MeasurementDecoder",
    "PseudoInverse",
    "ReleasedTrainingData",
    "DECODERS",
    "FeatureInversion",
    "GradientInversion",
    "OwnDecoder",
    "PhaseInversion",
    "LearnedPhaseInversion",
    "LiRA",
    "LossThreshold",
    "NasrAttack",
    "NasrShadow",
    "ShokriShadow",
    "LiRAOnline",
    "RMIA",
    "RMIAOnline",
]
