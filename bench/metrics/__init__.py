"""Metrics shared by every attack and by the harness: reconstruction quality and cost."""

from bench.metrics.cost import client_flops_per_sample, count_parameters, released_bytes_per_sample
from bench.metrics.reconstruction import reconstruction_metrics, ssim_kernel_size

__all__ = [
    "client_flops_per_sample",
    "count_parameters",
    "released_bytes_per_sample",
    "reconstruction_metrics",
    "ssim_kernel_size",
]
