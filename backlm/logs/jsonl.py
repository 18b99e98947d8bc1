"""``metrics.jsonl``: one JSON object per logged step, always written."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

from backlm import atomic
from backlm.logs.base import MetricLogger
from backlm.missing import json_ready


class JsonlLogger(MetricLogger):
    """Appends one line per record; a resumed run first drops lines past its checkpoint."""

    def __init__(self, path: Path, resume_step: int = 0) -> None:
        self.path = Path(path)
        truncate(self.path, resume_step)
        self._f = open(self.path, "a", encoding="utf-8")

    def log(self, step: int, record: dict[str, Any]) -> None:
        line = json.dumps(json_ready({"step": step, **record}), allow_nan=False)
        self._f.write(line + "\n")
        self._f.flush()  # cheap, and a killed run keeps every finished step

    def flush(self) -> None:
        self._f.flush()

    def close(self) -> None:
        if not self._f.closed:
            self._f.close()


def truncate(path: Path, last_step: int) -> None:
    """Drop lines written after the checkpoint a resumed run restarts from."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(ValueError):
            if json.loads(line).get("step", 0) <= last_step:
                keep.append(line)
    atomic.write_text(path, "".join(f"{line}\n" for line in keep))


def read(path: Path) -> list[dict[str, Any]]:
    """Every record of a metrics.jsonl file (a torn last line is skipped)."""
    rows = []
    if Path(path).is_file():
        for line in Path(path).read_text().splitlines():
            with contextlib.suppress(ValueError):
                rows.append(json.loads(line))
    return rows
