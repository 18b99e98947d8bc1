"""Where a run came from, as its metadata records it: the code's commit, the command line,
library versions and the host."""

from __future__ import annotations

import contextlib
import platform
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any


def git_commit() -> str | None:
    """Commit of the backlm source tree, if it is a git checkout."""
    with contextlib.suppress(Exception):
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
            capture_output=True, text=True, timeout=5,
        )
        if out.returncode == 0:
            return out.stdout.strip()
    return None


def environment() -> dict[str, Any]:
    """Versions and host recorded in the metadata (torch is imported by the caller)."""
    import torch

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "host": socket.gethostname(),
        "platform": platform.platform(),
    }


def command_line() -> str:
    """The command line of this process, for the metadata."""
    return " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])
