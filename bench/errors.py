"""The one exception type the CLI turns into a single line of advice and a non-zero exit."""

from __future__ import annotations

import argparse
import stat
from pathlib import Path
from typing import NoReturn, Optional


class BenchError(Exception):
    """A user-facing error: the message says what was wrong and what to do about it."""

    exit_code = 1


class UsageError(BenchError):
    """A command line the parser refused (exit 2, as argparse and jsonargparse exit)."""

    exit_code = 2


class CommandLineParser(argparse.ArgumentParser):
    """An argparse parser whose errors are one ``bench: error:`` line (via :class:`UsageError`), not usage and exit."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message} ({self.prog} --help lists the options)")


def writable_folder(folder: str | Path, option: str) -> None:
    """``folder`` exists (made if need be) and takes a file now, or one error naming the option that chose it:
    found before the work (training, an evaluation), not when its results are written."""
    import tempfile

    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise BenchError(
            f"{option} {folder} is not writable ({error.strerror or error}); give a folder you can write to"
        ) from None


def regular_file(path: str | Path, what: str) -> Path:
    """``path`` if it is a regular file; a FIFO or device is refused unopened (reading one blocks or never ends)."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except OSError as error:
        raise BenchError(f"cannot read {what} {path}: {error.strerror or error}") from None
    kind = irregular_kind(mode)
    if kind is not None:
        raise BenchError(f"{what} {path} is {kind}, not a regular file; give the path of a file")
    return path


def irregular_kind(mode: int) -> Optional[str]:
    """What a file of this ``st_mode`` is when it is not a regular file ("a FIFO (named pipe)", ...), else None:
    reading a FIFO blocks, reading a device may never end, so neither is opened as a file of data."""
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "a socket" if stat.S_ISSOCK(mode) else "not a regular file"


def class_path(obj: object) -> str:
    """The import path of ``obj``'s class, as configs and checkpoints name it."""
    cls = obj if isinstance(obj, type) else type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"
