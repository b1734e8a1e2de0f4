"""Trained attackers kept on disk for a rerun, another attack setting or another sweep point to reuse: the keyed-file
cache of the shadow pools (:class:`~bench.attacks.shadow_pool.ShadowCache`) and of the learned decoders
(:class:`DecoderCache`, :func:`load_or_fit`).

One file per key, ``<SHA-256 of the key>.pt``: the key itself (JSON) beside the payload. A file is used only when its
stored key equals the key asked for, in full, and it loads as plain tensors and values
(``torch.load(weights_only=True)``): nothing in it chooses code to run. Anything else means train again, with one line
saying why. Writes are atomic, so two runs saving the same key at once never leave a mixed file.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import sys
import warnings
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Callable, Optional, Union

import torch
from torch import Tensor, nn

from bench.attacks.training import TrainingReport


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


#: the version of how a fitted decoder is stored: a change to it retires every cached decoder
DECODER_FORMAT = 1


class DecoderCache(KeyedCache):
    """Fitted decoders on disk (:class:`~bench.attacks.cache.KeyedCache`), for a rerun, another attack setting or
    another method with the same release (DCM, DCMG and DCMG-O release the same measurements) to reuse.

    The key is the fit's (:func:`load_or_fit`; for the feature inversion
    :meth:`~bench.attacks.feature_inversion.FeatureInversion._fit_key`: the
    decoder and its budget, the client, the (released, image) pairs, the device, the generator's state) with the code
    that trains the decoder and torch's version, so a loaded decoder is the one the fit would train; the file holds its
    state, training report and the generator's state after the fit, which is restored, so loading never changes a
    result.
    """

    def __init__(self, folder: Path) -> None:
        super().__init__(folder, "decoder cache", "training that decoder again")
        self.loaded = self.trained = 0

    @staticmethod
    def key(module, fit_key: str) -> dict[str, Any]:
        import bench

        return {
            "format": DECODER_FORMAT,
            "bench": bench.__version__,
            "code": code_fingerprint(*method_sources(module)),  # a method may register its own decoder
            "torch": torch.__version__,
            "fit": fit_key,
        }


_DECODER_CACHE: ContextVar[Optional[DecoderCache]] = ContextVar("bench_decoder_cache", default=None)


@contextlib.contextmanager
def caching_decoders(folder: Optional[Union[str, Path]]):
    """Within the block, every fitted decoder is kept in ``folder`` and loaded from it when its key matches (None: no
    cache); yields the :class:`DecoderCache` (its ``loaded`` and ``trained`` counts) or None."""
    cache = None if folder is None else DecoderCache(Path(folder))
    token = _DECODER_CACHE.set(cache)
    try:
        yield cache
    finally:
        _DECODER_CACHE.reset(token)


def load_or_fit(
    module,
    key: str,
    generator: torch.Generator,
    build: Callable[[], tuple[nn.Module, str]],
    fit: Callable[[nn.Module], TrainingReport],
) -> tuple[nn.Module, str, TrainingReport]:
    """A learned decoder, fitted once per ``key`` across runs: loaded from the evaluation's decoder cache
    (:func:`caching_decoders`) when it holds ``key``, else ``build()`` (the decoder, its initial weights drawn from
    ``generator``, and its name) then ``fit(decoder)`` (its training report), and kept in the cache.

    ``key`` must determine the fit: the decoder's settings, its training data, the device and ``generator``'s state
    (:func:`digest_of` of them); the cache adds the code and torch's versions. Loading leaves ``generator`` in the state
    the fit would have left it in, so a loaded decoder never changes a result.
    """
    cache = _DECODER_CACHE.get()
    full_key = None if cache is None else DecoderCache.key(module, key)
    before = generator.get_state()
    stored = None if cache is None else cache.load(full_key)
    if stored is not None:
        try:
            with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the fit warned already, if the mirror decoder fell back
                decoder, name = build()
            if stored["decoder_used"] != name:
                raise ValueError(f"it holds a {stored['decoder_used']} decoder, the fit builds {name}")
            decoder.load_state_dict(stored["state"])  # strict: every tensor, of every shape
            report = TrainingReport(**stored["report"])
            if not isinstance(stored["generator"], Tensor) or stored["generator"].dtype != torch.uint8:
                raise ValueError("its generator state is not a byte tensor")
            generator.set_state(stored["generator"])
            cache.loaded += 1
            return decoder.eval(), name, report
        except Exception as error:  # a file is never trusted: any problem means train again
            cache.refuse(full_key, error)
            generator.set_state(before)
    decoder, name = build()
    report = fit(decoder)
    if cache is not None:
        cache.trained += 1
        state = {tensor_name: value.cpu() for tensor_name, value in decoder.state_dict().items()}
        payload = {"decoder_used": name, "state": state, "report": report.as_details()}
        cache.save(full_key, {**payload, "generator": generator.get_state()})
    return decoder, name, report


def digest_of(*parts: Any) -> str:
    """SHA-256 over tensors (dtype, shape and bytes) and reprs of everything else."""
    digest = hashlib.sha256()
    for part in parts:
        if isinstance(part, Tensor):
            part = part.detach().cpu().contiguous()
            digest.update(f"{part.dtype}{tuple(part.shape)}".encode())
            digest.update(part.reshape(-1).view(torch.uint8).numpy().tobytes())
        else:
            digest.update(repr(part).encode())
        digest.update(b"|")
    return digest.hexdigest()
