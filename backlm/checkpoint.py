"""Checkpoints: ``checkpoints/step_XXXXXX/`` with model.safetensors, meta.json and the
optimizer state (tensors in ``optim.safetensors``, structure in ``optim.json``).

Nothing is unpickled on load. A checkpoint folder is written under a temporary name and renamed
into place, so a crash leaves either the whole checkpoint or none of it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

from backlm import atomic
from backlm.errors import UserError

STEP_RE = re.compile(r"^step_(\d{6,})$")


def step_dir(checkpoints: Path, step: int) -> Path:
    """Folder of the checkpoint at ``step``."""
    return Path(checkpoints) / f"step_{step:06d}"


def list_steps(checkpoints: Path) -> list[int]:
    """Steps that have a complete checkpoint, ascending."""
    if not Path(checkpoints).is_dir():
        return []
    steps = []
    for p in Path(checkpoints).iterdir():
        m = STEP_RE.match(p.name)
        if m and (p / "meta.json").is_file() and (p / "model.safetensors").is_file():
            steps.append(int(m.group(1)))
    return sorted(steps)


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _flatten_optimizer(state: Any, prefix: str, tensors: dict[str, Any]) -> Any:
    """Replace every tensor in a nested optimizer state by a reference into ``tensors``."""
    import torch

    if isinstance(state, torch.Tensor):
        key = f"{prefix}"
        tensors[key] = state.detach().contiguous().cpu()
        return {"__tensor__": key}
    if isinstance(state, dict):
        return {"__dict__": [[_key(k), _flatten_optimizer(v, f"{prefix}.{k}", tensors)]
                             for k, v in state.items()]}
    if isinstance(state, list | tuple):
        kind = "__list__" if isinstance(state, list) else "__tuple__"
        return {kind: [_flatten_optimizer(v, f"{prefix}.{i}", tensors)
                       for i, v in enumerate(state)]}
    return state


def _key(k: Any) -> Any:
    return {"__int__": k} if isinstance(k, int) else k


def _unkey(k: Any) -> Any:
    return k["__int__"] if isinstance(k, dict) else k


def _unflatten(node: Any, tensors: dict[str, Any]) -> Any:
    if isinstance(node, dict):
        if "__tensor__" in node:
            return tensors[node["__tensor__"]]
        if "__dict__" in node:
            return {_unkey(k): _unflatten(v, tensors) for k, v in node["__dict__"]}
        if "__list__" in node:
            return [_unflatten(v, tensors) for v in node["__list__"]]
        if "__tuple__" in node:
            return tuple(_unflatten(v, tensors) for v in node["__tuple__"])
    return node


def encode_bytes(data: bytes) -> str:
    """Bytes (e.g. an RNG state) as base64 text for meta.json."""
    return base64.b64encode(data).decode("ascii")


def decode_bytes(text: str) -> bytes:
    """Inverse of :func:`encode_bytes`."""
    return base64.b64decode(text.encode("ascii"))


def save(
    checkpoints: Path, step: int, model_state: dict[str, Any], optim_state: Any,
    meta: dict[str, Any], keep_last: int = 0,
) -> Path:
    """Write the checkpoint of ``step`` atomically; returns its folder.

    ``keep_last`` > 0 deletes older step folders beyond that many (best steps named in
    best.json are kept).
    """
    from safetensors.torch import save_file

    final = step_dir(checkpoints, step)
    tmp = final.with_name(f".{final.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    weights = {k: v.detach().contiguous().cpu() for k, v in model_state.items()}
    save_file(weights, str(tmp / "model.safetensors"))
    tensors: dict[str, Any] = {}
    structure = _flatten_optimizer(optim_state, "opt", tensors)
    save_file(tensors, str(tmp / "optim.safetensors"))
    atomic.write_json(tmp / "optim.json", structure)
    meta = dict(meta, step=step, model_sha256=sha256_file(tmp / "model.safetensors"))
    atomic.write_json(tmp / "meta.json", meta)
    if final.exists():
        shutil.rmtree(final)
    os.rename(tmp, final)
    if keep_last > 0:
        _prune(Path(checkpoints), keep_last)
    return final


def _prune(checkpoints: Path, keep_last: int) -> None:
    keep = set(list_steps(checkpoints)[-keep_last:])
    for name in ("best.json", "best_5cat.json"):
        p = checkpoints / name
        if p.is_file():
            try:
                keep.add(int(json.loads(p.read_text())["step"]))
            except (ValueError, KeyError, TypeError):
                pass
    for s in list_steps(checkpoints):
        if s not in keep:
            shutil.rmtree(step_dir(checkpoints, s), ignore_errors=True)


def read_meta(folder: Path) -> dict[str, Any]:
    """meta.json of a checkpoint folder (UserError when missing or corrupt)."""
    try:
        return json.loads((folder / "meta.json").read_text())
    except FileNotFoundError:
        raise UserError(f"checkpoint {folder} has no meta.json") from None
    except (OSError, ValueError) as exc:
        raise UserError(f"checkpoint {folder} is corrupt: meta.json ({exc})") from None


def load(folder: Path, with_optimizer: bool = True, verify: bool = True) -> tuple[dict, Any, dict]:
    """Load ``(model_state, optim_state or None, meta)`` from a checkpoint folder."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    meta = read_meta(folder)
    weights = folder / "model.safetensors"
    if verify and meta.get("model_sha256") and weights.is_file():
        if sha256_file(weights) != meta["model_sha256"]:
            raise UserError(f"checkpoint {folder} is corrupt: model.safetensors checksum mismatch")
    try:
        model_state = load_file(str(weights))
        optim_state = None
        if with_optimizer:
            tensors = load_file(str(folder / "optim.safetensors"))
            structure = json.loads((folder / "optim.json").read_text())
            optim_state = _unflatten(structure, tensors)
    except FileNotFoundError as exc:
        raise UserError(f"checkpoint {folder} is incomplete: {Path(exc.filename).name} "
                        "is missing") from None
    except (SafetensorError, OSError, ValueError) as exc:
        raise UserError(f"checkpoint {folder} is corrupt: {exc}".splitlines()[0]) from None
    return model_state, optim_state, meta


def latest(checkpoints: Path) -> Path | None:
    """Folder of the newest complete checkpoint, or None."""
    steps = list_steps(checkpoints)
    return step_dir(checkpoints, steps[-1]) if steps else None
