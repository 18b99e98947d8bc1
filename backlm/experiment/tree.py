"""The rows of ``backlm ls``: one per experiment (a running run at its live step), and the
forest of ``--tree``, each experiment under its parent.

Parent links are read as data, never trusted: a parent that is not under the root, a link
that cannot be read, or links that form a cycle make the experiment a root with a note, so
the view always shows every experiment once.
"""

from __future__ import annotations

import json
from typing import Any

from backlm.errors import UserError
from backlm.experiment.folder import Experiment, all_experiments
from backlm.experiment.notes import latest_step
from backlm.missing import is_missing

_BAD_LINK = object()  # a parent link that is neither null nor an object with a parent_id


def _parent_id(exp: Experiment) -> Any:
    """The parent's id, None for a base run (or no link at all), or ``_BAD_LINK``."""
    try:
        link = json.loads(exp.parent_link_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return _BAD_LINK
    if link is None:
        return None
    if isinstance(link, dict) and isinstance(link.get("parent_id"), str) and link["parent_id"]:
        return link["parent_id"], link
    return _BAD_LINK


def _best(exp: Experiment, results: dict[str, Any]) -> str | None:
    record = exp.best("val") or {}
    metric = record.get("monitor") or record.get("metric")
    value = record.get("value")
    if isinstance(metric, str) and not is_missing(value):
        step = record.get("step")
        return f"{metric} {value:.4f}" + (f" @ step {step}" if isinstance(step, int) else "")
    # no best record: the final value of the phase's own metric (RL: the reward), else bpb
    for name in ("val_reward", "val_chat_loss", "val_bpb"):
        value = results.get(name)
        if not is_missing(value):
            return f"{name} {value:.4f} (final)"
    return None


def _node(exp: Experiment) -> dict[str, Any]:
    try:
        meta = exp.metadata()
    except UserError:
        meta = None
    parent = _parent_id(exp)
    link = parent[1] if isinstance(parent, tuple) else {}
    step = link.get("step")
    row = {
        "id": exp.id, "depth_in_tree": 0,
        "phase": (meta or {}).get("phase", "?"), "direction": (meta or {}).get("direction", "?"),
        "parent_step": step if isinstance(step, int) and not isinstance(step, bool) else None,
        "best": None, "status": "corrupt", "note": None,
        "_parent": parent[0] if isinstance(parent, tuple) else parent,
        "_created": str((meta or {}).get("created") or link.get("created") or ""),
    }
    if meta is not None:
        results = meta.get("results") if isinstance(meta.get("results"), dict) else {}
        status = meta.get("status", "?")
        if status == "running" and not exp.is_running():
            status = "stopped"  # killed without a chance to say so
        row.update(best=_best(exp, results), status=status)
    return row


def _in_cycle(start: str, parents: dict[str, str]) -> bool:
    seen = {start}
    node = parents.get(start)
    while node is not None:
        if node == start:
            return True
        if node in seen:
            return False  # a cycle further up, not through ``start``
        seen.add(node)
        node = parents.get(node)
    return False


def tree_rows(root) -> list[dict[str, Any]]:
    """Every experiment under ``root``, depth first: roots by id, children by creation time
    then id. Keys: id, depth_in_tree, phase, direction, parent_step (the parent's step the
    child started from; None for roots), best, status, note (why a child shows as a root)."""
    nodes = {e.id: _node(e) for e in all_experiments(root)}
    parents: dict[str, str] = {}
    for exp_id, row in nodes.items():
        parent = row["_parent"]
        if parent is _BAD_LINK:
            row["note"] = "(parent link unreadable)"
        elif parent is not None and parent not in nodes:
            row["note"] = f"(parent {parent} missing)"
        elif parent is not None:
            parents[exp_id] = parent
    for exp_id in [i for i in parents if _in_cycle(i, parents)]:
        nodes[exp_id]["note"] = "(parent links form a cycle)"
        del parents[exp_id]
    children: dict[str, list[str]] = {}
    for exp_id, parent in parents.items():
        children.setdefault(parent, []).append(exp_id)
    out: list[dict[str, Any]] = []
    # an explicit stack: lineages can be longer than Python's recursion limit
    stack = [(i, 0) for i in sorted((i for i in nodes if i not in parents), reverse=True)]
    while stack:
        exp_id, depth = stack.pop()
        row = nodes[exp_id]
        row["depth_in_tree"] = depth
        if depth == 0:
            row["parent_step"] = None
        out.append({k: v for k, v in row.items() if not k.startswith("_")})
        kids = sorted(children.get(exp_id, []), key=lambda i: (nodes[i]["_created"], i))
        stack.extend((kid, depth + 1) for kid in reversed(kids))
    return out


def list_rows(root) -> list[dict[str, Any]]:
    """One summary row per experiment for ``backlm ls`` (reads JSON only, no torch). The step
    is the last checkpoint's, or for a running run the last step in metrics.jsonl (its tail
    only: checkpoints can be far apart, the log is written every step). A sweep's members come
    first, grouped under it in run order (``sweep``: its id; None for the others, by id)."""
    from backlm.experiment.sweeps import sweep_members

    rows = {r["id"]: r for r in map(_list_row, all_experiments(root))}
    out = []
    for sweep_id, members in sweep_members(root).items():
        for exp_id in members:
            if exp_id in rows and rows[exp_id]["sweep"] is None:
                rows[exp_id]["sweep"] = sweep_id
                out.append(rows[exp_id])
    return out + [r for r in rows.values() if r["sweep"] is None]


def _list_row(e: Experiment) -> dict[str, Any]:
    try:
        meta = e.metadata()
    except UserError:
        return {"id": e.id, "phase": "?", "direction": "?", "depth": "?", "step": "?",
                "val_bpb": None, "status": "corrupt", "sweep": None}
    status = meta.get("status", "?")
    running = status == "running" and e.is_running()
    if status == "running" and not running:
        status = "stopped"  # killed without a chance to say so
    steps = e.checkpoint_steps()
    results = meta.get("results") or {}
    return {
        "id": e.id, "phase": meta.get("phase", "?"), "direction": meta.get("direction", "?"),
        "depth": meta.get("depth", "?"),
        "step": latest_step(e) if running else (steps[-1] if steps else 0),
        "val_bpb": results.get("val_bpb") if isinstance(results, dict) else None,
        "status": status, "sweep": None,
    }
