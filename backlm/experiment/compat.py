"""Whether a checkpoint agrees with what loads it: the experiment's config, the model's
tensor shapes, the tokenizer's vocabulary and special-token ids. Each disagreement is one
UserError naming the file and the fix."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from backlm.errors import UserError
from backlm.experiment.checkpoint import META_FILE, MODEL_FILE, model_config, sha256_file


def check_run_config(cfg: Any, meta: dict[str, Any], folder: Path, config_path: Path) -> None:
    """The experiment's config must describe the checkpoint it resumes (shape, direction)."""
    trained = asdict(model_config(meta))
    for key, value in asdict(cfg.model).items():
        if trained.get(key) != value:
            raise UserError(
                f"{config_path} says model.{key}={value!r} but checkpoint {folder.name} was "
                f"trained with model.{key}={trained.get(key)!r}: restore the config the run was "
                "created with, or start a new run")
    if meta["direction"] is not cfg.data.direction:  # both typed when read
        raise UserError(
            f"{config_path} says data.direction={cfg.data.direction} but checkpoint "
            f"{folder.name} was trained {meta['direction']}: restore the config the run was "
            "created with, or branch a new run from it")


def check_weights(model: Any, state: dict[str, Any], folder: Path) -> None:
    """The weights must have exactly the tensors and shapes of the model built from the meta."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in state.items()}
    fix = "the checkpoint is corrupt or was edited; use another step or restore it"
    for key in sorted(set(expected) | set(found)):
        if key not in found:
            raise UserError(f"checkpoint {folder}: {MODEL_FILE} has no tensor {key!r}; {fix}")
        if key not in expected:
            raise UserError(f"checkpoint {folder}: {MODEL_FILE} has an unexpected tensor "
                            f"{key!r}; {fix}")
        if expected[key] != found[key]:
            raise UserError(f"checkpoint {folder}: {key} has shape {list(found[key])} in "
                            f"{MODEL_FILE} but {META_FILE}'s model_config makes it "
                            f"{list(expected[key])}; {fix}")


def tokenizer_record(tokenizer: Any) -> dict[str, Any]:
    """What a checkpoint records of the tokenizer it was trained with (checked on load)."""
    return {"vocab_size": tokenizer.vocab_size, "special_ids": asdict(tokenizer.special_ids),
            "sha256": tokenizer_hash(tokenizer)}


def tokenizer_hash(tokenizer: Any) -> str:
    """sha256 of a tokenizer's canonical JSON: equal for equal tokenizers, wherever saved."""
    import hashlib
    import json

    text = json.dumps(tokenizer.to_dict(), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def check_tokenizer(tokenizer_dir: Path, vocab_size: int, meta: dict[str, Any] | None,
                    folder: Path | None) -> Any:
    """Load the experiment's tokenizer and check it against the model's vocabulary (and the
    special-token ids the checkpoint recorded); the tokenizer, or a UserError naming the fix."""
    from backlm.tokenizer import Tokenizer

    fix = ("restore the experiment's own tokenizer/ folder (the one it was trained with), not "
           "a dataset's")
    if not Path(tokenizer_dir).exists():
        raise UserError(f"{tokenizer_dir} is missing: {fix}")
    try:
        tokenizer = Tokenizer.load(tokenizer_dir)
    except UserError as exc:
        # the loader's own advice ends its message after the last ": " and is for a dataset's
        # tokenizer; an experiment's must be its own, so only this fix is given
        raise UserError(f"{str(exc).rsplit(': ', 1)[0]}: {fix}") from None
    where = f"checkpoint {folder.name}" if folder is not None else "the model"
    if tokenizer.vocab_size != vocab_size:
        raise UserError(f"{tokenizer_dir} has {tokenizer.vocab_size} tokens but {where} has a "
                        f"{vocab_size}-token vocabulary: {fix}")
    recorded = (meta or {}).get("tokenizer")
    if isinstance(recorded, dict) and recorded.get("special_ids") not in (
            None, asdict(tokenizer.special_ids)):
        raise UserError(f"{tokenizer_dir} numbers its special tokens differently from the "
                        f"tokenizer {where} was trained with: {fix}")
    if isinstance(recorded, dict) and recorded.get("sha256") not in (
            None, tokenizer_hash(tokenizer)):
        raise UserError(f"{tokenizer_dir} is not the tokenizer {where} was trained with (its "
                        f"merges or tokens were altered): {fix}")
    return tokenizer


def load_parent_weights(exp: Any, model: Any) -> None:
    """Load the weights a branched experiment starts from (its parent link's checkpoint) into
    ``model``, after checking they are still the bytes the link recorded."""
    from safetensors.torch import load_file

    link = exp.parent_link()
    if not link or not link.get("checkpoint"):
        raise UserError(f"experiment {exp.id} is a {exp.phase} run without a parent link: "
                        "create it with `backlm branch`")
    folder = Path(link["checkpoint"])
    weights = folder / MODEL_FILE
    if not weights.is_file():
        raise UserError(f"the parent checkpoint {folder} of {exp.id} is gone: restore it, or "
                        "branch again from an existing checkpoint")
    if sha256_file(weights) != link.get("weights_sha256"):
        raise UserError(f"the parent weights {weights} changed since {exp.id} branched from "
                        "them (sha256 differs): restore them, or branch again")
    state = load_file(str(weights))
    check_weights(model, state, folder)
    model.load_state_dict(state)
