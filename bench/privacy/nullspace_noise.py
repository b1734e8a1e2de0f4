"""The noise of Algorithm 1 (Wang et al., AAAI 2024): a constant part and a random part from the null space of A.

For a measurement matrix A (m x n) and images x in [0, 1]:

* eta_c (n): one vector for the whole data set, entries from U(-1, -0.9) u U(0.9, 1) (line 1);
* R (n x c): an orthonormal basis Z of Null(A) (SciPy), its columns shuffled and each scaled to
  [-1, 1], split evenly into c groups whose sums, scaled to [-1, 1] again, are R's columns (lines 2-10);
* per sample, eta_r = the sum of a random c*p of R's columns, scaled to [-1, 1] (lines 12-14), so A eta_r = 0;
* x_noise = (x + lambda (eta_c + eta_r) + 2 lambda) / (4 lambda + 1), again in [0, 1] (line 15).

"Scale to [-1, 1]" divides by the largest magnitude: a vector of Null(A) stays in Null(A) only under a
pure scaling (a min-max shift would add a multiple of the all-ones vector, which A does not annihilate).

The measurements of x_noise do not depend on eta_r: A x_noise = (A x + A (lambda eta_c + 2 lambda 1)) / (4 lambda + 1),
the right-hand side of Eq. 5, which is what the client sends at test time.

Algorithm 1 noises the training set once, so each image keeps one eta_r: line 12's shuffle of R's columns
is keyed by the image's content (and the noise seed), which gives every distinct image its own draw and
the same draw in every epoch, without the data pipeline having to pass sample indices. The shuffle is an
integer hash of (image key, column) sorted per image: exact on every device, batched, with no host sync.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np
import scipy.linalg
import torch
from torch import Tensor, nn

from bench.errors import BenchError


def _signed(value: int) -> int:
    """A Python integer as the int64 with the same low 64 bits."""
    value %= 1 << 64
    return value - (1 << 64) if value >= 1 << 63 else value


#: SplitMix64's constants (as signed int64: torch's int64 products wrap around)
_GOLDEN, _MIX1, _MIX2 = (_signed(v) for v in (0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB))


def _hash(values: Tensor) -> Tensor:
    """SplitMix64's finaliser on int64 tensors: a well-mixed integer for every integer, elementwise."""
    values = (values ^ (values >> 30)) * _MIX1
    values = (values ^ (values >> 27)) * _MIX2
    return values ^ (values >> 31)


class NullSpaceNoise(nn.Module):
    """Algorithm 1's x -> x_noise for a fixed measurement matrix.

    Args:
        matrix: the measurement matrix A (m x n), n = the number of pixels (C*H*W).
        lam_noise: lambda_noise, the privacy/accuracy trade-off (the paper: 2 for MNIST, 1 for SVHN and CIFAR-10).
        p: the share of R's columns summed into each eta_r (the paper: 0.5).
        groups: c, the number of columns of R (default: sqrt(n - m), the paper's choice).
        seed: draws eta_c, the shuffle of Z's columns and the per-image choice of R's columns.
    """

    def __init__(
        self, matrix: Tensor, lam_noise: float = 2.0, p: float = 0.5, groups: Optional[int] = None, seed: int = 0
    ) -> None:
        super().__init__()
        if matrix.ndim != 2:
            raise BenchError(f"the measurement matrix must be 2-D (m x n), got shape {tuple(matrix.shape)}")
        m, n = matrix.shape
        if lam_noise <= 0:
            raise BenchError(f"lam_noise (lambda_noise of Algorithm 1) must be positive, got {lam_noise}")
        if not 0.0 < p <= 1.0:
            raise BenchError(f"p (the share of R's columns in each eta_r) must lie in (0, 1], got {p}")
        basis = scipy.linalg.null_space(matrix.double().numpy())  # Z: n x d, orthonormal, d >= n - m
        d = basis.shape[1]
        if d == 0:
            raise BenchError(f"A ({m} x {n}) has no null space, so eta_r cannot exist; use a measurement rate below 1")
        groups = max(1, round(math.sqrt(n - m))) if groups is None else int(groups)
        if not 1 <= groups <= d:
            raise BenchError(
                f"groups (c of Algorithm 1) must lie in [1, {d}] (the null space's dimension), got {groups}"
            )
        self.lam_noise, self.p, self.groups, self.seed = float(lam_noise), float(p), groups, int(seed)
        #: k = c * p columns of R make one eta_r (at least one)
        self.columns_per_sample = max(1, math.floor(groups * p))

        rng = np.random.default_rng(seed)
        signs = rng.choice([-1.0, 1.0], size=n)
        eta_c = signs * rng.uniform(0.9, 1.0, size=n)  # line 1
        basis = basis[:, rng.permutation(d)]  # line 3
        basis = basis / np.abs(basis).max(axis=0, keepdims=True)  # lines 4-6
        candidates = np.stack(
            [basis[:, part].sum(axis=1) for part in np.array_split(np.arange(d), groups)], axis=1
        )  # line 8
        candidates = candidates / np.abs(candidates).max(axis=0, keepdims=True)  # line 9
        self.register_buffer("eta_c", torch.from_numpy(eta_c).float())
        self.register_buffer("candidates", torch.from_numpy(candidates).float())
        # per-pixel weights that turn an image's 8-bit values into its key (no overflow: n * 255 * 2^20 << 2^63)
        self.register_buffer("key_weights", torch.from_numpy(rng.integers(1, 2**20, size=n)).long())

    @property
    def scale(self) -> float:
        """1 / (4 lambda + 1): Eq. 4's normalisation back to [0, 1]."""
        return 1.0 / (4.0 * self.lam_noise + 1.0)

    def measurement_offset(self, matrix: Tensor) -> Tensor:
        """A (lambda eta_c + 2 lambda 1): the constant that Eq. 5 adds to y before scaling."""
        return matrix @ (self.lam_noise * self.eta_c + 2.0 * self.lam_noise)

    def image_keys(self, images: Tensor) -> Tensor:
        """One integer per image from its 8-bit pixel values: equal images, equal keys."""
        pixels = images.detach().flatten(1).mul(255).round().long()
        return (pixels * self.key_weights).sum(1)

    def random_noise(self, images: Tensor) -> Tensor:
        """eta_r for every image (B x n), lines 12-14; drawn once per distinct image."""
        keys = _hash(self.image_keys(images) + _signed(self.seed * _GOLDEN))
        columns = torch.arange(1, self.groups + 1, device=keys.device) * _GOLDEN
        order = _hash(keys[:, None] ^ columns).argsort(dim=1)  # line 12: a shuffle of R's columns per image
        chosen = torch.zeros(len(keys), self.groups, device=keys.device, dtype=self.candidates.dtype)
        chosen.scatter_(1, order[:, : self.columns_per_sample], 1.0)  # line 13: the first c*p of them
        eta_r = chosen @ self.candidates.T
        return eta_r / eta_r.abs().amax(1, keepdim=True).clamp_min(torch.finfo(eta_r.dtype).tiny)  # line 14

    def forward(self, images: Tensor) -> Tensor:
        """x_noise of Algorithm 1, line 15 (Eq. 4's noisy images), in the images' shape."""
        eta = self.eta_c + self.random_noise(images)
        noisy = (images.flatten(1) + self.lam_noise * eta + 2.0 * self.lam_noise) * self.scale
        return noisy.view_as(images)

    def constant_only(self, images: Tensor) -> Tensor:
        """The images with eta_c alone (eta_r = 0), those of the paper's Table 2 and Figure 4."""
        noisy = (images.flatten(1) + self.lam_noise * self.eta_c + 2.0 * self.lam_noise) * self.scale
        return noisy.view_as(images)

    def extra_repr(self) -> str:
        return (
            f"n={self.eta_c.numel()}, lam_noise={self.lam_noise}, p={self.p}, groups={self.groups}, "
            f"columns_per_sample={self.columns_per_sample}, seed={self.seed}"
        )
