"""The run configuration's dataclasses: every field with its default, its help and, where a
value can be out of range, the range (one source for validation and ``backlm config show``)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from backlm.direction import Direction
from backlm.errors import UserError

PHASES = ("base", "mid", "sft", "rl")  # base trains from scratch; the others branch
WANDB_MODES = ("auto", "online", "offline", "off")


def opt(default: Any = dataclasses.MISSING, help: str = "", *, need: str = "",
        check: Callable[[Any], bool] | None = None,
        factory: Callable[[], Any] | None = None) -> Any:
    """A config field: its default, its help and, with ``check``, the range it must be in
    (``need`` says it in words, as the error and ``backlm config show`` print it)."""
    meta = {"help": help, "need": need, "check": check}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def between(lo: float, hi: float) -> Callable[[Any], bool]:
    """A check: ``lo <= value <= hi``."""
    return lambda v: lo <= v <= hi


def at_least(lo: float) -> Callable[[Any], bool]:
    """A check: ``value >= lo``."""
    return lambda v: v >= lo


def one_of(*names: str) -> Callable[[Any], bool]:
    """A check: the value is one of ``names``."""
    return lambda v: v in names


POSITIVE = dict(check=at_least(0), need="0 or positive")
OFF_OR_MORE = dict(check=at_least(0), need="0 (off) or more")
ONE_OR_MORE = dict(check=at_least(1), need="at least 1")
FRACTION = dict(check=between(0, 1), need="between 0 and 1")


@dataclass
class DataConfig:
    """Where training text comes from and how it becomes batches."""

    dataset: str = opt("pydocs", "the dataset folder under $BACKLM_HOME/data")
    direction: Direction = opt(Direction.FORWARD, "the order the model reads and writes",
                               need="forward, backward or bidirectional")
    mix: float = opt(0.5, "bidirectional: probability that a document is rendered backward",
                     check=between(0, 1), need="a probability between 0 and 1")
    tokenizer_threads: int = opt(2, "threads that tokenize documents", **ONE_OR_MORE)
    docs_per_batch: int = opt(256, "documents tokenized together", **ONE_OR_MORE)
    buffer_docs: int = opt(512, "best-fit packing candidates kept in memory", **ONE_OR_MORE)

    def __post_init__(self) -> None:
        self.direction = Direction.parse(self.direction)  # a name given in Python, too


@dataclass
class ModelConfig:
    """GPT shape. ``width`` 0 means ``64 * depth``; heads are ``width // head_dim``."""

    depth: int = opt(4, "transformer blocks", **ONE_OR_MORE)
    width: int = opt(0, "model width; 0 means 64 × depth", check=at_least(0),
                     need="0 (64 × depth) or a positive width")
    head_dim: int = opt(128, "width of one attention head", check=lambda v: v >= 2 and v % 2 == 0,
                        need="an even number, at least 2 (rotary)")
    vocab_size: int = opt(8192, "tokenizer vocabulary, special tokens included")
    seq_len: int = opt(512, "tokens per row", check=at_least(8), need="at least 8 tokens")
    softcap: float = opt(15.0, "tanh logit softcap", check=at_least(0), need="0 (off) or positive")
    rope_base: float = opt(10000.0, "rotary base", check=lambda v: v > 1, need="greater than 1")

    @property
    def model_dim(self) -> int:
        return self.width or 64 * self.depth

    @property
    def n_heads(self) -> int:
        return max(1, self.model_dim // self.head_dim)


@dataclass
class OptimConfig:
    """Muon for hidden matrices, AdamW for embeddings, head and scalars."""

    matrix_lr: float = opt(0.02, "Muon learning rate of the hidden matrices", **POSITIVE)
    embedding_lr: float = opt(0.2, "AdamW learning rate of the token embedding", **POSITIVE)
    unembedding_lr: float = opt(0.004, "AdamW learning rate of the output head", **POSITIVE)
    scalar_lr: float = opt(0.04, "AdamW learning rate of scalars", **POSITIVE)
    weight_decay: float = opt(0.0, "AdamW weight decay", **POSITIVE)
    adam_betas: tuple[float, float] = opt((0.8, 0.95), "AdamW betas",
                                          check=lambda v: all(0 <= b < 1 for b in v),
                                          need="two values in [0, 1)")
    muon_momentum: float = opt(0.95, "Muon momentum", check=lambda v: 0 <= v < 1,
                               need="in [0, 1)")
    warmup_steps: int = opt(0, "steps of linear warmup", check=at_least(0), need="0 or more")
    warmdown_frac: float = opt(0.2, "share of the steps in the final linear warmdown",
                               **FRACTION)
    final_lr_frac: float = opt(0.0, "learning rate at the end, as a share of the peak",
                               **FRACTION)
    grad_clip: float = opt(0.0, "gradient-norm clip", check=at_least(0),
                           need="0 (off) or positive")
    ns_steps: int = opt(5, "Newton–Schulz iterations in Muon", **ONE_OR_MORE)
    muon_momentum_warmup_steps: int = opt(0, "steps to warm Muon's momentum up (0: constant)",
                                          check=at_least(0), need="0 or more")
    muon_momentum_start: float = opt(0.85, "Muon momentum at step 0 when warming up",
                                     check=lambda v: 0 <= v < 1, need="in [0, 1)")
    init_lr_frac: float = opt(1.0, "every rate × this (a branch's --init-lr-frac)",
                              check=lambda v: 0 < v <= 10, need="in (0, 10]")


@dataclass
class TrainConfig:
    """The training loop: batch, schedule length, evaluation and checkpoint cadence."""

    max_steps: int = opt(1000, "optimizer steps", **ONE_OR_MORE)
    total_batch_tokens: int = opt(4096, "tokens per optimizer step, across ranks and "
                                  "accumulation", **ONE_OR_MORE)
    device_batch_size: int = opt(8, "rows per forward pass", **ONE_OR_MORE)
    eval_every: int = opt(100, "steps between validations", **ONE_OR_MORE)
    eval_tokens: int = opt(32768, "validation tokens: whole val documents from the start",
                           **ONE_OR_MORE)
    eval_at_start: bool = opt(True, "validate before the first step (every curve's starting "
                              "point); false trains at once")
    save_every: int = opt(500, "steps between checkpoints", **ONE_OR_MORE)
    log_every: int = opt(1, "steps between logged records", **ONE_OR_MORE)
    seed: int = opt(42, "seed of the data order, the weights and sampling",
                    check=between(0, 2**63 - 1), need="between 0 and 2**63-1")
    device: str = opt("auto", "auto, cpu, cuda or cuda:N")
    dtype: str = opt("auto", "compute precision", check=one_of("auto", "fp32", "bf16"),
                     need="auto, fp32 or bf16")
    compile: bool = opt(False, "torch.compile the model")


@dataclass
class LogConfig:
    """Research logging (metrics.jsonl is always written; see backlm.logs.hdf5 for the schema).

    A frequency of 0 turns that record off. Rank 0 alone logs.
    """

    hdf5: bool = opt(True, "write the {phase}.h5 research log")
    wandb: str = opt("auto", "auto (offline unless an API key is configured), online, offline "
                     "or off")
    wandb_project: str = opt("backlm", "the wandb project")
    per_token_every: int = opt(50, "steps between per-token slices (losses, predictions, "
                               "inputs)", **OFF_OR_MORE)
    per_token_rows: int = opt(2, "rows of the last micro-batch in that slice", **OFF_OR_MORE)
    stats_every: int = opt(50, "steps between gradient and activation statistics",
                           **OFF_OR_MORE)
    attention_every: int = opt(50, "steps between attention entropy and distance per head",
                               **OFF_OR_MORE)
    flush_every: int = opt(10, "steps between HDF5 flushes (and at every checkpoint)",
                           **ONE_OR_MORE)
    sample_every: int = opt(500, "steps between generation samples", **OFF_OR_MORE)
    sample_tokens: int = opt(48, "tokens per generation sample", **OFF_OR_MORE)
    sample_temperature: float = opt(0.8, "temperature of generation samples",
                                    check=at_least(0), need="0 (greedy) or positive")
    # Without a terminal (a log file, nohup, SLURM, CI) no progress bar redraws: training prints
    # a plain line instead. A GPU run's steps take about a second, a CPU test run's
    # milliseconds: the step count keeps a fast run's log short, the seconds a slow run's lines
    # coming.
    print_every: int = opt(100, "without a terminal: steps between plain progress lines (the "
                           "first and last step always print; 0: by time only)", **OFF_OR_MORE)
    print_seconds: float = opt(10.0, "without a terminal: the most seconds between plain "
                               "progress lines, whichever of the two comes first (0: by steps "
                               "only)", **OFF_OR_MORE)

    def __post_init__(self) -> None:
        if self.wandb == "disabled":
            self.wandb = "off"  # wandb's own word for it
        if self.wandb not in WANDB_MODES:
            raise UserError(f"unknown wandb mode {self.wandb!r}: use one of "
                            f"{', '.join(WANDB_MODES)} (e.g. --wandb off)")


@dataclass
class FivecatConfig:
    """5CAT during training (DESIGN.md §4); thresholds live in configs/fivecat.yaml."""

    every: int = opt(0, "steps between in-training 5CAT runs", **OFF_OR_MORE)
    max_samples: int = opt(16, "documents per held-out set (the command's default is larger)",
                           check=at_least(2), need="at least 2")
    stop_on_inversion: bool = opt(False, "stop the run when 5CAT finds the direction inverted")
    spec: str = opt("", "thresholds and sample settings (YAML); empty: configs/fivecat.yaml")


@dataclass
class EarlyStopConfig:
    """Early stopping, Lightning/Keras conventions; patience counts evaluations."""

    enabled: bool = opt(False, "stop when the monitor stops improving")
    monitor: str = opt("val_bpb", "the validation metric watched")
    mode: str = opt("min", "whether lower or higher is better", check=one_of("min", "max"),
                    need="min or max")
    patience: int = opt(3, "evaluations without improvement before stopping",
                        check=at_least(0), need="0 or more")
    min_delta: float = opt(0.0, "smallest change that counts as improvement", **POSITIVE)
    stopping_threshold: float | None = opt(None, "stop once the monitor is this good")
    divergence_threshold: float | None = opt(None, "stop once the monitor is this bad")
    stop_on_nonfinite: bool = opt(True, "stop on a non-finite loss or monitor")
    restore_best: bool = opt(True, "end with the best checkpoint's weights")


@dataclass
class ChatConfig:
    """Conversation data of the mid and SFT phases (DESIGN.md §1: masks follow the role)."""

    dataset: str = opt("pydocs-chat", "a chat dataset: shards with a messages column")
    train_on: str = opt("", "turns that carry loss: assistant, user or all (empty: the turns "
                        "the direction writes)", check=one_of("", "assistant", "user", "all"),
                        need="assistant, user or all (empty: the turns the direction writes)")
    text_frac: float = opt(0.5, "mid: share of batches of plain text from data.dataset",
                           **FRACTION)


@dataclass
class RLConfig:
    """Group-relative policy gradient on the arithmetic task (backlm.data.arith)."""

    prompts_per_step: int = opt(4, "prompts per optimizer step, across ranks", **ONE_OR_MORE)
    group_size: int = opt(16, "samples per prompt; advantage = reward - the group's mean",
                          check=at_least(2), need="at least 2 (the advantage compares samples)")
    max_new_tokens: int = opt(32, "tokens a sampled turn may take", **ONE_OR_MORE)
    temperature: float = opt(1.0, "sampling temperature", check=lambda v: v > 0,
                             need="positive (RL samples)")
    kl_coef: float = opt(0.0, "weight of the KL penalty to the parent (0: no reference model)",
                         check=at_least(0), need="0 (off) or positive")
    eval_prompts: int = opt(32, "held-out prompts answered greedily at each evaluation",
                            **ONE_OR_MORE)


@dataclass
class CostConfig:
    """Money: dollars per GPU-hour (a named preset or an explicit figure)."""

    gpu: str = opt("auto", "auto, h100, a100, … (see backlm.train.cost)")
    usd_per_gpu_hour: float | None = opt(None, "an explicit price; overrides the GPU's",
                                         check=lambda v: v is None or v >= 0,
                                         need="0 or positive")
    assumed_mfu: float = opt(0.4, "for --estimate-only on a GPU with no measurement",
                             check=lambda v: 0 < v <= 1, need="in (0, 1]")


@dataclass
class RunConfig:
    """Everything one ``backlm train`` run needs, resolved."""

    phase: str = opt("base", "base, mid, sft or rl", check=one_of(*PHASES),
                     need=f"one of {', '.join(PHASES)}")
    id: str = opt("", "the experiment id (empty: phase_direction_dDEPTH_time)")
    description: str = opt("", "what the run is for, in metadata and the report")
    data: DataConfig = opt(factory=DataConfig, help="training text and batches")
    model: ModelConfig = opt(factory=ModelConfig, help="the GPT's shape")
    optim: OptimConfig = opt(factory=OptimConfig, help="optimizers and schedule")
    train: TrainConfig = opt(factory=TrainConfig, help="the loop")
    log: LogConfig = opt(factory=LogConfig, help="research logging")
    fivecat: FivecatConfig = opt(factory=FivecatConfig, help="5CAT during training")
    early_stop: EarlyStopConfig = opt(factory=EarlyStopConfig, help="early stopping")
    cost: CostConfig = opt(factory=CostConfig, help="money")
    chat: ChatConfig = opt(factory=ChatConfig, help="conversations of mid and SFT")
    rl: RLConfig = opt(factory=RLConfig, help="the RL phase")


@dataclass(frozen=True)
class Key:
    """One leaf of a config: its dotted name, value, help, and range (``need``, ``check``)."""

    name: str
    value: Any
    help: str
    need: str
    check: Callable[[Any], bool] | None


def keys(cfg: Any, prefix: str = "") -> Iterator[Key]:
    """Every leaf of a dataclass config, in declaration order."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            yield from keys(value, f"{prefix}{f.name}.")
        else:
            yield Key(f"{prefix}{f.name}", value, f.metadata.get("help", ""),
                      f.metadata.get("need", ""), f.metadata.get("check"))


def _finite(value: Any) -> bool:
    values = value if isinstance(value, tuple) else (value,)
    return all(not isinstance(v, float) or math.isfinite(v) for v in values)


def check_ranges(cfg: Any) -> None:
    """Refuse the first value out of its field's range (non-finite numbers never pass)."""
    for key in keys(cfg):
        if not _finite(key.value):
            need = key.need or "a finite number or null"
            raise UserError(f"{key.name} must be {need}, got {key.value!r}: fix it with "
                            f"--set {key.name}=...")
        if key.check is not None and not key.check(key.value):
            raise UserError(f"{key.name} must be {key.need}, got {key.value!r}: fix it with "
                            f"--set {key.name}=...")
