"""Atomic file writes: write to a temporary name beside the target, fsync, rename.

A reader never sees a half-written file, and an interrupted write leaves the old file (or
nothing) in place.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

SUFFIX = ".tmp"  # temporary names: ".<name>.<random>.tmp" beside the target


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success fsync it and rename it into place.

    On any exception the temporary file is removed and ``path`` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=SUFFIX, dir=path.parent)
    os.close(fd)
    # mkstemp makes 0600 files; give the final file the mode a plain open() would.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
        fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def remove_stale(directory: str | os.PathLike) -> list[str]:
    """Remove the temporary files of writes a SIGKILL cut short in ``directory`` (not in its
    sub-folders); the names removed. Only for a folder no other process writes meanwhile."""
    removed = []
    for path in sorted(Path(directory).glob(f".*{SUFFIX}")):
        if path.is_file():
            path.unlink(missing_ok=True)
            removed.append(path.name)
    return removed


def fsync_dir(directory: Path) -> None:
    """Flush a directory entry: a rename inside it is durable only once this is done."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Atomically write ``data`` to ``path``."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Atomically write UTF-8 ``text`` to ``path``."""
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Atomically write ``obj`` as indented JSON; a missing (NaN) or infinite number is
    written as null, never as the ``NaN`` token JSON does not have."""
    from backlm.missing import json_ready

    text = json.dumps(json_ready(obj), indent=2, sort_keys=False, default=str, allow_nan=False)
    write_text(path, text + "\n")


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a hidden temporary folder beside ``path``; on success it replaces ``path`` (an
    earlier folder there is moved aside first and removed after), so a reader sees the old
    folder or the new one whole. On any exception the temporary folder is removed."""
    import shutil

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=SUFFIX, dir=path.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes 0700 folders
    try:
        yield tmp
        swap_folder(tmp, path, path.with_name(f"{tmp.name}.old"))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def swap_folder(new: Path, path: Path, aside: Path) -> None:
    """Put the folder ``new`` at ``path``: a folder already there is renamed to ``aside``
    first (put back if the final rename fails) and removed after, so ``path`` holds the old
    folder or the new one whole, never a mix."""
    import shutil

    if path.exists():
        os.rename(path, aside)
    try:
        os.rename(new, path)
    except BaseException:
        if aside.exists() and not path.exists():
            os.rename(aside, path)
        raise
    fsync_dir(path.parent)
    shutil.rmtree(aside, ignore_errors=True)
