"""Network building blocks shared by methods and attacks."""

from bench.networks.decoders import mirror_decoder, released_as_real, upsampling_decoder
from bench.networks.layers import Normalize
from bench.networks.split import FAMILIES, build_split_network, conv_encoder, mlp_classifier

__all__ = ["Normalize", "FAMILIES", "build_split_network", "conv_encoder", "mlp_classifier", "mirror_decoder",
           "released_as_real", "upsampling_decoder"]
