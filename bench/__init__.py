"""bench: a PyTorch Lightning benchmark suite for privacy-preserving machine learning."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("ppml-bench")  # the distribution's name (pyproject.toml), not the package's
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
