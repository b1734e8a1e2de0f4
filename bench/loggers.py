"""Weights & Biases logging that never waits for a network it does not have.

``mode="auto"`` (the default) goes online only when credentials are configured *and* the W&B
host answers within a second; otherwise it logs offline into the run folder (upload later with
``wandb sync``). ``WANDB_MODE`` in the environment, when set, is the user's explicit choice and wins.
"""

from __future__ import annotations

import netrc
import os
import socket
from typing import Any, Literal, Optional
from urllib.parse import urlparse

from lightning.pytorch.loggers import WandbLogger

from bench.errors import BenchError

Mode = Literal["auto", "online", "offline", "disabled"]


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

    def __init__(self, project: str = "bench", entity: Optional[str] = None, name: Optional[str] = None,
                 save_dir: str = "runs", mode: Mode = "auto", tags: Optional[list[str]] = None,
                 log_model: bool = False, **kwargs: Any) -> None:
        self.mode = resolve_mode(mode)
        os.makedirs(save_dir, exist_ok=True)
        kwargs.setdefault("settings", _quiet_settings())
        super().__init__(project=project, entity=entity, name=name, save_dir=save_dir, tags=tags,
                         log_model=log_model and self.mode == "online", mode=self.mode, **kwargs)
        self._wandb_init.pop("anonymous", None)  # deprecated in W&B; it only warns

    def reference(self) -> dict[str, Any]:
        """What a result record keeps to find this run again."""
        run = self.experiment
        return {"project": self._project, "entity": getattr(run, "entity", None), "run_id": getattr(run, "id", None),
                "url": getattr(run, "url", None) if self.mode == "online" else None, "mode": self.mode,
                "dir": getattr(run, "dir", None) if self.mode != "disabled" else None}


def _quiet_settings():
    import wandb

    # no console capture, no code or git upload, no waiting on a server it cannot reach
    return wandb.Settings(console="off", save_code=False, disable_git=True, silent=True, init_timeout=30)
