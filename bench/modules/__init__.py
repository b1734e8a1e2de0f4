"""Methods of the suite: one LightningModule per method, each on :class:`PrivacyModule`."""

from bench.modules.base import PrivacyModule
from bench.modules.split_network import SplitNetwork

__all__ = ["PrivacyModule", "SplitNetwork"]
