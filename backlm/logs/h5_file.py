"""Building and recovering a research-log file: the HDF5 calls SWMR's rules shape.

A file is created whole under a temporary name (every dataset up front: none can be created
once SWMR writing is on) and renamed into place; a rebuild copies an old file's rows up to a
step, so a resumed run never duplicates one and a killed writer's file is cleared. The writer
and the schema live in :mod:`backlm.logs.hdf5`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from backlm import atomic

_CHUNK_BYTES = 32768
# SWMR's oldest format and no newer: HDF5 1.10's tools cannot read "latest" under HDF5 2.x.
LIBVER = ("v110", "v110")


def open_reader(path: Path) -> h5py.File:
    """Open a research log for reading, also during a flush or after a crash in one: a plain
    open first (a truncated file fails at once, where SWMR retries for minutes), SWMR only for
    a file marked open for write."""
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        if "open for write" not in str(exc) and "consistency flag" not in str(exc):
            raise
    return h5py.File(path, "r", libver="latest", swmr=True)


def rebuild(path: Path, keep_step: int | None, layout: dict[str, tuple[tuple[int, ...], str]],
            attrs: dict[str, Any], group_attrs: dict[str, dict[str, Any]],
            warn: Callable[[str], None], fresh: bool = False) -> None:
    """Write ``path`` anew (temporary name, then atomic rename) with every dataset created.

    With ``fresh`` and ``keep_step`` None the old file's rows are dropped (a new run).
    Otherwise the old file is read in SWMR mode (so a crashed writer's file opens) and rows of
    steps ≤ ``keep_step`` (all rows when None) are copied; its other datasets and attributes
    are kept too. An unreadable old file is moved aside to ``*.corrupt``.
    """
    old = None
    if path.exists() and not (fresh and keep_step is None):
        try:
            old = open_reader(path)
        except OSError as exc:
            aside = path.with_name(path.name + ".corrupt")
            os.replace(path, aside)
            warn(f"research log {path.name} was unreadable ({exc}); moved to {aside.name}")
    try:
        with atomic.atomic_path(path) as tmp, h5py.File(tmp, "w", libver=LIBVER) as new:
            full = {**(_layout_of(old) if old else {}), **layout}
            merged_attrs = {**(dict(old.attrs) if old else {}), **attrs}
            if old is not None and "created" in old.attrs:
                merged_attrs["created"] = old.attrs["created"]  # the file's first run
            _create(new, full, merged_attrs, group_attrs)
            if old is not None:
                _copy_rows(old, new, keep_step)
    finally:
        if old is not None:
            old.close()


def _create(f: h5py.File, layout: dict[str, tuple[tuple[int, ...], str]],
            attrs: dict[str, Any], group_attrs: dict[str, dict[str, Any]]) -> None:
    for key, value in attrs.items():
        f.attrs[key] = value
    for name, (tail, dtype) in layout.items():
        row_bytes = max(1, int(np.prod(tail, dtype=np.int64)) * np.dtype(dtype).itemsize)
        chunk_rows = max(1, min(1024, _CHUNK_BYTES // row_bytes))
        numeric = np.dtype(dtype).kind in "fiu"
        f.create_dataset(name, shape=(0, *tail), maxshape=(None, *tail), dtype=dtype,
                         chunks=(chunk_rows, *tail), compression="gzip", compression_opts=4,
                         shuffle=numeric)
    for group, values in group_attrs.items():
        for key, value in values.items():
            f.require_group(group).attrs[key] = value


def _layout_of(f: h5py.File) -> dict[str, tuple[tuple[int, ...], str]]:
    out: dict[str, tuple[tuple[int, ...], str]] = {}

    def visit(name: str, obj: Any) -> None:
        if isinstance(obj, h5py.Dataset) and obj.maxshape[:1] == (None,):
            out[name] = (tuple(obj.shape[1:]), obj.dtype.str)

    f.visititems(visit)
    return out


def _copy_rows(old: h5py.File, new: h5py.File, keep_step: int | None) -> None:
    for group in new:
        if f"{group}/step" not in old or f"{group}/step" not in new:
            continue
        names = [n for n in _layout_of(new) if n.startswith(f"{group}/")]
        present = [n for n in names if n in old and old[n].shape[1:] == new[n].shape[1:]]
        steps = old[f"{group}/step"][:]
        n = min([len(steps)] + [old[x].shape[0] for x in present])
        late = np.nonzero(steps[:n] > keep_step)[0] if keep_step is not None else []
        k = int(late[0]) if len(late) else n  # steps only grow: the kept rows are a prefix
        for name in names:
            ds = new[name]
            ds.resize((k, *ds.shape[1:]))
            for i in range(0, k, 4096):
                j = min(k, i + 4096)
                ds[i:j] = old[name][i:j] if name in present else _fill(ds.dtype, j - i,
                                                                      ds.shape[1:])


def _fill(dtype: np.dtype, n: int, tail: tuple[int, ...]) -> np.ndarray:
    value: Any = np.nan if dtype.kind == "f" else (b"" if dtype.kind == "S" else -1)
    return np.full((n, *tail), value, dtype=dtype)


def resumed_at(path: Path, step: int) -> str:
    """The ``resumed_at`` attribute of ``path`` with ``step`` added (comma-separated)."""
    try:
        with open_reader(path) as f:
            before = str(f.attrs.get("resumed_at", ""))
    except OSError:
        before = ""
    return ",".join([s for s in before.split(",") if s] + [str(step)])


def append_rows(ds: h5py.Dataset, rows: np.ndarray) -> None:
    """Extend ``ds`` by ``rows`` (low-level calls: about 3× faster than slicing)."""
    n = ds.id.shape[0]
    count = rows.shape[0]
    ds.id.set_extent((n + count, *ds.shape[1:]))
    try:
        space = ds.id.get_space()
        space.select_hyperslab((n,) + (0,) * (rows.ndim - 1), rows.shape)
        ds.id.write(h5py.h5s.create_simple(rows.shape), space, np.ascontiguousarray(rows))
    except BaseException:  # e.g. Ctrl-C: no half-written row shifts the ones that follow
        ds.id.set_extent((n, *ds.shape[1:]))
        raise
