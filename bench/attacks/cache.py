"""Trained attackers kept on disk for a rerun, another attack setting or another sweep point to reuse.

One file per key, ``<SHA-256 of the key>.pt``: the key itself (JSON) beside the payload. A file is used only when its
stored key equals the key asked for, in full, and it loads as plain tensors and values
(``torch.load(weights_only=True)``): nothing in it chooses code to run. Anything else means train again, with one line
saying why. Writes are atomic, so two runs saving the same key at once never leave a mixed file.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any, Optional


@functools.lru_cache(maxsize=None)
def code_fingerprint(package: Path, files: tuple[Path, ...] = ()) -> str:
    """SHA-256 of every Python source file under ``package`` and of ``files`` (paths and contents): the code that
    trains an attacker.

    A version number alone would let an edited recipe (a changed training step, network or optimizer default)
    load what the old code trained; any change to the suite's code retires every cached attacker instead."""
    digest = hashlib.sha256()
    for path in [*sorted(package.rglob("*.py")), *files]:
        digest.update(str(path).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def method_sources(module) -> tuple[Path, tuple[Path, ...]]:
    """The suite's package, and the files outside it that define the method's class and its bases (a user's own):
    :func:`code_fingerprint`'s arguments for what trains an attacker of ``module``."""
    import inspect

    import bench

    package = Path(bench.__file__).resolve().parent
    files = set()
    for cls in type(module).__mro__:
        try:
            path = Path(inspect.getfile(cls)).resolve()
        except (TypeError, OSError):  # built in or defined interactively: its name and hyper-parameters are the key
            continue
        if path.suffix == ".py" and package not in path.parents and "site-packages" not in path.parts:
            files.add(path)
    return package, tuple(sorted(files))


class KeyedCache:
    """A folder of trained attackers, one file per key; ``what`` names them in its messages (e.g. "shadow cache")."""

    def __init__(self, folder: Path, what: str, retrain: str) -> None:
        self.folder, self.what, self.retrain = Path(folder), what, retrain

    @staticmethod
    def key_text(key: dict[str, Any]) -> str:
        return json.dumps(key, sort_keys=True)

    def path(self, key: dict[str, Any]) -> Path:
        return self.folder / f"{hashlib.sha256(self.key_text(key).encode()).hexdigest()}.pt"

    def load(self, key: dict[str, Any], map_location: Any = "cpu") -> Optional[dict[str, Any]]:
        """The payload stored under ``key``; None when there is none or it is not this key's (one line says why)."""
        import torch

        path = self.path(key)
        if not path.is_file():
            return None
        try:
            stored = torch.load(path, map_location=map_location, weights_only=True)
            if not isinstance(stored, dict) or stored.get("key") != self.key_text(key):
                raise ValueError(f"its key is not this {self.what.split()[0]}'s")
        except Exception as error:  # a file is never trusted: any problem means train again
            self.refuse(key, error)
            return None
        return stored

    def refuse(self, key: dict[str, Any], error: Exception) -> None:
        """Say, in one line, why the file under ``key`` is not used (the caller trains again)."""
        reason = f"{type(error).__name__}: {str(error).splitlines()[0]}" if str(error) else type(error).__name__
        print(f"bench: {self.what} {self.path(key)} not used ({reason}); {self.retrain}", file=sys.stderr, flush=True)

    def save(self, key: dict[str, Any], payload: dict[str, Any]) -> None:
        """Keep ``payload`` under ``key``; a cache that cannot be written costs the reuse, never the evaluation."""
        import torch

        path = self.path(key)
        partial = path.with_name(f"{path.stem}.{os.getpid()}.partial")  # two runs saving at once never mix
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            torch.save({"key": self.key_text(key), **payload}, partial)
            partial.replace(path)  # never a half-written entry under the key's name
        except OSError as error:
            partial.unlink(missing_ok=True)
            print(
                f"bench: {self.what} {path} not written ({error.strerror or error}); the next run trains it again",
                file=sys.stderr,
                flush=True,
            )
