"""Where a sweep keeps its files, beside its members under the experiments root::

    experiments/sweeps/<sweep id>/
      sweep.json   the grid, the command, each member's status and experiments
      SWEEP.md  scaling.png   the sweep's comparison
      comparison/  ``backlm compare`` of the members

The one module that spells this layout (the experiment folder's own is :mod:`folder`'s); the
members themselves are ordinary experiments in the experiments root.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from backlm.experiment.folder import check_id

SWEEPS = "sweeps"


@dataclass(frozen=True)
class SweepFolder:
    """One sweep's folder: ``<experiments root>/sweeps/<id>/``."""

    path: Path

    @property
    def id(self) -> str:
        return self.path.name

    @property
    def record(self) -> Path:
        """``sweep.json``: the grid, the command, each member's status (JSON)."""
        return self.path / "sweep.json"

    @property
    def summary_path(self) -> Path:
        """``SWEEP.md``: gaps per size, the bidirectional model's cost, 5CAT."""
        return self.path / "SWEEP.md"

    @property
    def scaling_figure(self) -> Path:
        """``scaling.png``: the gap against parameters."""
        return self.path / "scaling.png"

    @property
    def comparison_dir(self) -> Path:
        """``comparison/``: ``backlm compare`` of the members."""
        return self.path / "comparison"


def sweeps_root(root: Path) -> Path:
    """The folder holding every sweep of the experiments folder ``root``."""
    return Path(root) / SWEEPS


def sweep_folder(root: Path, sweep_id: str) -> SweepFolder:
    """Where the sweep ``sweep_id`` of the experiments folder ``root`` keeps its files."""
    return SweepFolder(sweeps_root(root) / check_id(sweep_id))


def sweep_members(root: Path) -> dict[str, list[str]]:
    """Every sweep under ``root`` (by id, sorted) with its members' experiment ids in run
    order, read from each ``sweep.json`` (an unreadable one lists no members)."""
    folder = sweeps_root(root)
    if not folder.is_dir():
        return {}
    out = {}
    for path in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        try:
            data = json.loads(SweepFolder(path).record.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        members = data.get("members") if isinstance(data, dict) else None
        out[path.name] = [str(e) for m in members or [] if isinstance(m, dict)
                          for e in (m.get("experiments") or [])]
    return out
