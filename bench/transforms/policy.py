"""Transformation policies written as in the ATS paper, and the policy files the search writes.

``3-1-7`` composes library entries 3, 1 and 7 (applied in that order, repeats allowed); a hybrid
``3-1-7+43-18-18`` picks one of its policies at random for every sample (section 4.4). A policy file
is JSON with at least ``{"policy": "<policy string>"}``; ``bench.ats.search`` writes one, and any
config can load it with ``--model.policy path/to/policy.json``.

The reference's training pipeline (gaow0007/ATSPrivacy, ``benchmark/comm.py: build_transform``) puts every
image through ``RandomCrop(size, padding=4)`` and ``RandomHorizontalFlip()`` before a non-empty policy (and
applies neither without one); ``crop_flip=True`` (the default) does the same, on the image's own size (the
reference crops F-MNIST's 28x28 images to 32x32 with that padding: a digit placed at random on a 36x36
black canvas, then resized; inversefed's own MNIST pipeline crops to 28). ``variant`` chooses the
operations' definitions (``bench.transforms.library``: ``reference`` or ``autoaugment``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from bench.errors import BenchError
from bench.transforms.library import LIBRARY, VARIANTS

CROP_PADDING = 4

_POLICY = re.compile(r"^\d+(-\d+)*(\+\d+(-\d+)*)*$")


class Policy:
    """A hybrid of one or more policies, each a composition of library transformations.

    Call it on a float batch (N, C, H, W) in [0, 1]; every random choice (which policy per sample,
    each operation's direction) is drawn from ``generator``, so a seed makes it deterministic.
    """

    def __init__(self, policies: Sequence[Sequence[int]], crop_flip: bool = True, variant: str = "reference") -> None:
        if not policies or any(not policy for policy in policies):
            raise BenchError("a policy needs at least one transformation")
        bad = [i for policy in policies for i in policy if not 0 <= i < len(LIBRARY)]
        if bad:
            raise BenchError(f"transformation indices must lie in [0, {len(LIBRARY) - 1}] (Table 5), got {bad}")
        if variant not in VARIANTS:
            raise BenchError(f"unknown transformation variant '{variant}'; choose one of {list(VARIANTS)}")
        self.policies = tuple(tuple(int(i) for i in policy) for policy in policies)
        self.crop_flip = bool(crop_flip)
        self.variant = variant

    def __str__(self) -> str:
        return "+".join("-".join(str(i) for i in policy) for policy in self.policies)

    def __repr__(self) -> str:
        return f"Policy('{self}')"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Policy) and (other.policies, other.crop_flip, other.variant) == (
            self.policies,
            self.crop_flip,
            self.variant,
        )

    def __hash__(self) -> int:
        return hash((self.policies, self.crop_flip, self.variant))

    def __call__(self, images: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        if images.ndim != 4 or not images.is_floating_point():
            raise BenchError(
                f"policies transform float batches (N, C, H, W) in [0, 1], got {images.dtype} {tuple(images.shape)}"
            )
        count = images.shape[0]
        # every draw is made for the whole batch up front: the result does not depend on how samples are grouped
        choice = torch.randint(len(self.policies), (count,), generator=generator)
        length = max(len(policy) for policy in self.policies)
        signs = torch.randint(2, (length, count), generator=generator) * 2 - 1
        choice, signs = choice.to(images.device), signs.to(images.device)
        if self.crop_flip:
            images = random_crop_flip(images, generator)
        out = images.clone()
        for number, policy in enumerate(self.policies):
            chosen = (choice == number).nonzero().flatten()
            if chosen.numel() == 0:
                continue
            batch = images[chosen]
            for position, index in enumerate(policy):
                batch = LIBRARY[index](batch, signs[position, chosen], self.variant)
            out[chosen] = batch
        return out


def random_crop_flip(
    images: Tensor, generator: Optional[torch.Generator] = None, padding: int = CROP_PADDING
) -> Tensor:
    """torchvision's ``RandomCrop(size, padding)`` (black padding) then ``RandomHorizontalFlip()``, per sample:
    each image is padded by ``padding`` on every side, cut back to its size at an offset drawn uniformly from
    [0, 2 padding] in each direction, and mirrored with probability 1/2."""
    count, _, height, width = images.shape
    offsets = torch.randint(2 * padding + 1, (2, count), generator=generator).to(images.device)
    flips = torch.randint(2, (count,), generator=generator).bool().to(images.device)
    padded = F.pad(images, (padding, padding, padding, padding))
    rows = (offsets[0].view(-1, 1) + torch.arange(height, device=images.device)).view(count, 1, height, 1)
    cols = (offsets[1].view(-1, 1) + torch.arange(width, device=images.device)).view(count, 1, 1, width)
    samples = torch.arange(count, device=images.device).view(-1, 1, 1, 1)
    channels = torch.arange(images.shape[1], device=images.device).view(1, -1, 1, 1)
    cropped = padded[samples, channels, rows, cols]
    return torch.where(flips.view(-1, 1, 1, 1), cropped.flip(-1), cropped)


def parse_policy(text: str, crop_flip: bool = True, variant: str = "reference") -> Policy:
    """``"3-1-7"`` or a hybrid ``"3-1-7+43-18-18"``."""
    compact = str(text).replace(" ", "")
    if not _POLICY.match(compact):
        raise BenchError(
            f"cannot read policy '{text}': write library indices joined by '-', hybrids joined by '+' "
            f"(e.g. 3-1-7+43-18-18), or give a policy file (.json)"
        )
    return Policy([[int(i) for i in part.split("-")] for part in compact.split("+")], crop_flip, variant)


def load_policy(
    value: "str | Path | Policy | None", crop_flip: bool = True, variant: str = "reference"
) -> Optional[Policy]:
    """A policy from its string, from a policy file, or None for no transformation (``None``, ``""``, ``"none"``)."""
    if value is None or isinstance(value, Policy):
        return value
    text = str(value).strip()
    if text.lower() in ("", "none"):
        return None
    if text.endswith(".json") or Path(text).is_file():
        try:
            content = json.loads(Path(text).read_text())
        except (OSError, ValueError) as error:
            raise BenchError(f"cannot read policy file {text}: {error}") from error
        if not isinstance(content, dict) or "policy" not in content:
            raise BenchError(
                f"policy file {text} must be a JSON object with a 'policy' string (as bench.ats.search writes)"
            )
        return parse_policy(content["policy"], crop_flip, variant)
    return parse_policy(text, crop_flip, variant)


def random_policy(
    generator: torch.Generator, max_length: int = 3, crop_flip: bool = True, variant: str = "reference"
) -> Policy:
    """A policy of 1 to ``max_length`` transformations drawn uniformly from the library (the search space of 4.4)."""
    length = int(torch.randint(1, max_length + 1, (1,), generator=generator))
    return Policy([torch.randint(len(LIBRARY), (length,), generator=generator).tolist()], crop_flip, variant)
