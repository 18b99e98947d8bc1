"""Loading a trained model for evaluation, 5CAT, chat and serving: from an experiment's
checkpoint, or from a hub model folder as ``backlm upload`` stages it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backlm.direction import Direction
from backlm.errors import UserError
from backlm.experiment import checkpoint as ckpt
from backlm.experiment import compat
from backlm.experiment.folder import Experiment, find


@dataclass
class LoadedModel:
    """A model ready for inference, with what it needs to be used correctly."""

    exp: Experiment | None  # None for a hub model folder
    model: Any  # backlm.model.gpt.GPT, in eval mode
    tokenizer: Any  # backlm.tokenizer.Tokenizer
    direction: Direction  # the direction the checkpoint declares
    step: int
    meta: dict[str, Any]
    device: Any  # torch.device

    @property
    def phase(self) -> str:
        """The phase that wrote the checkpoint (its meta.json, else the experiment's)."""
        return str(self.meta.get("phase") or (self.exp.phase if self.exp else "base"))

    @property
    def name(self) -> str:
        """The experiment's id (a hub folder keeps the id it was staged from)."""
        return self.exp.id if self.exp else str(self.meta.get("experiment") or "model")


def chosen_step(exp: Experiment, step: int | None = None) -> int:
    """``step`` if it has a checkpoint; default: the best step (``best.json``), else the
    latest."""
    steps = exp.checkpoint_steps()
    if not steps:
        raise UserError(f"experiment {exp.id} has no checkpoint yet: train it first")
    if step is None:
        best = (exp.best("val") or {}).get("step")
        return best if isinstance(best, int) and best in steps else steps[-1]
    if step not in steps:
        shown = ", ".join(str(s) for s in steps[-10:])
        raise UserError(f"experiment {exp.id} has no checkpoint at step {step} "
                        f"(available: {shown})")
    return step


def pick_checkpoint(exp: Experiment, step: str | None, verb: str,
                    kinds: tuple[str, ...] = ("best", "latest")) -> tuple[Path, int]:
    """A checkpoint named on the command line: ``best`` (the default when one was recorded),
    ``best_5cat`` (when in ``kinds``), ``latest`` (the default otherwise) or a step number.
    ``verb`` says what it is for in messages ("branch from", "upload")."""
    steps = exp.checkpoint_steps()
    if not steps:
        raise UserError(f"experiment {exp.id} has no checkpoint to {verb}: train it first "
                        f"(`backlm train --resume {exp.id}`)")
    text = (step or "").strip().lower()
    shown = ", ".join(map(str, steps[-10:]))
    if text in ("latest", "last") or (not text and exp.best("val") is None):
        return exp.checkpoint_dir(steps[-1]), steps[-1]
    if text in ("", "best") or (text == "best_5cat" and text in kinds):
        kind = "5cat" if text == "best_5cat" else "val"
        record, name = exp.best(kind), exp.best_path(kind).name
        chosen = (record or {}).get("step")
        if not isinstance(chosen, int) or chosen not in steps:
            why = (f"no {name} was recorded" if record is None
                   else f"{name} names step {chosen}, which is not on disk")
            raise UserError(f"experiment {exp.id} has no best checkpoint on disk ({why}): give "
                            f"--step latest or one of {shown}")
        return exp.checkpoint_dir(chosen), chosen
    if not (text.isascii() and text.isdigit()):  # int() takes digits such as "²"
        raise UserError(f"--step {step!r} is not a step: give {', '.join(kinds)} or one of "
                        f"{shown}")
    if int(text) not in steps:
        raise UserError(f"experiment {exp.id} has no checkpoint at step {int(text)}: it has "
                        f"{shown}")
    return exp.checkpoint_dir(int(text)), int(text)


def resolve_step(exp: Experiment, step: int | None) -> Path:
    """Checkpoint folder for ``step`` (default: :func:`chosen_step`'s)."""
    return exp.checkpoint_dir(chosen_step(exp, step))


def decode_precision(run_dtype: str | None, device: Any, asked: str | None = None) -> str:
    """The precision a loaded model decodes in: ``asked`` (fp32 or bf16) when given, else the
    run's (``run_dtype``, from the experiment's metadata) where the device computes bf16 in
    hardware (CUDA, or a CPU with AVX512-BF16 or AMX); fp32 otherwise."""
    from backlm.hardware import cpu_has_native_bf16

    if asked is not None:
        if asked not in ("fp32", "bf16"):
            raise UserError(f"unknown decode dtype {asked!r}: use fp32 or bf16")
        return asked
    if run_dtype == "bf16" and (getattr(device, "type", device) == "cuda"
                                or cpu_has_native_bf16()):
        return "bf16"
    return "fp32"


def _set_decode_dtype(model: Any, precision: str) -> None:
    import torch

    # the one place the generation engine reads it (backlm.model.decode.decode_dtype)
    model.decode_dtype = torch.bfloat16 if precision == "bf16" else torch.float32


def load_model(ref: str | Path | Experiment, root: Path | None = None, step: int | None = None,
               device: str = "auto", decode_dtype: str | None = None) -> LoadedModel:
    """Load an experiment's checkpoint (id, tag or path), or a hub model folder (a path holding
    ``model.safetensors`` and backlm's tokenizer), into an eval-mode GPT. It decodes in
    ``decode_dtype`` (fp32 or bf16; default :func:`decode_precision`: the run's precision)."""
    import torch

    from backlm.hardware import resolve_device
    from backlm.model.gpt import GPT
    from backlm.paths import experiments_root

    if not isinstance(ref, Experiment) and (Path(ref) / ckpt.MODEL_FILE).exists():
        loaded = load_hub_folder(Path(ref), device)
        _set_decode_dtype(loaded.model, decode_precision(None, loaded.device, decode_dtype))
        return loaded
    exp = ref if isinstance(ref, Experiment) else find(str(ref), root or experiments_root())
    folder = resolve_step(exp, step)
    state, _, meta = ckpt.load(folder, with_optimizer=False)
    cfg = ckpt.model_config(meta)
    # the tokenizer must be the model's own before any number is computed with it
    tokenizer = compat.check_tokenizer(exp.tokenizer_dir, cfg.vocab_size, meta, folder)
    dev = torch.device(resolve_device(device, "fp32").device)
    try:
        model = GPT(cfg)
    except ValueError as exc:
        raise UserError(f"checkpoint {folder}: its model_config cannot build a model ({exc})"
                        ) from None
    compat.check_weights(model, state, folder)
    model.load_state_dict(state)
    model.to(dev).eval()
    run_dtype = exp.metadata().get("dtype") if exp.metadata_path.exists() else None
    _set_decode_dtype(model, decode_precision(run_dtype, dev, decode_dtype))
    return LoadedModel(exp, model, tokenizer, meta["direction"], int(meta["step"]), meta, dev)


def load_hub_folder(folder: Path, device: str = "auto") -> LoadedModel:
    """A hub model folder: the weights' safetensors header says the direction, the model
    config, phase and step, and the tokenizer beside them must be the one it names.

    backlm's tokenizer is ``backlm_tokenizer.json`` beside the weights (the folder's
    ``tokenizer.json`` is Hugging Face's); folders staged before that hold it in
    ``tokenizer/``."""
    import json

    import torch
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    from backlm.config import ModelConfig, from_dict
    from backlm.hardware import resolve_device
    from backlm.model.gpt import GPT
    from backlm.tokenizer import TOKENIZER_FILE, Tokenizer

    weights = folder / ckpt.MODEL_FILE
    legacy = folder / "tokenizer"
    tokenizer_dir = legacy if legacy.is_dir() and not (folder / TOKENIZER_FILE).exists() \
        else folder
    _must_be(weights, "file")
    try:
        with safe_open(str(weights), framework="pt") as f:
            header = f.metadata() or {}
        state = load_file(str(weights))
    except (OSError, SafetensorError) as exc:
        raise UserError(f"{weights} cannot be read as safetensors ({exc}): download the "
                        "folder again") from None
    needed = ("direction", "model_config", "step", "tokenizer_sha256")
    if any(k not in header for k in needed):
        raise UserError(f"{weights} has no backlm header ({', '.join(needed)}): load a folder "
                        "that `backlm upload` staged, or an experiment")
    try:
        cfg = from_dict(ModelConfig, json.loads(header["model_config"]))
    except (ValueError, TypeError) as exc:
        raise UserError(f"{weights}: its model_config is not a model config ({exc})") from None
    if tokenizer_dir == folder:
        _must_be(folder / TOKENIZER_FILE, "file")
    tokenizer = Tokenizer.load(tokenizer_dir)
    if compat.tokenizer_hash(tokenizer) != header["tokenizer_sha256"]:
        raise UserError(f"the tokenizer file in {tokenizer_dir} is not the tokenizer "
                        f"{weights.name} was trained with (its sha256 differs): download the folder again")
    model = GPT(cfg)
    compat.check_weights(model, state, folder)
    model.load_state_dict(state)
    dev = torch.device(resolve_device(device, "fp32").device)
    model.to(dev).eval()
    meta = {**{k: header.get(k) for k in ("phase", "experiment", "usage")},
            "model_config": dict(vars(cfg))}
    return LoadedModel(None, model, tokenizer, Direction.parse(header["direction"]),
                       int(header["step"]), meta, dev)


def _must_be(path: Path, kind: str) -> None:
    if not (path.is_file() if kind == "file" else path.is_dir()):
        raise UserError(f"{path} is not a {kind}: a hub model folder holds the weights file and "
                        "backlm's tokenizer file beside it; download the whole folder again")
