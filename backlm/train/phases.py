"""The training phases: which may follow which, and what data each one trains on.

base (plain text, from scratch) → mid (conversations mixed with text) → sft (conversations, the
loss only on the turns the model writes in its direction) → rl (group-relative policy gradient
on :mod:`backlm.data.arith`). sft may also follow base. Every phase runs through the same loop
(:mod:`backlm.train.loop`) and its one step; a :class:`~backlm.train.step.Phase` gives the
loaders, the loss of a micro-batch and the phase's own validation (rl's: :mod:`backlm.train.rl`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from backlm.config import RunConfig
from backlm.errors import UserError
from backlm.missing import mean_or_missing
from backlm.train.step import MicroBatch, Orders, Phase, StepRun, mean_over_orders, per_order

if TYPE_CHECKING:
    from backlm.direction import Direction

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


def plan_streams(cfg: RunConfig, world: int, phase: Phase | None = None) -> tuple[int, int]:
    """``(streams, accum)``: fixed data streams per step and micro-steps per rank, as the
    phase counts its streams (rows of text or conversations; RL: one per prompt). Either way
    the global batch does not depend on how many processes share it."""
    streams, what = (phase or phase_for(cfg)).streams()
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


class TextPhase(Phase):
    """base: next-token loss on packed rows of plain text, from scratch."""

    def loaders(self, tokenizer: Any, data_dir: Path, first: int, count: int,
                streams: int) -> list[Any]:
        return [self.text_loader(tokenizer, data_dir, v, streams)
                for v in range(first, first + count)]

    def text_loader(self, tokenizer: Any, data_dir: Path, stream: int, streams: int) -> Any:
        """The packed plain-text rows of data stream ``stream`` (of ``streams``)."""
        from backlm.data.loader import PackedLoader
        from backlm.data.shards import list_shards

        cfg = self.cfg
        return PackedLoader(
            list_shards(data_dir, "train"), tokenizer, cfg.data.direction,
            batch_size=cfg.train.device_batch_size, seq_len=cfg.model.seq_len,
            seed=cfg.train.seed, mix=cfg.data.mix, rank=stream, world_size=streams,
            docs_per_batch=cfg.data.docs_per_batch, buffer_docs=cfg.data.buffer_docs,
            threads=cfg.data.tokenizer_threads)

    def loss(self, run: StepRun, loader: Any) -> MicroBatch:
        import torch

        batch = loader.next_batch()
        x = torch.from_numpy(batch.inputs).to(run.device, non_blocking=True)
        y = torch.from_numpy(batch.targets).to(run.device, non_blocking=True)
        with run.autocast():
            loss = run.forward(x, y)
        return MicroBatch(loss, x, y)


class ChatPhase(TextPhase):
    """mid (conversations mixed with text, loss on every turn) and sft (conversations only,
    loss on ``chat.train_on``); validation adds the loss on held-out conversations."""

    from_parent = True  # mid and sft branch from a parent

    def __init__(self, cfg: RunConfig) -> None:
        super().__init__(cfg)
        self.held_out: list[Any] | None = None  # this rank's val conversations, read once

    def loaders(self, tokenizer: Any, data_dir: Path, first: int, count: int,
                streams: int) -> list[Any]:
        from backlm.data.convloader import ConversationLoader, MixedLoader

        cfg = self.cfg
        conversations = read_chat(cfg, "train")

        def chat(v: int) -> ConversationLoader:
            return ConversationLoader(
                conversations, tokenizer, cfg.data.direction,
                batch_size=cfg.train.device_batch_size, seq_len=cfg.model.seq_len,
                seed=cfg.train.seed, mix=cfg.data.mix, rank=v, world_size=streams,
                train_on=train_on(cfg))

        if cfg.phase == "sft":
            return [chat(v) for v in range(first, first + count)]
        return [MixedLoader(chat(v), self.text_loader(tokenizer, data_dir, v, streams),
                            cfg.chat.text_frac, cfg.train.seed, v)
                for v in range(first, first + count)]

    @classmethod
    def monitors(cls, direction: Direction) -> list[str]:
        from backlm.direction import eval_orders

        return ["val_chat_loss", *per_order("val_chat_loss", eval_orders(direction))]

    def evaluate(self, run: StepRun, orders: Orders) -> dict[str, float]:
        """Loss on held-out conversations: the trained turns, in every order of the run, over
        the same conversations, shared out over ranks."""
        from backlm.data.convloader import chat_windows
        from backlm.distributed import all_reduce_mean
        from backlm.evaluation.lm import score

        cfg, dist = self.cfg, run.dist
        if self.held_out is None:
            self.held_out = read_chat(cfg, "val")[dist.rank::dist.world]
        rows = max(1, cfg.train.eval_tokens // cfg.model.seq_len // dist.world)
        out: dict[str, float] = {}
        for name, order in orders:
            batches = chat_windows(self.held_out, run.info.tokenizer, cfg.data.direction, order,
                                   train_on(cfg), cfg.train.device_batch_size,
                                   cfg.model.seq_len, rows)
            sums = score(run.info.model, batches, run.token_bytes, run.device, run.autocast())
            nats, ntok = all_reduce_mean([sums.nats, sums.tokens], dist, run.device)
            out["val_chat_loss" + (f"_{name}" if name else "")] = mean_or_missing(nats, ntok)
        mean_over_orders(out, "val_chat_loss", orders)
        return out


def phase_class(phase: str) -> type[Phase]:
    """The :class:`~backlm.train.step.Phase` that trains ``phase`` runs."""
    if phase == "rl":
        from backlm.train.rl import RLPhase

        return RLPhase
    return ChatPhase if phase in CHAT_PHASES else TextPhase


def phase_for(cfg: RunConfig) -> Phase:
    """The phase ``cfg`` trains, ready for the loop."""
    return phase_class(cfg.phase)(cfg)


def build_loaders(cfg: RunConfig, tokenizer: Any, data_dir: Path, first: int, count: int,
                  streams: int) -> list[Any]:
    """Loaders of streams ``first .. first+count-1`` (of ``streams``) for ``cfg.phase``."""
    return phase_for(cfg).loaders(tokenizer, data_dir, first, count, streams)


def eval_monitors(phase: str, direction: Direction) -> list[str]:
    """Validation metrics a phase adds to the text ones (what early stopping may watch)."""
    return phase_class(phase).monitors(direction)


def check_chat_fits(cfg: RunConfig, tokenizer: Any, sample: int = 500) -> None:
    """Refuse, before anything is written, a chat dataset none of whose first ``sample``
    training conversations fits a row as whole user/assistant pairs, or none of whose
    validation conversations does (validation would score no token: no val_chat_loss)."""
    from backlm.data.chat import chat_shards, read_conversations
    from backlm.data.convloader import fit_turns
    from backlm.direction import body_capacity

    def fits(conversation: Any) -> bool:
        try:
            rendered = tokenizer.render_conversation(conversation)
        except UserError:
            return False
        return bool(fit_turns(*map(list, rendered), body_capacity(cfg.model.seq_len)))

    conversations = read_conversations(chat_shards(chat_dir(cfg), "train")[0])[:sample]
    if not any(fits(c) for c in conversations):
        raise UserError(f"no conversation of the chat dataset {cfg.chat.dataset!r} (first "
                        f"{len(conversations)} tried) fits a {cfg.model.seq_len}-token row as "
                        "whole user/assistant pairs: use shorter conversations or a parent with "
                        "a longer model.seq_len")
    held_out = [c for path in chat_shards(chat_dir(cfg), "val") for c in read_conversations(path)]
    if not any(fits(c) for c in held_out):
        raise UserError(f"no validation conversation of the chat dataset {cfg.chat.dataset!r} "
                        f"({len(held_out)}) fits a {cfg.model.seq_len}-token row, so "
                        "val_chat_loss would be measured over no token: add shorter val "
                        "conversations or use a parent with a longer model.seq_len")
