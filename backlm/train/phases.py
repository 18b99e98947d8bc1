"""The training phases: which may follow which, and what data each one trains on.

base (plain text, from scratch) → mid (conversations mixed with text) → sft (conversations, the
loss only on the turns the model writes in its direction) → rl (group-relative policy gradient
on :mod:`backlm.data.arith`). sft may also follow base. Every phase runs through the same loop
(:mod:`backlm.train.loop`); only its loaders, and rl's step (:mod:`backlm.train.rl`), differ.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from backlm.config import RunConfig
from backlm.errors import UserError

ORDER = ("base", "mid", "sft", "rl")
FOLLOWS: dict[str, tuple[str, ...]] = {"mid": ("base",), "sft": ("base", "mid"), "rl": ("sft",)}
CHAT_PHASES = ("mid", "sft")


def check_follows(phase: str, parent_phase: str, parent_id: str = "the parent") -> None:
    """Refuse a phase that cannot follow its parent's phase."""
    if phase not in FOLLOWS:
        raise UserError(f"cannot branch a {phase!r} phase: branch one of "
                        f"{', '.join(FOLLOWS)} (base runs start with `backlm train`)")
    if parent_phase not in FOLLOWS[phase]:
        allowed = " or ".join(FOLLOWS[phase])
        raise UserError(f"{article(phase)} {phase} phase cannot follow {parent_id}, "
                        f"{article(parent_phase)} {parent_phase} run: {phase} follows {allowed} "
                        "(phases go base → mid → sft → rl)")


def article(phase: str) -> str:
    """"an sft run", "an rl run", "a mid run": the article as the name is spoken."""
    return "an" if phase in ("sft", "rl") else "a"


def parse_chain(text: str) -> list[str]:
    """``base,mid,sft`` as a list of phases, each a valid child of the one before."""
    phases = [p.strip().lower() for p in text.split(",")]
    if any(p not in ORDER for p in phases):
        raise UserError(f"unknown phase in --phase {text!r}: phases are {', '.join(ORDER)}")
    if phases[0] != "base":
        raise UserError(f"a chain starts with base, got --phase {text!r}; to continue from a "
                        "trained model use `backlm branch PHASE --parent EXP`")
    for parent, child in zip(phases, phases[1:], strict=False):
        check_follows(child, parent, "the chain's previous phase")
    return phases


def plan_streams(cfg: RunConfig, world: int) -> tuple[int, int]:
    """``(streams, accum)``: fixed data streams per step and micro-steps per rank.

    Text and conversations: ``total_batch_tokens / (device_batch_size · seq_len)`` streams of
    rows. RL: one stream per prompt of the step (``rl.prompts_per_step``). Either way the
    global batch does not depend on how many processes share it.
    """
    if cfg.phase == "rl":
        streams, what = cfg.rl.prompts_per_step, "rl.prompts_per_step"
    else:
        rows = cfg.train.device_batch_size * cfg.model.seq_len
        if cfg.train.total_batch_tokens % rows:
            raise UserError(
                f"train.total_batch_tokens ({cfg.train.total_batch_tokens}) must be a multiple "
                f"of device_batch_size × seq_len ({rows})")
        streams, what = cfg.train.total_batch_tokens // rows, "train.total_batch_tokens"
    if streams % world:
        raise UserError(f"{streams} micro-batches per step cannot be split over {world} ranks: "
                        f"change {what} or the number of processes")
    return streams, streams // world


def chat_dir(cfg: RunConfig) -> Path:
    """The chat dataset's folder."""
    from backlm.paths import dataset_dir

    return dataset_dir(cfg.chat.dataset)


def read_chat(cfg: RunConfig, split: str) -> list[Any]:
    """Every conversation of the chat dataset's ``split``."""
    from backlm.data.chat import chat_shards, read_conversations

    return [c for path in chat_shards(chat_dir(cfg), split) for c in read_conversations(path)]


def train_on(cfg: RunConfig) -> str | None:
    """The turns that carry loss: mid trains on all of them, sft on ``chat.train_on``."""
    return "all" if cfg.phase == "mid" else (cfg.chat.train_on or None)


def build_loaders(cfg: RunConfig, tokenizer: Any, data_dir: Path, first: int, count: int,
                  streams: int) -> list[Any]:
    """Loaders of streams ``first .. first+count-1`` (of ``streams``) for ``cfg.phase``."""
    from backlm.data.loader import PackedLoader
    from backlm.data.shards import list_shards

    if cfg.phase == "rl":
        from backlm.train.rl import PromptStream

        return [PromptStream(cfg.train.seed, v, cfg.data.direction, cfg.data.mix)
                for v in range(first, first + count)]

    def text(v: int) -> PackedLoader:
        return PackedLoader(
            list_shards(data_dir, "train"), tokenizer, cfg.data.direction,
            batch_size=cfg.train.device_batch_size, seq_len=cfg.model.seq_len,
            seed=cfg.train.seed, mix=cfg.data.mix, rank=v, world_size=streams,
            docs_per_batch=cfg.data.docs_per_batch, buffer_docs=cfg.data.buffer_docs,
            threads=cfg.data.tokenizer_threads)

    if cfg.phase not in CHAT_PHASES:
        return [text(v) for v in range(first, first + count)]
    from backlm.data.convloader import ConversationLoader, MixedLoader

    conversations = read_chat(cfg, "train")

    def chat(v: int) -> ConversationLoader:
        return ConversationLoader(
            conversations, tokenizer, cfg.data.direction, batch_size=cfg.train.device_batch_size,
            seq_len=cfg.model.seq_len, seed=cfg.train.seed, mix=cfg.data.mix, rank=v,
            world_size=streams, train_on=train_on(cfg))

    if cfg.phase == "sft":
        return [chat(v) for v in range(first, first + count)]
    return [MixedLoader(chat(v), text(v), cfg.chat.text_frac, cfg.train.seed, v)
            for v in range(first, first + count)]


def extra_scalars(cfg: RunConfig) -> tuple[str, ...]:
    """Research-log scalars a phase adds to the base ones (known before the first step)."""
    rl = ("reward_mean", "reward_std", "zero_spread") if cfg.phase == "rl" else ()
    return (*rl, *eval_monitors(cfg.phase, cfg.data.direction))


def eval_monitors(phase: str, direction: str) -> list[str]:
    """Validation metrics a phase adds to the text ones (what early stopping may watch)."""
    from backlm.direction import eval_orders

    if phase == "rl":
        return ["val_reward", *(f"val_reward_{n}" for n, _ in eval_orders(direction) if n)]
    if phase in CHAT_PHASES:
        return ["val_chat_loss", *(f"val_chat_loss_{n}" for n, _ in eval_orders(direction) if n)]
    return []


def evaluate(tr: Any, orders: list[tuple[str, Any]]) -> dict[str, float]:
    """A phase's own validation: RL's greedy reward on held-out problems; mid and SFT's loss
    on held-out conversations (the trained turns, in every order of the run, over the same
    conversations), shared out over ranks."""
    cfg = tr.cfg
    if cfg.phase == "rl":
        from backlm.train.rl import evaluate_reward

        return evaluate_reward(tr)
    if cfg.phase not in CHAT_PHASES:
        return {}
    from backlm.data.convloader import chat_windows
    from backlm.distributed import all_reduce_mean
    from backlm.evaluation.lm import score

    if tr.chat_val is None:
        tr.chat_val = read_chat(cfg, "val")[tr.dist.rank::tr.dist.world]
    rows = max(1, cfg.train.eval_tokens // cfg.model.seq_len // tr.dist.world)
    out: dict[str, float] = {}
    for name, order in orders:
        batches = chat_windows(tr.chat_val, tr.info.tokenizer, cfg.data.direction, order,
                               train_on(cfg), cfg.train.device_batch_size, cfg.model.seq_len,
                               rows)
        sums = score(tr.info.model, batches, tr.token_bytes, tr.device, tr.autocast())
        nats, ntok = all_reduce_mean([sums.nats, sums.tokens], tr.dist, tr.device)
        out["val_chat_loss" + (f"_{name}" if name else "")] = nats / max(ntok, 1e-9)
    if len(orders) > 1:
        out["val_chat_loss"] = sum(out[f"val_chat_loss_{n}"] for n, _ in orders) / len(orders)
    return out


def check_chat_fits(cfg: RunConfig, tokenizer: Any, sample: int = 500) -> None:
    """Refuse, before anything is written, a chat dataset none of whose first ``sample``
    conversations fits a row as whole user/assistant pairs."""
    from backlm.data.chat import chat_shards, read_conversations
    from backlm.data.convloader import fit_turns
    from backlm.direction import body_capacity

    conversations = read_conversations(chat_shards(chat_dir(cfg), "train")[0])[:sample]
    for conversation in conversations:
        try:
            rendered = tokenizer.render_conversation(conversation)
        except UserError:
            continue
        if fit_turns(*map(list, rendered), body_capacity(cfg.model.seq_len)):
            return
    raise UserError(f"no conversation of the chat dataset {cfg.chat.dataset!r} (first "
                    f"{len(conversations)} tried) fits a {cfg.model.seq_len}-token row as whole "
                    "user/assistant pairs: use shorter conversations or a parent with a longer "
                    "model.seq_len")
