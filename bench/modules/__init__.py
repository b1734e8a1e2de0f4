"""Methods of the suite: one LightningModule per method, each on :class:`PrivacyModule`."""

from bench.modules.base import PrivacyModule
from bench.modules.collaborative import Collaborative
from bench.modules.complex_net import ComplexNet, ComplexNetBaseline
from bench.modules.dcmg import DCM, DCMG, DCMGN, DCMGO
from bench.modules.dpsgd import DPSGD
from bench.modules.mcmia import MCMIA
from bench.modules.noisy_input import NoisyInput
from bench.modules.ran import RAN
from bench.modules.resized_dnn import ResizedDNN
from bench.modules.split_network import SplitNetwork

__all__ = ["PrivacyModule", "Collaborative", "ComplexNet", "ComplexNetBaseline", "DCM", "DCMG", "DCMGN", "DCMGO", "DPSGD", "MCMIA", "NoisyInput", "RAN", "ResizedDNN", "SplitNetwork"]
