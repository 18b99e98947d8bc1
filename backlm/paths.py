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


def peak_cache_file() -> Path:
    """Where measured CPU matmul peaks are kept between runs (:func:`backlm.hardware.cpu_peak`)."""
    return backlm_home() / "cpu_peak.json"


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


def check_writable(folder: Path, what: str, fix: str) -> None:
    """Raise :class:`UserError` unless ``folder`` is, or can be created as, a writable folder.

    Nothing is left behind: the nearest existing ancestor is probed with a temporary file
    that is removed at once (permission bits alone do not tell, e.g. for root or /proc).
    """
    import tempfile

    folder = Path(folder).absolute()
    probe = folder
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise UserError(f"{what} {folder} cannot be a folder: {probe} is a file; {fix}")
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise UserError(f"{what} {folder} is not writable ({reason} in {probe}); {fix}") from None
