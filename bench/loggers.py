"""Weights & Biases logging that never waits for a network it does not have.

``mode="auto"`` (the default) goes online only when credentials are configured *and* the W&B
host answers within a second; otherwise it logs offline into the run folder (upload later with
``wandb sync``). ``WANDB_MODE`` in the environment, when set, is the user's explicit choice and wins.

In a log file (stderr not a terminal) W&B is quiet: no run-history and summary tables at the end, whose
values the run's own summary and record hold; the offline folder and ``wandb sync`` hint are in bench's
summary. A run resumed from a checkpoint (``bench fit --ckpt_path``) continues the W&B run that wrote it:
the logger keeps the run's id in ``wandb_run.json`` beside its checkpoints.
"""

from __future__ import annotations

import json
import netrc
import os
import re
import socket
import sys
from pathlib import Path
from typing import Any, Iterable, Literal, Optional
from urllib.parse import urlparse

from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only

from bench.errors import BenchError

Mode = Literal["auto", "online", "offline", "disabled"]

#: beside a run's checkpoints: the W&B run that wrote them, for a resumed run to continue
RUN_FILE = "wandb_run.json"
_RUN_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")


def _has_credentials(host: str) -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def _reachable(host: str, port: int = 443, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def resolve_mode(mode: Mode) -> str:
    """The W&B mode to run in: the requested one, or for ``auto`` online only if it can work now."""
    if mode not in ("auto", "online", "offline", "disabled"):
        raise BenchError(f"unknown W&B mode '{mode}'; choose auto, online, offline or disabled")
    if mode != "auto":
        return mode
    if os.environ.get("WANDB_MODE"):
        return {"dryrun": "offline", "run": "online"}.get(os.environ["WANDB_MODE"], os.environ["WANDB_MODE"])
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or "api.wandb.ai"
    return "online" if _has_credentials(host) and _reachable(host) else "offline"


class BenchWandbLogger(WandbLogger):
    """Lightning's WandbLogger with a ``mode`` that degrades to offline instead of hanging.

    Args:
        project / entity / name / tags: as in W&B.
        save_dir: folder for W&B's local files (offline runs live here until synced).
        mode: ``auto``, ``online``, ``offline`` or ``disabled``.
    """

    def __init__(
        self,
        project: str = "bench",
        entity: Optional[str] = None,
        name: Optional[str] = None,
        save_dir: str = "runs",
        mode: Mode = "auto",
        tags: Optional[list[str]] = None,
        log_model: bool = False,
        **kwargs: Any,
    ) -> None:
        self.mode = resolve_mode(mode)
        os.makedirs(save_dir, exist_ok=True)
        # jsonargparse passes every wandb.init argument, unset ones as None: those would override Lightning's
        # own choices (resume="allow") and ours (the settings); wandb.init's defaults are None anyway
        kwargs = {key: value for key, value in kwargs.items() if value is not None}
        kwargs.setdefault("settings", _quiet_settings(log_file=not sys.stderr.isatty()))  # where W&B writes
        super().__init__(
            project=project,
            entity=entity,
            name=name,
            save_dir=save_dir,
            tags=tags,
            log_model=log_model and self.mode == "online",
            mode=self.mode,
            **kwargs,
        )
        self._wandb_init.pop("anonymous", None)  # deprecated in W&B; it only warns

    def continue_run(self, ckpt_path: Optional[str]) -> Optional[str]:
        """Before the run starts: continue the W&B run whose id is saved beside ``ckpt_path``, if any.

        An id given explicitly (``--trainer.logger.id``) wins. Returns the id continued, or None.
        """
        if self._experiment is not None or self._wandb_init.get("id") or not ckpt_path or not Path(ckpt_path).is_file():
            return None  # started already, chosen by the user, or a keyword such as `last` (no folder to look in)
        run_id = saved_run_id(Path(ckpt_path).parent)
        if run_id is not None:  # resumed as Lightning's resume="allow" (or the user's `resume`) says
            self._wandb_init["id"] = self._id = run_id
        return run_id

    @rank_zero_only
    def after_save_checkpoint(self, checkpoint_callback: Any) -> None:
        super().after_save_checkpoint(checkpoint_callback)
        folder = getattr(checkpoint_callback, "dirpath", None)
        run_id = getattr(self._experiment, "id", None)
        if folder and run_id and self.mode != "disabled":
            Path(folder).mkdir(parents=True, exist_ok=True)
            (Path(folder) / RUN_FILE).write_text(json.dumps({"id": run_id, "project": self._project}) + "\n")

    def reference(self) -> dict[str, Any]:
        """What a result record keeps to find this run again."""
        run = self.experiment
        return {
            "project": self._project,
            "entity": getattr(run, "entity", None),
            "run_id": getattr(run, "id", None),
            "url": getattr(run, "url", None) if self.mode == "online" else None,
            "mode": self.mode,
            "dir": getattr(run, "dir", None) if self.mode != "disabled" else None,
        }


def saved_run_id(folder: Path) -> Optional[str]:
    """The W&B run id saved in ``folder`` (a run's checkpoint folder), or None if there is none or it is malformed."""
    try:
        run_id = json.loads((Path(folder) / RUN_FILE).read_text()).get("id")
    except (OSError, ValueError, AttributeError):
        return None
    return run_id if isinstance(run_id, str) and _RUN_ID.fullmatch(run_id) else None


def continue_runs(loggers: Iterable[Any], ckpt_path: Optional[str]) -> None:
    """``bench fit --ckpt_path``: each bench W&B logger continues the run that wrote the checkpoint."""
    for logger in loggers:
        if isinstance(logger, BenchWandbLogger):
            logger.continue_run(ckpt_path)


def _quiet_settings(log_file: bool):
    import wandb

    # no console capture, no code or git upload, no waiting on a server it cannot reach; in a log file no
    # end-of-run tables (quiet), in a terminal W&B's usual lines
    quiet = {"quiet": True} if log_file else {}
    return wandb.Settings(console="off", save_code=False, disable_git=True, init_timeout=30, **quiet)
