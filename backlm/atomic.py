"""Atomic file writes: write to a temporary name beside the target, fsync, rename.

A reader never sees a half-written file, and an interrupted write leaves the old file (or
nothing) in place. Whole folders go the same way, and backlm replaces or removes only a folder
it made itself: every such folder holds :data:`OWNED`, a small file saying what wrote it
(:func:`mark_owned`), and :func:`check_replaceable` refuses any other (a user's folder, a
file) with one line naming the path and the fix. The single place that decides this.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

SUFFIX = ".tmp"  # temporary names: ".<name>.<random>.tmp" beside the target
OWNED = ".backlm-owned"  # in every folder backlm may later replace or remove
# Recognises a folder an older backlm made before it wrote OWNED (None: no such folders).
Legacy = Callable[[Path], bool]


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


# --- folders backlm owns -----------------------------------------------------------------------


def mark_owned(folder: str | os.PathLike, what: str) -> None:
    """Write :data:`OWNED` into ``folder`` (made by backlm): ``what`` made it, and when."""
    import datetime as dt

    from backlm import __version__

    stamp = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    write_json(Path(folder) / OWNED, {"created_by": what, "backlm": __version__,
                                      "created": stamp})


def is_owned(folder: str | os.PathLike, legacy: Legacy | None = None) -> bool:
    """Whether backlm may replace or remove the folder ``folder``: it holds :data:`OWNED`, is
    empty (nothing in it to lose), or ``legacy`` recognises it as an older backlm's."""
    folder = Path(folder)
    if folder.is_symlink() or not folder.is_dir():
        return False
    if (folder / OWNED).is_file() or not any(folder.iterdir()):
        return True
    return bool(legacy is not None and legacy(folder))


def check_replaceable(path: str | os.PathLike, what: str,
                      legacy: Legacy | None = None) -> None:
    """Raise :class:`~backlm.errors.UserError` unless ``path`` is absent or a folder backlm
    owns (:func:`is_owned`); checked before any work, and again just before a swap."""
    from backlm.errors import UserError

    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return
    if path.is_symlink() or not path.is_dir():
        raise UserError(f"{what} {path} exists and is not a folder backlm made: move it away "
                        "or choose another path")
    if not is_owned(path, legacy):
        raise UserError(f"{what} {path} holds files backlm did not write (no {OWNED}): move "
                        "them away or choose another path; backlm replaces only its own folders")


def temp_folder(beside: str | os.PathLike) -> Path:
    """A new hidden folder beside ``beside`` (same filesystem, so a rename moves it), with a
    name no one else uses, and a plain mkdir's mode."""
    beside = Path(beside)
    beside.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{beside.name}.", suffix=SUFFIX, dir=beside.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes 0700 folders
    return tmp


def replace_owned(new: str | os.PathLike, path: str | os.PathLike, what: str,
                  legacy: Legacy | None = None) -> None:
    """Put the folder ``new`` at ``path`` whole, marked as backlm's; a folder already there is
    replaced only when backlm owns it (else a UserError, and ``path`` is left as it is)."""
    new, path = Path(new), Path(path)
    check_replaceable(path, what, legacy)
    if not (new / OWNED).is_file():
        mark_owned(new, what)
    swap_folder(new, path, path.with_name(f"{new.name}.old"))


def remove_owned(path: str | os.PathLike, what: str, legacy: Legacy | None = None) -> None:
    """Remove the folder ``path`` if backlm owns it; any other is refused (a UserError)."""
    import shutil

    path = Path(path)
    check_replaceable(path, what, legacy)
    shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike, what: str = "backlm",
                  legacy: Legacy | None = None) -> Iterator[Path]:
    """Yield a hidden temporary folder beside ``path``; on success it replaces ``path`` (an
    earlier folder there is moved aside first and removed after), so a reader sees the old
    folder or the new one whole. A ``path`` backlm does not own is refused before anything is
    written (:func:`check_replaceable`). On any exception the temporary folder is removed."""
    import shutil

    path = Path(path)
    check_replaceable(path, what, legacy)
    tmp = temp_folder(path)
    try:
        yield tmp
        replace_owned(tmp, path, what, legacy)
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
