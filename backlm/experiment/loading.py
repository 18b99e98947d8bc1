"""Loading a trained model from an experiment for evaluation, 5CAT, chat and serving."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backlm.errors import UserError
from backlm.experiment import checkpoint as ckpt
from backlm.experiment import compat
from backlm.experiment.folder import Experiment, find


@dataclass
class LoadedModel:
    """A model ready for inference, with what it needs to be used correctly."""

    exp: Experiment
    model: Any  # backlm.model.gpt.GPT, in eval mode
    tokenizer: Any  # backlm.tokenizer.Tokenizer
    direction: str  # the direction the checkpoint declares
    step: int
    meta: dict[str, Any]
    device: Any  # torch.device

    @property
    def phase(self) -> str:
        """The phase that wrote the checkpoint (its meta.json, else the experiment's)."""
        return str(self.meta.get("phase") or self.exp.phase)


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


def load_model(ref: str | Path | Experiment, root: Path | None = None, step: int | None = None,
               device: str = "auto") -> LoadedModel:
    """Load an experiment's checkpoint (id, tag or path) into an eval-mode GPT."""
    import torch

    from backlm.hardware import resolve_device
    from backlm.model.gpt import GPT
    from backlm.paths import experiments_root

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
    return LoadedModel(exp, model, tokenizer, meta["direction"], int(meta["step"]), meta, dev)
