"""The light live view: Weights & Biases, offline unless an API key is configured.

wandb must never fail a run: an import error, an init error or a log error prints one warning
and logging goes on without it. Its files go to ``<experiment>/wandb/``, one folder per
session (``offline-run-<time>-<id>`` offline), which ``wandb sync <experiment>/wandb/offline-run-*``
uploads later.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from backlm.logs.base import MetricLogger, NullLogger

if TYPE_CHECKING:
    from backlm.callbacks import RunInfo


def has_api_key() -> bool:
    """Whether wandb credentials are configured (``WANDB_API_KEY`` or netrc); no network."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        import wandb
        from wandb.sdk.lib import wbauth

        return bool(wbauth.read_netrc_auth(host=wandb.Settings().base_url))
    except Exception:  # wandb internals move between versions: fall back to the netrc itself
        import netrc

        try:
            return netrc.netrc().authenticators("api.wandb.ai") is not None
        except (OSError, netrc.NetrcParseError):
            return False


def resolve_mode(mode: str) -> str:
    """``auto`` → ``$WANDB_MODE`` if set, else online with an API key and offline without."""
    if mode != "auto":
        return mode
    env = os.environ.get("WANDB_MODE", "").lower()
    if env in ("online", "offline"):
        return env
    if env in ("disabled", "off", "dryrun"):
        return "off" if env != "dryrun" else "offline"
    return "online" if has_api_key() else "offline"


class WandbLogger(MetricLogger):
    """Forwards numeric records to a wandb run; the first error turns it off with a warning."""

    def __init__(self, wb_run: Any, warn: Callable[[str], None]) -> None:
        self._run = wb_run
        self._warn = warn

    def log(self, step: int, record: dict[str, Any]) -> None:
        if self._run is None:
            return
        data = {k: v for k, v in record.items()
                if isinstance(v, int | float) and not isinstance(v, bool)}
        try:
            self._run.log(data, step=step)
        except Exception as exc:
            self._disable(f"wandb.log failed ({_short(exc)})")

    def close(self) -> None:
        if self._run is None:
            return
        try:
            self._run.finish()
        except Exception as exc:
            self._warn(f"warning: wandb.finish failed ({_short(exc)}); its files may be partial")
        self._run = None

    def _disable(self, why: str) -> None:
        self._warn(f"warning: {why}; training goes on without wandb")
        run, self._run = self._run, None
        try:
            run.finish()
        except Exception:
            pass  # already broken; the warning above said so


def open_wandb(run: RunInfo, warn: Callable[[str], None]) -> MetricLogger:
    """A wandb logger for ``run`` per ``cfg.log.wandb``, or a NullLogger (off or failed);
    ``warn`` tells the user when wandb fails."""
    mode = resolve_mode(run.cfg.log.wandb)
    if mode == "off":
        return NullLogger()
    os.environ.setdefault("WANDB_SILENT", "true")
    try:
        import wandb

        from backlm.config import to_dict

        wb_run = wandb.init(
            project=run.cfg.log.wandb_project, name=run.exp.id, id=run.exp.id,
            dir=str(run.exp.path), config=to_dict(run.cfg), mode=mode, resume="allow",
            settings=wandb.Settings(silent=True, console="off", save_code=False),
            **run_labels(run),
        )
    except Exception as exc:  # never fail a run for the live view (ImportError included)
        warn(f"warning: wandb unavailable ({_short(exc)}); training goes on without it")
        return NullLogger()
    return WandbLogger(wb_run, warn)


def run_labels(run: RunInfo) -> dict[str, Any]:
    """How a run is found among others in wandb: tags ``direction:…``, ``phase:…``,
    ``depth:…``; ``group``, the lineage's root experiment (a base run and every phase branched
    from it side by side); ``job_type``, the phase."""
    cfg = run.cfg
    link = run.exp.parent_link() or {}
    chain = link.get("chain_ids")
    # the ids the branch recorded, root first: the root's folder may be gone or elsewhere
    root = chain[0] if isinstance(chain, list) and chain and isinstance(chain[0], str) \
        else run.exp.id
    return {"tags": [f"direction:{cfg.data.direction}", f"phase:{cfg.phase}",
                     f"depth:{cfg.model.depth}"], "group": root, "job_type": cfg.phase}


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
