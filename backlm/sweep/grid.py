"""A sweep's grid: the axes parsed and checked, the members' ids and run order, and the
``sweep.json`` record with its identity check.

A member is one cell of directions × depths × seeds, named ``<id>-d<depth>-<direction>-s<seed>``
(a chain of phases adds the chain's ``-<phase>`` to each of its experiments). Members run seed by
seed, size by size, every direction of a size together: the first members done are the
directions of the smallest size with the first seed (the first comparison), then the larger
sizes (the first scaling figure), then the other seeds (the intervals over seeds).

A sweep is defined by its grid, preset, ``--set`` overrides, phases and steps; a rerun under the
same id must ask for the same (the record names the first field that differs), while the command
line itself is only recorded.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backlm.direction import Direction
from backlm.errors import UserError
from backlm.experiment import folder as xp
from backlm.experiment.sweeps import SweepFolder

SCHEMA = 1
# The identity of a sweep, in the order a difference is named.
FIELDS = ("directions", "depths", "seeds", "preset", "overrides", "phases", "max_steps")
STATUSES = ("pending", "running", "interrupted", "failed", "finished")


@dataclass(frozen=True)
class Grid:
    """What a sweep trains: the axes, and the settings every member shares."""

    sweep_id: str
    directions: tuple[Direction, ...]
    depths: tuple[int, ...]
    seeds: tuple[int, ...]
    preset: str | None = None
    overrides: tuple[str, ...] = ()
    phases: tuple[str, ...] = ("base",)
    max_steps: int | None = None  # None: the preset's

    def identity(self) -> dict[str, Any]:
        """The fields that define the sweep, JSON-ready (what ``sweep.json`` keeps as its grid)."""
        return {"directions": [str(d) for d in self.directions], "depths": list(self.depths),
                "seeds": list(self.seeds), "preset": self.preset,
                "overrides": list(self.overrides), "phases": list(self.phases),
                "max_steps": self.max_steps}

    def members(self) -> list[Member]:
        """Every member in run order: seed by seed, size by size, each size's directions
        together."""
        return [Member(self.sweep_id, d, depth, seed, self.phases)
                for seed in self.seeds for depth in self.depths for d in self.directions]


@dataclass(frozen=True)
class Member:
    """One cell of the grid."""

    sweep_id: str
    direction: Direction
    depth: int
    seed: int
    phases: tuple[str, ...] = ("base",)

    @property
    def id(self) -> str:
        """``<sweep>-d<depth>-<direction>-s<seed>``: the experiment id of a one-phase member,
        the chain's prefix of a longer one."""
        return f"{self.sweep_id}-d{self.depth}-{self.direction}-s{self.seed}"

    @property
    def experiments(self) -> list[str]:
        """The member's experiment ids, first phase first (a chain names each
        ``<prefix>-<phase>``)."""
        if len(self.phases) == 1:
            return [self.id]
        return [f"{self.id}-{p}" for p in self.phases]

    @property
    def final(self) -> str:
        """The experiment of the member's last phase: the one compared and checked."""
        return self.experiments[-1]


# --- parsing ----------------------------------------------------------------------------------


def _items(text: str | None, flag: str, example: str) -> list[str]:
    if text is None:
        raise UserError(f"{flag} is missing: give comma-separated values, e.g. {flag} "
                        f"{example}")
    items = [x.strip() for x in str(text or "").split(",")]
    if not any(items):
        raise UserError(f"{flag} is empty: give comma-separated values, e.g. {flag} {example}")
    if not all(items):
        raise UserError(f"{flag} {text!r} has an empty value: give comma-separated values, "
                        f"e.g. {flag} {example}")
    return items


def _unique(values: Sequence[Any], flag: str) -> tuple[Any, ...]:
    seen: set[Any] = set()
    for v in values:
        if v in seen:
            raise UserError(f"{flag} names {v} twice: give each value once")
        seen.add(v)
    return tuple(values)


def parse_ints(text: str, flag: str, least: int, example: str) -> tuple[int, ...]:
    """Comma-separated whole numbers, each at least ``least`` and given once."""
    out = []
    for item in _items(text, flag, example):
        try:
            value = int(item)
        except ValueError:
            raise UserError(f"{flag}: {item!r} is not a whole number (e.g. {flag} "
                            f"{example})") from None
        if value < least:
            raise UserError(f"{flag}: {value} is below {least} (e.g. {flag} {example})")
        out.append(value)
    return _unique(out, flag)


def items(text: str | None, flag: str, example: str) -> list[str]:
    """A comma list as typed, each value stripped; an empty list or value is refused."""
    return _items(text, flag, example)


def parse_grid(sweep_id: str, directions: Sequence[Direction], depths: str, seeds: str, *,
               preset: str | None = None, overrides: Sequence[str] = (),
               phase: str | None = None, max_steps: int | None = None) -> Grid:
    """The grid of ``backlm sweep`` from its options (the directions parsed at the command
    line's edge, the rest as typed); every mistake is one line."""
    from backlm.train.phases import parse_chain

    if not str(sweep_id or "").strip():
        raise UserError("--id is empty: name the sweep, e.g. --id aot")
    xp.check_id(sweep_id)
    if max_steps is not None and max_steps < 1:
        raise UserError(f"--max-steps must be at least 1, got {max_steps}")
    if not directions:
        raise UserError("--directions is empty: give comma-separated values, e.g. "
                        "--directions forward,backward")
    grid = Grid(sweep_id, _unique(list(directions), "--directions"), parse_ints(depths, "--depths", 1, "2,4"),
                parse_ints(seeds, "--seeds", 0, "1,2"), preset or None, tuple(overrides),
                tuple(parse_chain(phase)) if phase else ("base",), max_steps)
    for member in grid.members():
        for exp_id in member.experiments:
            try:
                xp.check_id(exp_id)
            except UserError:
                raise UserError(f"member id {exp_id} is not a valid experiment id (at most "
                                f"{xp.MAX_ID} characters): choose a shorter --id") from None
    return grid


# --- sweep.json -------------------------------------------------------------------------------


def new_record(grid: Grid, command: str) -> dict[str, Any]:
    """A new sweep's record: the grid, the command, every member pending."""
    return {"schema": SCHEMA, "id": grid.sweep_id, "grid": grid.identity(), "command": command,
            "created": xp.utcnow(), "updated": xp.utcnow(),
            "members": [{"id": m.id, "direction": str(m.direction), "depth": m.depth,
                         "seed": m.seed, "experiments": m.experiments, "status": "pending",
                         "fivecat": None} for m in grid.members()]}


def read_record(folder: SweepFolder) -> dict[str, Any] | None:
    """The sweep's record, None when it has none yet; a corrupt one is a UserError."""
    if not folder.record.is_file():
        return None
    data = xp.read_json(folder.record, f"sweep {folder.id}")
    if not isinstance(data, dict) or not isinstance(data.get("grid"), dict) or not isinstance(
            data.get("members"), list):
        raise UserError(f"sweep {folder.id}: {folder.record} is not a sweep record; move it "
                        "away or choose another --id")
    return data


def grid_of(record: dict[str, Any]) -> Grid:
    """The grid a record was made for (``--compare`` without axes)."""
    g = record["grid"]
    try:
        return Grid(str(record["id"]), tuple(Direction.parse(d) for d in g["directions"]),
                    tuple(int(x) for x in g["depths"]), tuple(int(x) for x in g["seeds"]),
                    g.get("preset"), tuple(g.get("overrides") or ()),
                    tuple(g.get("phases") or ("base",)), g.get("max_steps"))
    except (KeyError, TypeError, ValueError, UserError):
        raise UserError(f"sweep {record.get('id')}: its sweep.json grid is unreadable; move "
                        "the file away or choose another --id") from None


def check_same(record: dict[str, Any], grid: Grid) -> None:
    """A rerun must ask for the sweep as recorded: the first field that differs is refused."""
    old, new = record["grid"], grid.identity()
    for name in FIELDS:
        if old.get(name) != new[name]:
            raise UserError(f"sweep {grid.sweep_id} exists with {name} {_shown(old.get(name))}, "
                            f"but this command asks for {_shown(new[name])}: rerun it with the "
                            "same options (or only --id and --compare), or choose another --id")


def _shown(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(str(v) for v in value) or "(none)"
    return "(preset default)" if value is None else str(value)


def set_status(record: dict[str, Any], member_id: str, **fields: Any) -> None:
    """Change one member's entry (status, 5CAT verdict) in the record, in memory; the
    record's time moves only when something changed."""
    for entry in record["members"]:
        if entry["id"] == member_id and any(entry.get(k) != v for k, v in fields.items()):
            entry.update(fields)
            record["updated"] = xp.utcnow()


def write_record(folder: SweepFolder, record: dict[str, Any]) -> None:
    """Write the record atomically (a reader sees the old one or the new one whole); a record
    equal to the one on disk is not written again (a finished sweep's rerun changes nothing)."""
    import json

    from backlm import atomic

    try:
        if json.loads(folder.record.read_text(encoding="utf-8")) == record:
            return
    except (OSError, ValueError):
        pass
    folder.path.mkdir(parents=True, exist_ok=True)
    atomic.write_json(folder.record, record)


def check_members_free(root: Path, grid: Grid, record: dict[str, Any] | None) -> None:
    """The sweep's id is not an experiment's, and no member id is taken by something that is
    not this sweep's member (an experiment made otherwise, or a folder backlm did not make)."""
    root = Path(root)
    if (root / grid.sweep_id).exists():
        raise UserError(f"sweep id {grid.sweep_id} is the id of an experiment (or folder) in "
                        f"{root}: choose another --id")
    ours = {e for m in (record or {}).get("members", []) for e in m.get("experiments") or ()}
    for member in grid.members():
        for exp_id in member.experiments:
            path = root / exp_id
            if (path.exists() or path.is_symlink()) and exp_id not in ours:
                raise UserError(f"{path} already exists and is not a member of sweep "
                                f"{grid.sweep_id}: choose another --id (or move it away)")
