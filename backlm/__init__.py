"""backlm: language models that read and write forward, backward or both ways.

``backlm.load(experiment_or_folder)`` is the Python API (:mod:`backlm.api`): a trained model
that generates, chats and scores in its direction, reading and writing reading-order text.
Importing the package loads nothing else: ``load`` and ``Model`` come from :mod:`backlm.api`
on first use (every module imports ``__version__`` from here, so the root imports none).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

__all__ = ["Model", "__version__", "load"]


def __getattr__(name: str) -> Any:
    if name in ("load", "Model"):
        return getattr(importlib.import_module("backlm.api"), name)
    raise AttributeError(f"module 'backlm' has no attribute {name!r}")
