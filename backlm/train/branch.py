"""Branching: a child experiment from a parent checkpoint, and the exact record of it.

The child inherits direction and model shape from the parent checkpoint's meta.json and the
tokenizer from the parent's folder (never guessed); its config is the parent's config, then
the phase's defaults (``configs/phases.yaml``), then ``--config``, ``--set`` and flags.
``parent_link.json`` names the checkpoint, its step, the sha256 of its weights and of the
tokenizer, the parent phase and the chain from the root. The child starts from exactly those
weights: :func:`backlm.experiment.compat.load_parent_weights` checks the hash again before training.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backlm.config import (
    CONFIG_DIR,
    RunConfig,
    deep_merge,
    flatten,
    from_dict,
    preset_path,
    read_yaml,
    to_dict,
    user_layer,
)
from backlm.errors import UserError
from backlm.experiment import checkpoint as ckpt
from backlm.experiment import compat
from backlm.experiment import folder as xp
from backlm.train.phases import CHAT_PHASES, FOLLOWS, check_chat_fits, check_follows

PHASE_DEFAULTS = CONFIG_DIR / "phases.yaml"
@dataclass
class Branch:
    """A validated branch: everything the child will be, before anything is written."""

    parent: xp.Experiment
    checkpoint: Path
    step: int
    cfg: RunConfig
    link: dict[str, Any]
    inherited: list[tuple[str, str]]  # (what, value) taken from the parent checkpoint
    overridden: list[tuple[str, Any, Any]]  # (key, parent value, child value)
    prepare_chat: bool = False
    warnings: list[str] = field(default_factory=list)


def choose_checkpoint(parent: xp.Experiment, step: str | None) -> tuple[Path, int]:
    """The parent checkpoint a branch starts from: ``best`` (the default when the parent
    recorded one), a step number, or ``latest`` (the default otherwise)."""
    from backlm.experiment.loading import pick_checkpoint

    return pick_checkpoint(parent, step, "branch from")


def child_config(phase: str, parent_cfg: RunConfig, meta: dict[str, Any], preset: str | None,
                  overrides: list[str] | None, flags: dict[str, Any]) -> tuple[RunConfig, set]:
    """The child's config and the keys the user set explicitly (``--config`` counts: a
    direction or description it gives is the child's; a shape, phase or id, which the branch
    takes elsewhere, is refused)."""
    user = user_layer(overrides, flags)  # a --set that a flag would replace is refused
    explicit = set(flatten(user))
    shaped = sorted(k for k in explicit if k.startswith("model."))
    if shaped:
        raise UserError(f"{shaped[0]} cannot be set on a branch: the model's shape comes from "
                        "the parent checkpoint; branch from another parent, or train a new base")
    data = deep_merge(to_dict(parent_cfg), read_yaml(PHASE_DEFAULTS).get(phase) or {})
    if preset:
        given = read_yaml(preset_path(preset))
        _refuse_replaced(preset, given, phase)
        user = deep_merge(given, user)
        explicit |= set(flatten(given))
    data = deep_merge(data, user)
    data.update(phase=phase, model=dict(meta["model_config"]),
                description=user.get("description", ""))
    data["data"] = dict(data.get("data") or {}, direction=user.get("data", {}).get(
        "direction", meta["direction"]))
    return from_dict(RunConfig, data), explicit


def _refuse_replaced(preset: str, given: dict[str, Any], phase: str) -> None:
    """A ``--config`` key a branch would replace: the model's shape (the parent
    checkpoint's), the phase (the command's), the id (``--id``)."""
    for key, value in flatten(given).items():
        if key.startswith("model."):
            raise UserError(f"--config {preset} sets {key}, but a branch takes the model's shape "
                            "from the parent checkpoint: drop it from the file")
        if key == "phase" and str(value).strip().lower() != phase:
            raise UserError(f"--config {preset} sets phase: {value}, but this branch trains "
                            f"{phase}: drop it from the file")
        if key == "id" and value not in (None, ""):
            raise UserError(f"--config {preset} sets id: {value}; a branch takes its id from "
                            "--id: drop it from the file")


def plan_branch(phase: str, parent_ref: str, root: Path, *, step: str | None = None,
                exp_id: str | None = None, preset: str | None = None,
                overrides: list[str] | None = None, flags: dict[str, Any] | None = None,
                allow_direction_change: bool = False, world: int = 1,
                given_for: tuple[str, ...] = ()) -> Branch:
    """Validate a branch completely (nothing is written): parent, phase order, checkpoint,
    weights hash, tokenizer, direction change, the child's config, device, id and data.
    ``given_for``: the phases the ``--set`` values are for (``backlm branch``: the child's
    own), so a chat or rl key none of them reads is refused; a chain's member passes none,
    since its ``--set`` serves every member."""
    from backlm.paths import check_writable
    from backlm.train.plan import check_config, check_device

    phase = phase.strip().lower()
    if phase not in FOLLOWS:
        check_follows(phase, "")  # an unknown phase, refused before the parent is looked up
    parent = xp.find(parent_ref, root)
    pmeta = parent.metadata()
    check_follows(phase, str(pmeta.get("phase")), parent.id)
    folder, chosen = choose_checkpoint(parent, step)
    meta = ckpt.validate_meta(ckpt.read_meta(folder), folder, resume=False)
    weights = folder / ckpt.MODEL_FILE
    if not weights.is_file():
        raise UserError(f"checkpoint {folder} is incomplete: {ckpt.MODEL_FILE} is missing")
    sha = ckpt.sha256_file(weights)
    if meta.get("model_sha256") not in (None, sha):
        raise UserError(f"checkpoint {folder} is corrupt: {ckpt.MODEL_FILE} checksum mismatch; "
                        "branch from another --step")
    model_cfg = ckpt.model_config(meta)
    tokenizer = compat.check_tokenizer(parent.tokenizer_dir, model_cfg.vocab_size, meta, folder)
    try:
        parent_cfg = parent.config()
    except UserError as exc:
        raise UserError(f"{exc} (the parent's {parent.config_path.name})") from None
    cfg, explicit = child_config(phase, parent_cfg, meta, preset, overrides, flags or {})
    old, new = meta["direction"], cfg.data.direction  # both typed when read
    if new is not old and not allow_direction_change:
        raise UserError(f"{parent.id} was trained {old}; training its child {new} changes the "
                        "direction: add --allow-direction-change to do it on purpose")
    cfg.id = exp_id if exp_id is not None else cfg.id if "id" in explicit else ""
    if exp_id is not None and not exp_id.strip():
        raise UserError("--id is empty: give a name, or leave --id out for the default")
    check_config(cfg, world)
    _check_used(cfg, explicit, given_for, phase, parent_cfg, meta, preset)
    exp_id = xp.check_id(cfg.id or xp.new_id(phase, new, model_cfg.depth))
    cfg.id = exp_id
    check_writable(Path(root), "the experiments folder",
                   "choose another with --experiments-dir or BACKLM_EXPERIMENTS")
    xp.check_free_id(Path(root), exp_id, "choose another --id (siblings never share a folder)",
                     resume=False)
    check_text_data(cfg, phase)
    prepare = check_chat_data(cfg) if phase in CHAT_PHASES else False
    if phase in CHAT_PHASES and not prepare:
        check_chat_fits(cfg, tokenizer)
    warning = check_device(cfg, world)
    ancestors = (parent.parent_link() or {})
    link = {
        "parent_id": parent.id, "parent_path": str(parent.path.resolve()),
        "checkpoint": str(folder.resolve()), "step": chosen, "weights_sha256": sha,
        "parent_phase": pmeta.get("phase"), "parent_direction": old, "direction": new,
        "direction_change": {"from": old, "to": new} if new is not old else None,
        "tokenizer_sha256": compat.tokenizer_hash(tokenizer),
        "chain": [*ancestors.get("chain", []), str(parent.path.resolve())],
        "chain_ids": [*ancestors.get("chain_ids", []), parent.id],
        "init_lr_frac": cfg.optim.init_lr_frac, "created": xp.utcnow(),
    }
    inherited = [("direction", old), ("model", _shape(model_cfg)),
                 ("tokenizer", f"{tokenizer.vocab_size} tokens, sha256 "
                               f"{link['tokenizer_sha256'][:12]}"),
                 ("weights", f"{parent.id} step {chosen}, sha256 {sha[:12]}")]
    before, after = flatten(to_dict(parent_cfg)), flatten(to_dict(cfg))
    changed = [(k, before.get(k), v) for k, v in after.items()
               if before.get(k) != v and k not in ("id", "description", "phase")]
    return Branch(parent, folder, chosen, cfg, link, inherited, changed, prepare,
                  [warning] if warning else [])


def _check_used(cfg: RunConfig, explicit: set[str], given_for: tuple[str, ...], phase: str,
                parent_cfg: RunConfig, meta: dict[str, Any], preset: str | None) -> None:
    """Refuse a value the child would not read (data.mix for a one-direction child; a chat or
    rl key the phases of ``given_for`` do not read), unless it is the child's value anyway."""
    from backlm.train.plan import check_used

    baseline, _ = child_config(phase, parent_cfg, meta, None, None, {})
    check_used(cfg, explicit, given_for, baseline)


def _shape(m: Any) -> str:
    return (f"depth {m.depth}, width {m.model_dim}, {m.n_heads} heads, vocab {m.vocab_size}, "
            f"seq {m.seq_len}")


def check_text_data(cfg: RunConfig, phase: str) -> None:
    """A phase that reads text (base; mid mixes it in) refuses a chat dataset as data.dataset."""
    from backlm.data.shards import require_kind
    from backlm.paths import dataset_dir

    if phase in ("base", "mid"):
        require_kind(dataset_dir(cfg.data.dataset), "text", f"data.dataset (a {phase} run)")


def check_chat_data(cfg: RunConfig) -> bool:
    """Whether the default chat data must be built first (another chat dataset must exist)."""
    from backlm.data.chat import CHAT_DATASET
    from backlm.data.shards import require_kind
    from backlm.paths import check_writable, dataset_dir

    folder = dataset_dir(cfg.chat.dataset)
    if any(folder.glob("train_*.parquet")):
        require_kind(folder, "chat", f"chat.dataset (a {cfg.phase} run)")
        return False
    if cfg.chat.dataset != CHAT_DATASET:
        raise UserError(f"chat dataset {cfg.chat.dataset!r} has no train shards in {folder}: "
                        "import it with `backlm data import --chat` or fetch one with "
                        "`backlm data download --task smoltalk`")
    check_writable(folder, "the data folder (BACKLM_HOME)", "set BACKLM_HOME to a writable folder")
    return True


def _data_dir(branch: Branch, pmeta: dict[str, Any]) -> str | None:
    """The child's text data: the parent's folder, unless the child names another dataset
    (``--set data.dataset=...``), which it then trains on (the reversal probe's facts)."""
    from backlm.paths import dataset_dir

    if branch.cfg.data.dataset == branch.parent.config().data.dataset:
        return pmeta.get("data_dir")
    return str(dataset_dir(branch.cfg.data.dataset).resolve())


def create_child(branch: Branch, root: Path, say: Callable[[str], None]) -> xp.Experiment:
    """Write the child experiment the plan describes (building the default chat data first
    when it is missing)."""
    from backlm.config import to_yaml
    from backlm.experiment import provenance

    cfg = branch.cfg
    if branch.prepare_chat:
        from backlm.data.chat import prepare_chat
        from backlm.train.phases import chat_dir

        say(f"no chat data yet: building the embedded conversations in {chat_dir(cfg)}")
        prepare_chat(chat_dir(cfg))
    pmeta = branch.parent.metadata()
    metadata = {
        "id": cfg.id, "name": cfg.id, "description": cfg.description, "phase": cfg.phase,
        "direction": cfg.data.direction, "depth": cfg.model.depth, "parent": branch.parent.id,
        "created": xp.utcnow(), "finished": None, "status": "created",
        "git_commit": provenance.git_commit(), "command": provenance.command_line(),
        "data_dir": _data_dir(branch, pmeta), **provenance.environment(), "results": None,
    }
    return xp.create(root, cfg.id, config_yaml=to_yaml(cfg), metadata=metadata,
                     parent_link=branch.link, tokenizer_dir=branch.parent.tokenizer_dir)
