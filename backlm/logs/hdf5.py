"""The research log ``{phase}.h5``: schema, crash-safe SWMR writer, recovery and eval appends.

Schema (``schema_version`` 1). Every group below holds a ``step`` dataset (int64) that indexes
its rows; every other dataset in the group has one row per entry of ``step`` (axis 0). All
datasets are extendable (``maxshape=(None, ...)``), chunked and gzip-compressed.

File attributes: ``schema_version``, ``experiment_id``, ``phase``, ``direction``, ``config``
(the resolved config as YAML text), ``created``, ``backlm_version``, ``resumed_at`` (steps a
resumed run restarted from, comma-separated; empty if never).

``/scalars/`` (one row per logged step, ``train.log_every``, default every step; the initial
evaluation is step 0): ``loss``, ``lr_mult`` (the schedule's learning-rate multiplier: each
parameter group's lr is its base lr × this), ``grad_norm``, ``tokens``, ``tokens_per_sec``,
``mfu``, ``dt`` (s/step), ``val_loss``, ``val_bpb``; bidirectional: ``val_{loss,bpb}_{forward,
backward}``; mid/sft ``val_chat_loss``, rl ``reward_{mean,std}``, ``zero_spread``, ``val_reward``
(per order when bidirectional) — float64, NaN where a step lacks one (eval: train.eval_every).

``/per_token/`` (every ``log.per_token_every`` steps; group attrs ``every``, ``rows``,
``seq_len``): the first ``log.per_token_rows`` rows of the step's last micro-batch, scored by
an extra no-grad forward before the optimizer update. ``loss`` float16 (n, rows, T), NaN where
the target is ignored; ``pred`` int32 (n, rows, T) argmax predictions; ``input`` and
``target`` int32 (n, rows, T) token ids in model order (target −1: ignored);
``position_loss`` float32 (n, T), the mean loss at each position over the rows.

``/gradients/<param>/{norm,mean,std,max_abs}`` (float32, every ``log.stats_every`` steps, from
``p.grad`` after the backward passes, before clipping): one group per model parameter, named
as in ``model.named_parameters()`` (e.g. ``blocks.0.attn.qkv``).

``/activations/<layer>/{mean,std,rms,max_abs}`` (float32, every ``log.stats_every`` steps):
the output of each transformer block (``blocks.0`` ...), over every micro-batch of the step,
captured by forward hooks armed only on those steps (no extra forward pass).

``/attention/{entropy,distance}`` (float32 (n, layers, heads), every ``log.attention_every``
steps; group attrs ``every``, ``rows``, ``layers``, ``heads``): per layer and head, over every
query position of the per-token slice's rows (the same rows, scored by the same forward when
both are due), in model order: ``entropy`` the mean entropy of a query's attention in nats
(a query at position i spreading evenly over its i+1 keys has log(i+1)), ``distance`` the
mean number of tokens between a query and the keys it attends to, weighted by attention (0:
itself; the order the model reads, so forward and backward models compare directly).

``/eval/{kind,name,value}`` (one row per value; ``kind`` and ``name`` are fixed-length byte
strings): validation results (kind ``val``) at every evaluation, and whatever other code adds
through :func:`append_eval` (e.g. kind ``5cat``). ``/extra/{name,value}``: numeric record keys
other callbacks add to a step's record that the fixed ``/scalars`` do not name.

Crash safety (HDF5 SWMR, DESIGN.md §3). A new file is built under a temporary name with every
group and dataset created up front (nothing can be created once ``swmr_mode`` is on) and
renamed into place. Rows are buffered; every ``log.flush_every`` steps and before every
checkpoint a flush opens the file in SWMR write mode, appends (a group's ``step`` last, so its
length counts complete rows) and closes it (``benchmarks/h5_flush.py``). Between flushes the
file is closed and consistent, so any reader, h5dump and h5ls included, opens it during a run
and after a SIGKILL. A kill in mid-flush leaves it flagged "open for write": :func:`open_reader`
still reads it, ``h5clear -s`` clears the flag for other tools. A resumed run rebuilds the file
(rows of steps ≤ the checkpoint step, atomic rename) and appends: no step is ever duplicated.
A file from before a group existed (``/attention`` came later) gains it empty on that rebuild;
readers treat a missing group as no records. Building and recovery: :mod:`backlm.logs.h5_file`.
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import h5py
import numpy as np

from backlm.errors import UserError
from backlm.logs.base import MetricLogger
from backlm.logs.h5_file import LIBVER, append_rows, open_reader, rebuild, resumed_at
from backlm.missing import is_missing

if TYPE_CHECKING:
    from backlm.experiment import Experiment

SCHEMA_VERSION = 1
GROUPS = ("scalars", "per_token", "gradients", "activations", "attention", "eval", "extra")
BASE_SCALARS = ("loss", "lr_mult", "grad_norm", "tokens", "tokens_per_sec", "mfu", "dt",
                "val_loss", "val_bpb")
GRAD_STATS = ("norm", "mean", "std", "max_abs")
ACT_STATS = ("mean", "std", "rms", "max_abs")
ATTN_STATS = ("entropy", "distance")
KIND_LEN, NAME_LEN = 16, 64

# Live writers by resolved path: append_eval hands rows to them, never writing the file beside.
_OPEN: dict[str, Hdf5Logger] = {}


@dataclass(frozen=True)
class Schema:
    """What one run's file holds; every name is known before the first step."""

    scalars: tuple[str, ...]
    params: tuple[str, ...]
    layers: tuple[str, ...]
    rows: int
    seq_len: int
    heads: int = 0  # attention heads per layer; 0: no /attention statistics

    def datasets(self) -> dict[str, tuple[tuple[int, ...], str]]:
        """Every dataset path → (shape of one row, dtype)."""
        out: dict[str, tuple[tuple[int, ...], str]] = {f"{g}/step": ((), "i8") for g in GROUPS}
        out.update({f"scalars/{n}": ((), "f8") for n in self.scalars})
        slice_ = (self.rows, self.seq_len)
        out.update({"per_token/loss": (slice_, "f2"), "per_token/pred": (slice_, "i4"),
                    "per_token/input": (slice_, "i4"), "per_token/target": (slice_, "i4"),
                    "per_token/position_loss": ((self.seq_len,), "f4")})
        out.update({f"gradients/{p}/{s}": ((), "f4") for p in self.params for s in GRAD_STATS})
        out.update({f"activations/{n}/{s}": ((), "f4") for n in self.layers for s in ACT_STATS})
        if self.heads and self.layers:
            out.update({f"attention/{s}": ((len(self.layers), self.heads), "f4")
                        for s in ATTN_STATS})
        out.update({"eval/kind": ((), f"S{KIND_LEN}"), "eval/name": ((), f"S{NAME_LEN}"),
                    "eval/value": ((), "f8"), "extra/name": ((), f"S{NAME_LEN}"),
                    "extra/value": ((), "f8")})
        return out


class Hdf5Logger(MetricLogger):
    """Appends to ``{phase}.h5``: rows are buffered, and each flush opens the file (SWMR write
    mode), appends them and closes it again."""

    def __init__(self, path: Path, schema: Schema, attrs: dict[str, Any],
                 group_attrs: dict[str, dict[str, Any]] | None = None, resume_step: int = 0,
                 flush_every: int = 10, warn: Callable[[str], None] = print) -> None:
        self.path = Path(path)
        self.schema, self.flush_every = schema, flush_every
        keep = resume_step if resume_step > 0 and self.path.exists() else None
        if keep is not None:
            attrs = {**attrs, "resumed_at": resumed_at(self.path, resume_step)}
        rebuild(self.path, keep, schema.datasets(), attrs, group_attrs or {}, warn, fresh=True)
        # each group's step after its data: a step's row is complete once its step is there
        self._order = sorted(schema.datasets(), key=lambda name: name.endswith("/step"))
        self._buf: dict[str, list[Any]] = {name: [] for name in self._order}
        with self._open() as f:
            self._last = {g: int(f[f"{g}/step"][-1]) if len(f[f"{g}/step"]) else -1
                          for g in GROUPS}
        self._since_flush, self._closed = 0, False
        _OPEN[str(self.path.resolve())] = self

    # --- what the loop and the research callback hand in ------------------------------------

    def log(self, step: int, record: dict[str, Any]) -> None:
        """Buffer one ``/scalars`` row (NaN for missing names), eval and extra values."""
        if not self._claim("scalars", step):
            return
        for name in self.schema.scalars:
            self._buf[f"scalars/{name}"].append(_number(record.get(name)))
        vals = {k: v for k, v in record.items() if k.startswith("val_") and _is_number(v)}
        if vals:
            self.add_eval("val", step, vals)
        for key, value in record.items():
            if key not in self.schema.scalars and key not in vals and _is_number(value):
                self._row("extra", step, name=_bytes(key, NAME_LEN), value=float(value))
        self._since_flush += 1
        if self._since_flush >= self.flush_every:
            self.flush()

    def add_per_token(self, step: int, arrays: dict[str, np.ndarray]) -> None:
        """Buffer one ``/per_token`` row: loss, pred, input, target, position_loss."""
        self.add_arrays("per_token", step, arrays)

    def add_arrays(self, group: str, step: int, arrays: dict[str, np.ndarray]) -> None:
        """Buffer one row of an array group (``per_token``, ``attention``): {dataset: row}."""
        if self._claim(group, step):
            for key, value in arrays.items():
                self._buf[f"{group}/{key}"].append(value)

    def add_stats(self, group: str, step: int, stats: dict[str, dict[str, float]]) -> None:
        """Buffer one row of ``/gradients`` or ``/activations``: {param or layer: {stat: v}}."""
        if self._claim(group, step):
            for name, values in stats.items():
                for stat, value in values.items():
                    self._buf[f"{group}/{name}/{stat}"].append(value)

    def add_eval(self, kind: str, step: int, values: dict[str, float]) -> None:
        """Buffer one ``/eval`` row per measured value (a missing one gets no row)."""
        for name, value in values.items():
            if is_missing(value):
                continue
            self._row("eval", step, kind=_bytes(kind, KIND_LEN), name=_bytes(name, NAME_LEN),
                      value=float(value))

    def _claim(self, group: str, step: int) -> bool:
        # A step already in the group (a repeated hook call) is skipped, never duplicated.
        if step <= self._last[group]:
            return False
        self._last[group] = step
        self._buf[f"{group}/step"].append(step)
        return True

    def _row(self, group: str, step: int, **values: Any) -> None:
        self._buf[f"{group}/step"].append(step)
        for key, value in values.items():
            self._buf[f"{group}/{key}"].append(value)

    # --- durability ---------------------------------------------------------------------------

    def flush(self) -> None:
        """Open the file, append every buffered row (each group's ``step`` last), close it."""
        if self._closed or not any(self._buf.values()):
            self._since_flush = 0
            return
        with self._open() as f:
            for name in self._order:
                rows = self._buf[name]
                if rows:
                    ds = f[name]
                    append_rows(ds, np.asarray(rows, dtype=ds.dtype))
                    rows.clear()
        self._since_flush = 0

    def close(self) -> None:
        """Write what is buffered; later rows are ignored."""
        try:
            self.flush()
        finally:
            self._closed = True
            _OPEN.pop(str(self.path.resolve()), None)

    def _open(self) -> h5py.File:
        # SWMR write mode orders what a flush writes: a kill mid-flush leaves a readable file.
        # It is asked for in the open itself: opening "r+" and then turning swmr_mode on marks
        # the file open for plain writing in between, and a kill there left a file no SWMR
        # reader opens (the next run moved it aside and lost its rows).
        from h5py._hl.files import make_fapl

        fapl = make_fapl(None, LIBVER, None, None, None, locking=False)
        flags = h5py.h5f.ACC_RDWR | h5py.h5f.ACC_SWMR_WRITE
        return h5py.File(h5py.h5f.open(os.fsencode(self.path), flags, fapl=fapl))


def log_eval(exp: Experiment, phase: str, kind: str, step: int,
             values: dict[str, float]) -> bool:
    """Add evaluation results (e.g. 5CAT) to ``exp``'s research log of ``phase``, during or
    after a run; False when the experiment has no such log (trained with log.hdf5 off)."""
    path = exp.research_log(phase)
    if str(path.resolve()) not in _OPEN and not path.is_file():
        return False
    append_eval(path, kind, step, values, writer_elsewhere=exp.is_running())
    return True


def append_eval(h5_path: Path, kind: str, step: int, values: dict[str, float],
                writer_elsewhere: bool = False) -> None:
    """Add evaluation results to a research log file, during or after a run.

    During a run in this process the open writer takes them (and flushes). Otherwise the file
    is opened for append; a file a killed run left "open for write" is rebuilt first, keeping
    every row. ``writer_elsewhere`` (another live process writes the file: its experiment's
    run lock is held) raises :class:`UserError`.
    """
    path = Path(h5_path)
    writer = _OPEN.get(str(path.resolve()))
    if writer is not None:
        writer.add_eval(kind, step, values)
        writer.flush()
        return
    if not path.is_file():
        raise UserError(f"no research log at {path}: train with log.hdf5 on to create one")
    if writer_elsewhere:
        raise UserError(f"{path} is being written by a live training run: add results from "
                        "inside that run, or after it ends")
    try:
        open_reader(path).close()
    except OSError:
        raise UserError(f"research log {path} is corrupt: it cannot be read even in SWMR "
                        "mode; move it aside to start a new one") from None
    try:
        f = h5py.File(path, "r+", libver=LIBVER)
    except OSError:
        rebuild(path, None, {}, {}, {}, print)  # left open by a killed run: clear by rebuilding
        f = h5py.File(path, "r+", libver=LIBVER)
    with f:
        for name, value in values.items():
            for key, row in (("kind", _bytes(kind, KIND_LEN)), ("name", _bytes(name, NAME_LEN)),
                             ("value", float(value))):
                append_rows(f[f"eval/{key}"], np.asarray([row], dtype=f[f"eval/{key}"].dtype))
            append_rows(f["eval/step"], np.asarray([step], dtype="i8"))


# --- small helpers --------------------------------------------------------------------------


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _number(value: Any) -> float:
    return float(value) if _is_number(value) else math.nan


def _bytes(text: str, size: int) -> bytes:
    return str(text).encode("utf-8")[:size]

