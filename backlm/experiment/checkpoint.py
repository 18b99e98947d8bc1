"""Checkpoints: ``checkpoints/step_XXXXXX/`` with model.safetensors (whose header says what
the weights are: direction, phase, step, model config, tokenizer sha256), meta.json and the
optimizer state (tensors in ``optim.safetensors``, structure in ``optim.json``).

Nothing is unpickled on load. A checkpoint folder is written under a temporary name and renamed
into place, so a crash leaves either the whole checkpoint or none of it: an interrupt or error
removes the temporary folder, and one a SIGKILL left behind goes when the next run starts
(:func:`remove_partial`). Free space is checked before writing.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import json
import os
import random
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from backlm import atomic
from backlm.errors import UserError

MODEL_FILE = "model.safetensors"
META_FILE = "meta.json"
OPTIM_FILE = "optim.safetensors"  # the optimizer's tensors
OPTIM_JSON = "optim.json"  # and the structure that holds them
PARTIAL = (".*.tmp", ".*.old")  # what an interrupted save (or atomic write) leaves behind
# Beyond the tensors' bytes: meta.json, optim.json (loader positions, RNG states) and the file
# system's block rounding.
MARGIN_FRACTION, MARGIN_BYTES = 0.05, 4 << 20


def is_complete(folder: Path) -> bool:
    """Whether ``folder`` holds a whole checkpoint (weights and metadata)."""
    return (folder / META_FILE).is_file() and (folder / MODEL_FILE).is_file()


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


def _encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _decode(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"))


def rng_state(cuda: bool) -> dict[str, Any]:
    """This process's torch (and CUDA) and Python RNG states, JSON-ready for meta.json."""
    import torch

    state = {
        "torch": _encode(torch.get_rng_state().numpy().tobytes()),
        "python": json.dumps(random.getstate()),
    }
    if cuda:
        state["cuda"] = _encode(torch.cuda.get_rng_state().numpy().tobytes())
    return state


def restore_rng_state(state: dict[str, Any], cuda: bool) -> None:
    """Inverse of :func:`rng_state`: the resumed run draws the numbers the killed one would."""
    import numpy as np
    import torch

    def tensor(text: str):
        return torch.from_numpy(np.frombuffer(_decode(text), dtype=np.uint8).copy())

    torch.set_rng_state(tensor(state["torch"]))
    py = json.loads(state["python"])
    random.setstate((py[0], tuple(py[1]), py[2]))
    if cuda and "cuda" in state:
        torch.cuda.set_rng_state(tensor(state["cuda"]))


def save(folder: Path, model_state: dict[str, Any], optim_state: Any, meta: dict[str, Any],
         *, previous: int | None = None, resume_with: str = "", fresh: bool = False,
         after_weights: Callable[[], None] | None = None) -> Path:
    """Write a checkpoint into ``folder`` atomically (temporary name, then rename).

    ``meta`` (JSON) must hold the ``step``, ``direction`` and ``model_config`` (with
    ``phase`` and ``tokenizer``, the weights' header carries them:
    :func:`backlm.experiment.weights.checkpoint_header`); the weights' sha256 is added to it.
    Saving the same state twice writes the same weights bytes. Free space is
    checked first. On any error or interrupt the temporary folder is removed, so ``folder`` is
    whole or absent; too little space, a full disk or another OSError is one UserError naming
    the checkpoint at step ``previous`` (the resume point that stays) and ``resume_with`` (the
    command that continues); ``fresh``: the first checkpoint of a new experiment, which the
    caller removes on failure, so the advice is to run the same command again, not to resume.
    ``after_weights`` runs once the weights are written (fault injection).
    """
    from backlm.experiment import weights as safetensors_file

    final = Path(folder)
    tmp = final.with_name(f".{final.name}.tmp")
    weights = {k: v.detach().contiguous().cpu() for k, v in model_state.items()}
    header = safetensors_file.checkpoint_header(meta)
    tensors: dict[str, Any] = {}
    structure = _flatten_optimizer(optim_state, "opt", tensors)
    what = _Failure(final, meta.get("step"), previous, resume_with, fresh)
    final.parent.mkdir(parents=True, exist_ok=True)
    needed = _nbytes(weights) + _nbytes(tensors)
    needed += int(needed * MARGIN_FRACTION) + MARGIN_BYTES
    free = shutil.disk_usage(final.parent).free
    if free < needed:
        raise UserError(f"not enough disk space for checkpoint step {what.step} in "
                        f"{final.parent}: it needs about {needed / 1e6:,.0f} MB, "
                        f"{free / 1e6:,.0f} MB are free; {what.kept()}; {what.fix('free space')}")
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        # the header says what the weights are (a file copied out of its folder keeps it);
        # fixed order throughout, so saving one state twice gives the same bytes
        safetensors_file.write(tmp / MODEL_FILE, weights, header)
        if after_weights is not None:
            after_weights()
        safetensors_file.write(tmp / OPTIM_FILE, tensors, {"format": "pt"})
        atomic.write_json(tmp / OPTIM_JSON, structure)
        meta = dict(meta, model_sha256=sha256_file(tmp / MODEL_FILE))
        atomic.write_json(tmp / META_FILE, meta)
        _replace(tmp, final)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        code = _os_error(exc)
        if code is None:
            raise
        raise UserError(what.message(code, exc)) from None
    return final


def remove_partial(checkpoints: Path) -> list[str]:
    """Remove what interrupted saves left in a checkpoints folder (a SIGKILL in mid-write:
    no ``finally`` ran); the names removed. Call it only while holding the run lock."""
    removed = []
    for pattern in PARTIAL:
        for path in sorted(Path(checkpoints).glob(pattern)):
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed.append(path.name)
    return removed


def _replace(tmp: Path, final: Path) -> None:
    # A checkpoint of the same step is moved aside, not deleted file by file: a kill never
    # leaves a visible step folder half-removed.
    old = final.with_name(f".{final.name}.old")
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.rename(final, old)
    os.rename(tmp, final)
    atomic.fsync_dir(final.parent)
    shutil.rmtree(old, ignore_errors=True)


def _nbytes(tensors: dict[str, Any]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors.values())


def _os_error(exc: BaseException) -> int | None:
    """The errno of an OSError (0 when it has none); None for anything else."""
    if isinstance(exc, OSError):
        return exc.errno or 0
    return None


class _Failure:
    """The words of a failed save: which step, where, what stays, what to do."""

    def __init__(self, final: Path, step: Any, previous: int | None, resume_with: str,
                 fresh: bool = False) -> None:
        self.final, self.step, self.previous, self.resume_with = final, step, previous, resume_with
        self.fresh = fresh

    def kept(self) -> str:
        if self.fresh:
            return (f"the new experiment {self.final.parent.parent.name} has no checkpoint yet, "
                    "so it is removed")
        if self.previous is None:
            return "no earlier checkpoint exists, so a resume starts from step 0"
        return f"the checkpoint at step {self.previous} is still the resume point"

    def fix(self, first: str) -> str:
        if self.fresh:
            return f"{first} and run the same command again (there is nothing to resume)"
        return f"{first} and resume with `{self.resume_with}`" if self.resume_with else first

    def message(self, code: int, exc: BaseException) -> str:
        where = f"checkpoint step {self.step} to {self.final.parent}"
        if code in (errno.ENOSPC, errno.EDQUOT):
            return f"no space left on device while writing {where}; {self.kept()}; " + \
                self.fix("free space")
        reason = (getattr(exc, "strerror", None) or str(exc)).splitlines()[0]
        return f"could not write {where} ({reason}); {self.kept()}; {self.fix('fix that')}"


def read_meta(folder: Path) -> dict[str, Any]:
    """meta.json of a checkpoint folder (UserError when missing or corrupt)."""
    try:
        return json.loads((folder / META_FILE).read_text())
    except FileNotFoundError:
        raise UserError(f"checkpoint {folder} has no meta.json") from None
    except (OSError, ValueError) as exc:
        raise UserError(f"checkpoint {folder} is corrupt: meta.json ({exc})") from None


# meta.json's schema: key → (accepted types, what it must be). Loading for inference needs the
# first group; resuming training needs all of them.
_META_MODEL = {"step": (int, "a step number"), "direction": (str, "a direction"),
               "model_config": (dict, "the model's shape")}
_META_RESUME = {"tokens": (int, "a token count"), "loaders": (list, "the data positions"),
                "rng": (dict, "the random-number states")}


def validate_meta(meta: Any, folder: Path, resume: bool) -> dict[str, Any]:
    """Check a checkpoint's meta.json against its schema; a UserError names the bad key. The
    direction comes back a :class:`~backlm.direction.Direction` (every reader of a checkpoint
    comes through here, so none parses the name again)."""
    from backlm.config import ModelConfig, from_dict
    from backlm.direction import Direction

    where = f"checkpoint {folder}: {META_FILE}"
    fix = "restore it from a backup, or resume from an earlier checkpoint by moving this one aside"
    if not isinstance(meta, dict):
        raise UserError(f"{where} is not a JSON object; {fix}")
    schema = {**_META_MODEL, **(_META_RESUME if resume else {})}
    for key, (kind, what) in schema.items():
        value = meta.get(key)
        if value is None:
            raise UserError(f"{where} lacks {key!r} ({what}); {fix}")
        if not isinstance(value, kind) or isinstance(value, bool) or (
                kind is int and value < 0):
            raise UserError(f"{where} has an invalid {key!r}: {value!r} is not {what}; {fix}")
    try:
        meta["direction"] = Direction.parse(meta["direction"])
        from_dict(ModelConfig, meta["model_config"])
    except UserError as exc:
        raise UserError(f"{where}: {exc}; {fix}") from None
    if resume:
        rng = meta["rng"]
        if not all(isinstance(rng.get(k), str) for k in ("torch", "python")):
            raise UserError(f"{where} has invalid random-number states; {fix}")
        if not all(isinstance(s, dict) for s in meta["loaders"]):
            raise UserError(f"{where} has invalid data positions ('loaders'); {fix}")
    return meta


def model_config(meta: dict[str, Any]) -> Any:
    """The :class:`~backlm.config.ModelConfig` a checkpoint was trained with."""
    from backlm.config import ModelConfig, from_dict

    return from_dict(ModelConfig, meta["model_config"])


def load(folder: Path, with_optimizer: bool = True, verify: bool = True) -> tuple[dict, Any, dict]:
    """Load ``(model_state, optim_state or None, meta)`` from a checkpoint folder; meta.json is
    checked against its schema (the resume keys too, ``with_optimizer``)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    meta = validate_meta(read_meta(folder), folder, resume=with_optimizer)
    weights, optim_tensors, optim_json = (folder / MODEL_FILE, folder / OPTIM_FILE,
                                          folder / OPTIM_JSON)
    # safetensors' FileNotFoundError names no file: say which one is gone before reading
    needed = [weights, optim_tensors, optim_json] if with_optimizer else [weights]
    missing = [p.name for p in needed if not p.is_file()]
    if missing:
        raise UserError(f"checkpoint {folder} is incomplete: {missing[0]} is missing")
    if verify and isinstance(meta.get("model_sha256"), str):
        if sha256_file(weights) != meta["model_sha256"]:
            raise UserError(f"checkpoint {folder} is corrupt: {MODEL_FILE} checksum mismatch")
    reading = weights.name  # named in the error: which file is damaged
    try:
        model_state = load_file(str(weights))
        optim_state = None
        if with_optimizer:
            reading = optim_json.name
            structure = json.loads(optim_json.read_text())
            reading = optim_tensors.name
            optim_state = _unflatten(structure, load_file(str(optim_tensors)))
    except (SafetensorError, OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(_corrupt(folder, reading, exc)) from None
    return model_state, optim_state, meta


def check_optimizer_files(folder: Path) -> None:
    """The optimizer's files are present and readable (structure parsed, tensor header read),
    without loading its tensors."""
    from safetensors import SafetensorError, safe_open

    reading = OPTIM_JSON
    try:
        json.loads((folder / OPTIM_JSON).read_text())
        reading = OPTIM_FILE
        with safe_open(str(folder / OPTIM_FILE), framework="pt") as f:
            f.keys()
    except FileNotFoundError:
        raise UserError(f"checkpoint {folder} is incomplete: {reading} is missing") from None
    except (SafetensorError, OSError, ValueError) as exc:
        raise UserError(_corrupt(folder, reading, exc)) from None


def _corrupt(folder: Path, name: str, exc: BaseException) -> str:
    reason = (str(exc).splitlines() or [type(exc).__name__])[0]
    return (f"checkpoint {folder} is corrupt: {name} ({reason}); resume from an earlier "
            "checkpoint by moving this one aside")
