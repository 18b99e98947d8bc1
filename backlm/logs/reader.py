"""Reading a research log (``{phase}.h5``) for ``backlm log``: summary and live following.

Every read opens the file in SWMR mode, so a live run's file and a killed run's file both
open. A group's ``step`` dataset is written last at each flush, so its length is the number
of complete rows and every other dataset is read up to that length.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backlm.errors import UserError
from backlm.experiment import Experiment
from backlm.logs.hdf5 import GROUPS


@dataclass
class LogSummary:
    """What ``backlm log`` shows: attributes, groups, last values."""

    path: Path
    attrs: dict[str, str]
    groups: list[dict[str, Any]] = field(default_factory=list)  # name, datasets, rows, shape, last
    scalars: list[dict[str, Any]] = field(default_factory=list)  # name, step value, last finite
    per_token: dict[str, Any] = field(default_factory=dict)
    gradients: list[dict[str, Any]] = field(default_factory=list)  # param, stats at last step
    activations: list[dict[str, Any]] = field(default_factory=list)
    evals: list[dict[str, Any]] = field(default_factory=list)  # kind, name, step, value


def log_path(exp: Experiment) -> Path:
    """The experiment's research log (its phase's, else its only one); UserError if none."""
    path = exp.research_log()
    if not path.is_file():
        others = exp.research_logs()
        if len(others) == 1:
            return others[0]
        raise UserError(f"experiment {exp.id} has no research log {path.name}: it is written "
                        "once training starts with log.hdf5 on (the default)")
    return path


def open_log(path: Path) -> Any:
    """Open ``path`` for SWMR reading; a corrupt or foreign file raises UserError."""
    from backlm.logs.hdf5 import open_reader

    try:
        f = open_reader(path)
    except OSError as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"research log {path} cannot be read ({reason}): the file is corrupt "
                        "or not HDF5; delete it and resume the run to start a new one") from None
    if "scalars/step" not in f:
        f.close()
        raise UserError(f"{path} is not a backlm research log (no /scalars/step)")
    return f


def rows(f: Any, group: str) -> int:
    """Complete rows of ``group``: the length of its ``step`` index."""
    return int(f[f"{group}/step"].shape[0]) if f"{group}/step" in f else 0


@dataclass
class AttentionLog:
    """``/attention`` of a research log: steps and ``(steps, layers, heads)`` arrays."""

    steps: list[int]
    entropy: Any
    distance: Any

    def last(self, stat: str) -> Any:
        """The ``(layers, heads)`` array of ``stat`` at the last logged step."""
        return getattr(self, stat)[-1]


def read_attention(f: Any) -> AttentionLog | None:
    """The attention statistics of an open log; None when it has none (a run without them,
    or a file from before they were logged)."""
    n = rows(f, "attention")
    if not n or "attention/entropy" not in f or "attention/distance" not in f:
        return None
    return AttentionLog([int(s) for s in f["attention/step"][:n]], f["attention/entropy"][:n],
                        f["attention/distance"][:n])


def summarize(path: Path, top: int = 12) -> LogSummary:
    """Read attributes, group shapes and the last values of every record kind."""
    with open_log(path) as f:
        attrs = {k: str(v) for k, v in f.attrs.items() if k != "config"}
        out = LogSummary(path=path, attrs=attrs)
        for group in GROUPS:
            if group in f:
                out.groups.append(_group_row(f, group))
        out.scalars = _scalar_rows(f)
        out.per_token = _per_token(f)
        out.gradients = _stats_rows(f, "gradients", "norm", top)
        out.activations = _stats_rows(f, "activations", "rms", top)
        out.evals = _eval_rows(f)
    return out


def _group_row(f: Any, group: str) -> dict[str, Any]:
    import h5py

    names: list[str] = []
    f[group].visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None)
    n = rows(f, group)
    shapes = sorted({str((n, *f[f"{group}/{x}"].shape[1:])) for x in names if x != "step"})
    last = int(f[f"{group}/step"][n - 1]) if n else None
    return {"name": f"/{group}", "datasets": len(names), "rows": n,
            "shapes": ", ".join(shapes[:3]) + (" …" if len(shapes) > 3 else ""), "last": last}


def _scalar_rows(f: Any) -> list[dict[str, Any]]:
    import numpy as np

    n = rows(f, "scalars")
    if not n:
        return []
    steps = f["scalars/step"][:n]
    out = []
    for name in f["scalars"]:
        if name == "step":
            continue
        values = f[f"scalars/{name}"][:n]
        finite = np.nonzero(np.isfinite(values))[0]
        at = int(finite[-1]) if len(finite) else None
        out.append({"name": name, "value": float(values[-1]),
                    "last": float(values[at]) if at is not None else math.nan,
                    "last_step": int(steps[at]) if at is not None else None})
    return out


def _per_token(f: Any) -> dict[str, Any]:
    import numpy as np

    n = rows(f, "per_token")
    if not n:
        return {}
    loss = f["per_token/loss"][n - 1].astype("float32")
    pos = f["per_token/position_loss"][n - 1]
    q = max(1, len(pos) // 4)
    return {"slices": n, "last_step": int(f["per_token/step"][n - 1]),
            "shape": f"{loss.shape[0]} rows × {loss.shape[1]} tokens",
            "mean_loss": float(np.nanmean(loss)) if np.isfinite(loss).any() else math.nan,
            "first_quarter": _nanmean(pos[:q]), "last_quarter": _nanmean(pos[-q:]),
            "accuracy": _accuracy(f["per_token/pred"][n - 1], f["per_token/target"][n - 1])}


def _nanmean(values: Any) -> float:
    import numpy as np

    return float(np.nanmean(values)) if np.isfinite(values).any() else math.nan


def _accuracy(pred: Any, target: Any) -> float:
    valid = target >= 0
    return float((pred[valid] == target[valid]).mean()) if valid.any() else math.nan


def _stats_rows(f: Any, group: str, key: str, top: int) -> list[dict[str, Any]]:
    n = rows(f, group)
    if not n:
        return []
    out = []
    for name in f[group]:
        if name == "step":
            continue
        stats = {s: float(f[f"{group}/{name}/{s}"][n - 1]) for s in f[f"{group}/{name}"]}
        out.append({"name": name, "step": int(f[f"{group}/step"][n - 1]), **stats})
    out.sort(key=lambda r: -r[key] if math.isfinite(r.get(key, math.nan)) else math.inf)
    return out[:top] if top else out


def _eval_rows(f: Any) -> list[dict[str, Any]]:
    n = rows(f, "eval")
    if not n:
        return []
    latest: dict[tuple[str, str], dict[str, Any]] = {}
    steps, kinds = f["eval/step"][:n], f["eval/kind"][:n]
    names, values = f["eval/name"][:n], f["eval/value"][:n]
    for s, k, m, v in zip(steps, kinds, names, values, strict=True):
        key = (k.decode(), m.decode())
        latest[key] = {"kind": key[0], "name": key[1], "step": int(s), "value": float(v)}
    return list(latest.values())


def read_eval(path: Path, kind: str) -> dict[str, tuple[list[int], list[float]]]:
    """``/eval`` rows of one ``kind`` as {name: (steps, values)}, in step order."""
    out: dict[str, tuple[list[int], list[float]]] = {}
    with open_log(path) as f:
        n = rows(f, "eval")
        cols = [f[f"eval/{c}"][:n] for c in ("step", "kind", "name", "value")]
    for step, k, name, value in zip(*cols, strict=True):
        if k.decode() == kind:
            steps, values = out.setdefault(name.decode(), ([], []))
            steps.append(int(step))
            values.append(float(value))
    return out


def new_scalar_rows(path: Path, after: int) -> list[dict[str, float]]:
    """``/scalars`` rows with step > ``after`` (for ``--follow``); [] while unreadable."""
    import numpy as np

    try:
        f = open_log(path)
    except UserError:
        return []  # the writer may be between building and reopening the file
    with f:
        n = rows(f, "scalars")
        steps = f["scalars/step"][:n]
        idx = np.nonzero(steps > after)[0]
        if not len(idx):
            return []
        cols = {name: f[f"scalars/{name}"][:n][idx] for name in f["scalars"] if name != "step"}
    return [{"step": int(steps[i]), **{k: float(v[j]) for k, v in cols.items()}}
            for j, i in enumerate(idx)]


def run_is_live(exp: Experiment) -> bool:
    """Whether the experiment is still training (status running and its lock holder alive)."""
    try:
        status = exp.metadata().get("status")
    except UserError:
        return False
    return status == "running" and exp.is_running()
