"""Whether an existing experiment (or a stored result) is the one asked for.

A run is defined by its direction, phase, parent (id and checkpoint step), model shape, dataset,
tokenizer (sha256), seed and the config fields that change what it learns. How it is executed
or watched (device, precision, batch split, cadences, logging, 5CAT, early stopping, cost) and
how long it runs (``train.max_steps``, extended on resume) do not define it.

:func:`run_identity` writes that record for a config (what is asked); :func:`differs` compares
an existing experiment (or any record, e.g. a stored evaluation's) with an asked record and
returns the first field that differs. Skipping, resuming or reusing is only sound when it
returns None.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from backlm.config import RunConfig, keys

# Config keys (or their section prefixes) that say how a run is executed, watched or how long
# it runs, not what it is: equal runs may differ in them.
NOT_DEFINING = (
    "id", "description", "data.direction", "data.tokenizer_threads", "train.max_steps",
    "train.device", "train.dtype", "train.compile", "train.device_batch_size",
    "train.eval_every", "train.eval_tokens", "train.eval_at_start", "train.save_every",
    "train.log_every", "log.", "fivecat.", "early_stop.", "cost.",
)


# Config sections only some phases read: a run of another phase is not defined by them.
PHASE_SECTIONS = {"chat.": ("mid", "sft"), "rl.": ("rl",)}


def _used(name: str, phase: str) -> bool:
    return all(phase in phases for section, phases in PHASE_SECTIONS.items()
               if name.startswith(section))


@dataclass(frozen=True)
class Difference:
    """The first field where an existing thing and the asked one disagree."""

    field: str
    existing: Any
    asked: Any

    def __str__(self) -> str:
        return (f"{self.field}={_show(self.existing)} in the existing experiment, "
                f"{self.field}={_show(self.asked)} asked")


def _show(value: Any) -> str:
    return "unset" if value is None else str(value)


def defining(name: str) -> bool:
    """Whether the config key ``name`` defines a run (see :data:`NOT_DEFINING`)."""
    return not any(name == k or (k.endswith(".") and name.startswith(k)) for k in NOT_DEFINING)


def run_identity(cfg: RunConfig, *, parent_id: str | None = None,
                 parent_step: int | None = None, tokenizer_sha256: str | None = None,
                 every_key: bool = False, known_parent: bool = True) -> dict[str, Any]:
    """The record that defines a run of ``cfg``: direction, phase, parent, tokenizer, then
    every defining config key (``every_key``: every key but the id, as a resume must keep them).

    Pass what is not known yet as None with ``known_parent`` False (no parent compared) or
    ``tokenizer_sha256`` None (no tokenizer compared): a field absent from the asked record is
    not compared.
    """
    record: dict[str, Any] = {"direction": str(cfg.data.direction), "phase": cfg.phase}
    if known_parent:
        record["parent_id"] = parent_id
        if parent_step is not None:
            record["parent_step"] = parent_step
    if tokenizer_sha256 is not None:
        record["tokenizer_sha256"] = tokenizer_sha256
    for key in keys(cfg):
        if key.name in ("id", "data.direction"):
            continue
        if every_key or (defining(key.name) and _used(key.name, cfg.phase)):
            record[key.name] = key.value
    return record


def experiment_identity(exp: Any) -> dict[str, Any]:
    """The record of an existing experiment, read from its config, parent link and tokenizer
    (a part that cannot be read is None, so it differs from any asked value)."""
    from backlm.errors import UserError
    from backlm.experiment.compat import tokenizer_hash
    from backlm.tokenizer import Tokenizer

    link = exp.parent_link() or {}
    try:
        sha = tokenizer_hash(Tokenizer.load(exp.tokenizer_dir))
    except (UserError, OSError, ValueError, KeyError):
        sha = None
    try:
        cfg = exp.config()
    except (UserError, OSError, ValueError, KeyError, TypeError):
        meta = exp.metadata()
        return {"direction": str(meta.get("direction")), "phase": meta.get("phase"),
                "parent_id": link.get("parent_id"), "parent_step": link.get("step"),
                "tokenizer_sha256": sha}
    return run_identity(cfg, parent_id=link.get("parent_id"), parent_step=link.get("step"),
                        tokenizer_sha256=sha, every_key=True)


def differs(existing: Any, asked: Mapping[str, Any],
            ignore: Collection[str] = ()) -> Difference | None:
    """The first field of ``asked`` whose value ``existing`` (an Experiment, or a record such as
    a stored result) does not have, or None when it is the one asked for. Fields of ``asked``
    only are compared (what is unknown is left out of it), in its order; ``ignore`` names
    fields that may differ (e.g. ``train.max_steps`` when a resume extends a run)."""
    record = existing if isinstance(existing, Mapping) else experiment_identity(existing)
    for name, want in asked.items():
        if name in ignore:
            continue
        have = record.get(name)
        if _norm(have) != _norm(want):
            return Difference(name, have, want)
    return None


def _norm(value: Any) -> Any:
    """Equal values in every form they are stored in (tuples as lists, enums as names)."""
    if isinstance(value, list | tuple):
        return [_norm(v) for v in value]
    if isinstance(value, str):
        return str(value)  # a str-enum (Direction) as its plain name
    return value
