"""Experiment notes: ``notes/notes.txt`` and ``notes/issues.txt``, one timestamped line each.

Each line reads ``<UTC time>  step <N>  <text>``, where N is the experiment's latest step
(its newest checkpoint or metrics.jsonl line, whichever is later), so a note can be placed
on the training curve later.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from backlm.errors import UserError
from backlm.experiment.folder import Experiment, utcnow

_TAIL_BYTES = 65536


def latest_step(exp: Experiment) -> int:
    """The experiment's latest step: newest checkpoint or last metrics.jsonl line."""
    steps = exp.checkpoint_steps()
    best = steps[-1] if steps else 0
    path = exp.metrics_path
    if path.is_file():
        with open(path, "rb") as f:
            # Only the tail: metrics.jsonl of a long run is large, its last lines are enough.
            f.seek(max(0, f.seek(0, os.SEEK_END) - _TAIL_BYTES))
            for line in reversed(f.read().splitlines()):
                try:
                    return max(best, int(json.loads(line)["step"]))
                except (ValueError, KeyError, TypeError):
                    continue
    return best


def add_note(exp: Experiment, text: str, issue: bool = False) -> tuple[Path, str]:
    """Append one note (or issue) line; returns the file and the line written."""
    body = " ".join(text.split())  # one line per note, whatever the shell passed
    if not body:
        raise UserError('the note is empty: give its text, e.g. backlm note EXP "lr too high"')
    path = exp.notes_path(issue)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = f"{utcnow()}  step {latest_step(exp)}  {body}"
    with open(path, "a", encoding="utf-8") as f:
        f.write(line + "\n")
        f.flush()
        os.fsync(f.fileno())
    return path, line
