"""The experiment tree (DESIGN.md §2): ids, folders, metadata, the run lock and lookup.

::

    experiments/<id>/
      config.yaml  metadata.json  parent_link.json  metrics.jsonl  tokenizer/
      checkpoints/step_XXXXXX/  notes/
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backlm import atomic
from backlm.errors import UserError

ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def new_id(phase: str, direction: str, depth: int, now: dt.datetime | None = None) -> str:
    """Default experiment id: ``{phase}_{direction}_d{depth}_{YYYYmmdd-HHMMSS}``."""
    now = now or dt.datetime.now()
    return f"{phase}_{direction}_d{depth}_{now:%Y%m%d-%H%M%S}"


def check_id(exp_id: str) -> str:
    """Reject ids that are not safe folder names."""
    if not ID_RE.match(exp_id):
        raise UserError(
            f"invalid experiment id {exp_id!r}: use letters, digits, '.', '_' and '-' only"
        )
    return exp_id


def utcnow() -> str:
    """Current UTC time, ISO 8601."""
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


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
    """Versions and host recorded in metadata.json (torch is imported by the caller)."""
    import torch

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "host": socket.gethostname(),
        "platform": platform.platform(),
    }


@dataclass
class Experiment:
    """One experiment folder."""

    path: Path

    @property
    def id(self) -> str:
        return self.path.name

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def metadata_path(self) -> Path:
        return self.path / "metadata.json"

    def metadata(self) -> dict[str, Any]:
        """Parsed metadata.json; a missing or corrupt file is a UserError."""
        return read_json(self.metadata_path, what=f"experiment {self.id}")

    def update_metadata(self, **fields: Any) -> dict[str, Any]:
        """Merge ``fields`` into metadata.json atomically."""
        meta = self.metadata() if self.metadata_path.exists() else {}
        meta.update(fields)
        atomic.write_json(self.metadata_path, meta)
        return meta

    def lock(self) -> RunLock:
        """The lock that keeps a second run out of this experiment."""
        return RunLock(self.path / "run.lock")


def read_json(path: Path, what: str = "") -> Any:
    """Read a JSON file, turning absence or corruption into a one-line UserError."""
    label = what or str(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{label}: {path} is missing") from None
    except (OSError, ValueError) as exc:
        raise UserError(f"{label}: {path} is corrupt ({exc})") from None


def create(
    root: Path, exp_id: str, *, config_yaml: str, metadata: dict[str, Any],
    parent_link: dict[str, Any] | None, tokenizer_dir: Path | None = None,
) -> Experiment:
    """Create a new experiment folder; an existing id is a UserError (use --resume)."""
    check_id(exp_id)
    path = Path(root) / exp_id
    if path.exists():
        raise UserError(
            f"experiment {exp_id} already exists in {root}: choose another --id or "
            f"continue it with `backlm train --resume {exp_id}`"
        )
    tmp = Path(root) / f".{exp_id}.creating"
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "checkpoints").mkdir(parents=True)
    (tmp / "notes").mkdir()
    atomic.write_text(tmp / "config.yaml", config_yaml)
    atomic.write_json(tmp / "metadata.json", metadata)
    atomic.write_json(tmp / "parent_link.json", parent_link)
    if tokenizer_dir is not None:
        shutil.copytree(tokenizer_dir, tmp / "tokenizer")
    try:
        os.rename(tmp, path)  # atomic: the folder appears complete or not at all
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise UserError(f"experiment {exp_id} already exists in {root}") from None
    return Experiment(path)


class RunLock:
    """An exclusive lock file naming the holder's pid and host.

    A lock left by a dead process on this host is stale and taken over; a live holder (or a
    holder on another host) makes the second run fail with a UserError.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.held = False

    def acquire(self) -> RunLock:
        me = {"pid": os.getpid(), "host": socket.gethostname(), "since": utcnow()}
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._holder()
                if holder and self._alive(holder):
                    raise UserError(
                        f"experiment {self.path.parent.name} is in use by pid {holder['pid']} "
                        f"on {holder['host']} since {holder.get('since', '?')}; wait for it to "
                        f"finish or use another --id"
                    ) from None
                with contextlib.suppress(FileNotFoundError):
                    self.path.unlink()  # stale lock of a dead run
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            self.held = True
            return self
        raise UserError(f"could not lock experiment {self.path.parent.name}")

    def active(self) -> bool:
        """Whether a live process holds this lock."""
        holder = self._holder()
        return bool(holder) and self._alive(holder)

    def _holder(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None

    @staticmethod
    def _alive(holder: dict[str, Any]) -> bool:
        if holder.get("host") != socket.gethostname():
            return True  # cannot tell: be safe
        try:
            os.kill(int(holder["pid"]), 0)
        except ProcessLookupError:
            return False
        except (PermissionError, ValueError, KeyError, TypeError):
            return True
        return True

    def release(self) -> None:
        if self.held:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
            self.held = False

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


# --- lookup -----------------------------------------------------------------------------------


def all_experiments(root: Path) -> list[Experiment]:
    """Every experiment folder under ``root`` (those with a metadata.json)."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(
        (Experiment(p) for p in root.iterdir() if (p / "metadata.json").is_file()),
        key=lambda e: e.id,
    )


TAG_RE = re.compile(r"^(?:(?P<phase>[a-z]+)_)?d(?P<depth>\d+)_(?P<direction>forward|backward|bidirectional)$")


def find(ref: str, root: Path) -> Experiment:
    """Resolve an id, a path, or a tag like ``d20_bidirectional`` / ``sft_d20_backward``.

    A tag picks the newest experiment of that depth and direction (and phase); several
    equally new candidates, or none, are a UserError listing what exists.
    """
    direct = Path(ref)
    if (direct / "metadata.json").is_file():
        return Experiment(direct)
    by_id = Path(root) / ref
    if (by_id / "metadata.json").is_file():
        return Experiment(by_id)
    m = TAG_RE.match(ref)
    exps = all_experiments(root)
    if m:
        hits = []
        for e in exps:
            meta = e.metadata()
            if (meta.get("direction") == m["direction"]
                    and str(meta.get("depth")) == m["depth"]
                    and (m["phase"] is None or meta.get("phase") == m["phase"])):
                hits.append((meta.get("created", ""), e))
        if hits:
            hits.sort(key=lambda h: h[0])
            newest = [e for c, e in hits if c == hits[-1][0]]
            if len(newest) > 1:
                names = ", ".join(e.id for e in newest)
                raise UserError(f"tag {ref!r} is ambiguous: {names}; name one by id")
            return newest[0]
    known = ", ".join(e.id for e in exps[-8:]) or "none yet"
    raise UserError(f"no experiment {ref!r} in {root} (known: {known}); see `backlm ls`")


def command_line() -> str:
    """The command line of this process, for metadata.json."""
    return " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])


def list_rows(root: Path) -> list[dict[str, Any]]:
    """One summary row per experiment for ``backlm ls`` (reads JSON only, no torch)."""
    from backlm.checkpoint import list_steps

    rows = []
    for e in all_experiments(root):
        try:
            meta = e.metadata()
        except UserError:
            rows.append({"id": e.id, "phase": "?", "direction": "?", "depth": "?", "step": "?",
                         "val_bpb": None, "status": "corrupt"})
            continue
        steps = list_steps(e.checkpoints)
        status = meta.get("status", "?")
        if status == "running" and not RunLock(e.path / "run.lock").active():
            status = "stopped"  # killed without a chance to say so
        results = meta.get("results") or {}
        rows.append({
            "id": e.id, "phase": meta.get("phase", "?"), "direction": meta.get("direction", "?"),
            "depth": meta.get("depth", "?"), "step": steps[-1] if steps else 0,
            "val_bpb": results.get("val_bpb") if isinstance(results, dict) else None,
            "status": status,
        })
    return rows
