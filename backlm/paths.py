"""Where backlm keeps data and experiments."""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_DATASET = "pydocs"


def backlm_home() -> Path:
    """Root of backlm's cache: ``$BACKLM_HOME`` or ``~/.cache/backlm``."""
    return Path(os.environ.get("BACKLM_HOME") or Path.home() / ".cache" / "backlm")


def data_root() -> Path:
    """Folder holding one sub-folder per dataset."""
    return backlm_home() / "data"


def dataset_dir(name: str = DEFAULT_DATASET) -> Path:
    """Folder of one dataset's shards (``$BACKLM_HOME/data/<name>``)."""
    return data_root() / name


def experiments_root() -> Path:
    """Default output folder: ``$BACKLM_EXPERIMENTS`` or ``./experiments``."""
    return Path(os.environ.get("BACKLM_EXPERIMENTS") or "experiments")
