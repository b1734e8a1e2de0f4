"""Network building blocks shared by methods and attacks; every network's name is in :mod:`bench.networks.registry`."""

from bench.networks.decoders import mirror_decoder, released_as_real, upsampling_decoder
from bench.networks.layers import Normalize
from bench.networks.registry import (
    ARCHITECTURES,
    Role,
    build_network,
    build_split_network,
    network_names,
    resolve_network,
)
from bench.networks.split import conv_encoder, mlp_classifier

__all__ = [
    "Normalize",
    "ARCHITECTURES",
    "Role",
    "build_network",
    "build_split_network",
    "network_names",
    "resolve_network",
    "conv_encoder",
    "mlp_classifier",
    "mirror_decoder",
    "released_as_real",
    "upsampling_decoder",
]
