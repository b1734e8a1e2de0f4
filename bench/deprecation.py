"""Renamed arguments: the old name keeps working, with a warning, for one release."""

from __future__ import annotations

import warnings
from typing import Any, Optional

from bench.errors import BenchError


def renamed_argument(owner: str, old: str, new: str, old_value: Optional[Any], new_value: Any, default: Any) -> Any:
    """The value of argument ``new``, taken from its deprecated name ``old`` when that one is given.

    Methods take the old name as a keyword defaulting to None and drop it from their ``hparams`` (records,
    checkpoints and shadow models then know the new name only), e.g. ``RAN(k=3)`` is ``RAN(stage_pairs=3)``.
    """
    if old_value is None:
        return new_value
    if new_value != default:
        raise BenchError(f"{owner}: give `{new}` only; `{old}` is its deprecated name")
    warnings.warn(f"{owner}: `{old}` is deprecated and goes in the next release; use `{new}`", DeprecationWarning,
                  stacklevel=3)
    return old_value
