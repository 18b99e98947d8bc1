"""Where backlm keeps data and experiments."""

from __future__ import annotations

import os
import re
from pathlib import Path

from backlm.errors import UserError

DEFAULT_DATASET = "pydocs"
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def backlm_home() -> Path:
    """Root of backlm's cache: ``$BACKLM_HOME`` or ``~/.cache/backlm``."""
    return Path(os.environ.get("BACKLM_HOME") or Path.home() / ".cache" / "backlm")


def data_root() -> Path:
    """Folder holding one sub-folder per dataset."""
    return backlm_home() / "data"


def dataset_dir(name: str = DEFAULT_DATASET) -> Path:
    """Folder of one dataset's shards (``$BACKLM_HOME/data/<name>``); a name that is not a
    plain folder name raises :class:`UserError`."""
    if not _NAME_RE.fullmatch(name):
        raise UserError(f"invalid dataset name {name!r}: use letters, digits, '.', '_' and '-'")
    return data_root() / name


def experiments_root() -> Path:
    """Default output folder: ``$BACKLM_EXPERIMENTS`` or ``./experiments``."""
    return Path(os.environ.get("BACKLM_EXPERIMENTS") or "experiments")
