"""Typed configuration: dataclasses, YAML presets and ``--set a.b=c`` overrides.

Precedence: dataclass defaults < preset YAML (``--config``) < ``--set`` overrides < explicit
flags. Unknown keys and values of the wrong type raise :class:`UserError`. Only dataclasses
reach the engine.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from backlm.errors import UserError

# Presets ship inside the package (the repository's top-level configs/ links here), so they
# resolve from any folder and from a non-editable install.
CONFIG_DIR = Path(__file__).resolve().parent / "configs"


@dataclass
class DataConfig:
    """Where training text comes from and how it becomes batches."""

    dataset: str = "pydocs"
    direction: str = "forward"
    mix: float = 0.5  # bidirectional: probability that a document is rendered backward
    tokenizer_threads: int = 2
    docs_per_batch: int = 256  # documents tokenized together
    buffer_docs: int = 512  # best-fit packing candidates kept in memory


@dataclass
class ModelConfig:
    """GPT shape. ``width`` 0 means ``64 * depth``; heads are ``width // head_dim``."""

    depth: int = 4
    width: int = 0
    head_dim: int = 128
    vocab_size: int = 8192
    seq_len: int = 512
    softcap: float = 15.0
    rope_base: float = 10000.0

    @property
    def model_dim(self) -> int:
        return self.width or 64 * self.depth

    @property
    def n_heads(self) -> int:
        return max(1, self.model_dim // self.head_dim)


@dataclass
class OptimConfig:
    """Muon for hidden matrices, AdamW for embeddings, head and scalars."""

    matrix_lr: float = 0.02
    embedding_lr: float = 0.2
    unembedding_lr: float = 0.004
    scalar_lr: float = 0.04
    weight_decay: float = 0.0
    adam_betas: tuple[float, float] = (0.8, 0.95)
    muon_momentum: float = 0.95
    warmup_steps: int = 0
    warmdown_frac: float = 0.2
    final_lr_frac: float = 0.0
    grad_clip: float = 0.0
    ns_steps: int = 5  # Newton–Schulz iterations in Muon
    muon_momentum_warmup_steps: int = 0  # 0: constant muon_momentum
    muon_momentum_start: float = 0.85  # momentum at step 0 when warming up
    init_lr_frac: float = 1.0  # every rate × this (a branch's --init-lr-frac)


@dataclass
class TrainConfig:
    """The training loop: batch, schedule length, evaluation and checkpoint cadence."""

    max_steps: int = 1000
    total_batch_tokens: int = 4096  # tokens per optimizer step, across ranks and accumulation
    device_batch_size: int = 8  # rows per forward pass
    eval_every: int = 100
    eval_tokens: int = 32768  # validation: whole val documents from the start, this many tokens
    # validate before the first step (every curve's starting point); false trains at once
    eval_at_start: bool = True
    save_every: int = 500
    log_every: int = 1
    seed: int = 42
    device: str = "auto"
    dtype: str = "auto"  # auto | fp32 | bf16
    compile: bool = False


@dataclass
class LogConfig:
    """Research logging (metrics.jsonl is always written; see backlm.logs.hdf5 for the schema).

    A frequency of 0 turns that record off. Rank 0 alone logs.
    """

    hdf5: bool = True  # {phase}.h5 research log
    wandb: str = "auto"  # auto (offline unless an API key is configured) | online | offline | off
    wandb_project: str = "backlm"
    per_token_every: int = 50  # per-token losses / predictions / inputs of a slice of the batch
    per_token_rows: int = 2  # rows of the last micro-batch in that slice
    stats_every: int = 50  # gradient and activation statistics
    attention_every: int = 50  # attention entropy and distance per head, on the per-token rows
    flush_every: int = 10  # steps between HDF5 flushes (and at every checkpoint)
    sample_every: int = 500  # generation samples to notes/generation_samples.jsonl
    sample_tokens: int = 48
    sample_temperature: float = 0.8

    def __post_init__(self) -> None:
        if self.wandb == "disabled":
            self.wandb = "off"  # wandb's own word for it
        if self.wandb not in WANDB_MODES:
            raise UserError(f"unknown wandb mode {self.wandb!r}: use one of "
                            f"{', '.join(WANDB_MODES)} (e.g. --wandb off)")


WANDB_MODES = ("auto", "online", "offline", "off")


@dataclass
class FivecatConfig:
    """5CAT during training (DESIGN.md §4); thresholds live in configs/fivecat.yaml."""

    every: int = 0  # steps between in-training 5CAT runs (0: off)
    max_samples: int = 16  # documents per held-out set (the command's default is larger)
    stop_on_inversion: bool = False
    spec: str = ""  # thresholds and sample settings (YAML); empty: configs/fivecat.yaml


@dataclass
class EarlyStopConfig:
    """Early stopping, Lightning/Keras conventions; patience counts evaluations."""

    enabled: bool = False
    monitor: str = "val_bpb"
    mode: str = "min"  # min | max
    patience: int = 3
    min_delta: float = 0.0
    stopping_threshold: float | None = None  # stop once the monitor is this good
    divergence_threshold: float | None = None  # stop once the monitor is this bad
    stop_on_nonfinite: bool = True
    restore_best: bool = True


@dataclass
class ChatConfig:
    """Conversation data of the mid and SFT phases (DESIGN.md §1: masks follow the role)."""

    dataset: str = "pydocs-chat"  # a chat dataset: shards with a messages column
    train_on: str = ""  # assistant | user | all; empty: the turns the direction writes
    text_frac: float = 0.5  # mid: share of batches of plain text from data.dataset


@dataclass
class RLConfig:
    """Group-relative policy gradient on the arithmetic task (backlm.data.arith)."""

    prompts_per_step: int = 4  # prompts per optimizer step, across ranks
    group_size: int = 16  # samples per prompt; advantage = reward - the group's mean
    max_new_tokens: int = 32
    temperature: float = 1.0
    kl_coef: float = 0.0  # weight of the KL penalty to the parent (0: no reference model)
    eval_prompts: int = 32  # held-out prompts answered greedily at each evaluation


@dataclass
class CostConfig:
    """Money: dollars per GPU-hour (a named preset or an explicit figure)."""

    gpu: str = "auto"  # auto | h100 | a100 | ... (see backlm.train.cost)
    usd_per_gpu_hour: float | None = None
    assumed_mfu: float = 0.4  # for --estimate-only on a GPU with no measurement


@dataclass
class RunConfig:
    """Everything one ``backlm train`` run needs, resolved."""

    phase: str = "base"
    id: str = ""
    description: str = ""
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    log: LogConfig = field(default_factory=LogConfig)
    fivecat: FivecatConfig = field(default_factory=FivecatConfig)
    early_stop: EarlyStopConfig = field(default_factory=EarlyStopConfig)
    cost: CostConfig = field(default_factory=CostConfig)
    chat: ChatConfig = field(default_factory=ChatConfig)
    rl: RLConfig = field(default_factory=RLConfig)


# --- loading --------------------------------------------------------------------------------


def preset_path(name_or_path: str) -> Path:
    """Resolve ``cpu-tiny`` / ``configs/cpu-tiny.yaml`` / any YAML path to an existing file."""
    path = Path(name_or_path)
    looks_like_path = "/" in name_or_path or path.suffix in (".yaml", ".yml")
    if path.is_dir():
        raise UserError(f"--config {name_or_path} is a folder: give a YAML file or a preset name")
    candidates = [path]
    if not looks_like_path:
        candidates.append(CONFIG_DIR / f"{name_or_path}.yaml")
    candidates.append(CONFIG_DIR / path.name)
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    known = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))) or "none"
    if looks_like_path:
        raise UserError(f"config file {name_or_path} does not exist: check the path, or name a "
                        f"preset ({known})")
    raise UserError(f"unknown config preset {name_or_path!r}: known presets are {known}, or give "
                    "the path of a YAML file")


def read_yaml(path: Path) -> dict[str, Any]:
    """Read a YAML mapping; a file that is not one raises :class:`UserError` (syntax errors
    with their line and column)."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = exc.problem or exc.context or "invalid YAML"
        raise UserError(f"config {path}{where}: {problem}; fix the YAML syntax there") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise UserError(f"cannot read config {path}: {exc}".splitlines()[0]) from None
    if not isinstance(data, dict):
        raise UserError(f"config {path} must be a mapping of keys to values (section: key: value)"
                        f", not a {type(data).__name__}")
    return data


_YAML11_WORDS = {"on", "off", "yes", "no", "y", "n"}
_BOOL_WORDS = {"true": True, "on": True, "yes": True, "y": True,
               "false": False, "off": False, "no": False, "n": False}


def parse_overrides(items: list[str] | None) -> dict[str, Any]:
    """Turn ``["a.b=3", "c=x"]`` into a nested dict; values are parsed as YAML scalars."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--set expects key=value, got {item!r}")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        if raw.strip().lower() in _YAML11_WORDS:
            value = raw.strip()  # YAML 1.1 reads on/off/yes/no as booleans: keep the word
        node = out
        parts = key.strip().split(".")
        if not all(p.strip() for p in parts):
            raise UserError(f"--set key {key.strip()!r} has an empty part: write section.key=value"
                            ", e.g. model.depth=4")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise UserError(f"--set key {key!r} conflicts with another override")
        node[parts[-1]] = value
    return out


def deep_merge(base: dict[str, Any], update: dict[str, Any], path: str = "") -> dict[str, Any]:
    """Recursively merge ``update`` into a copy of ``base``; a mapping on one side and a value
    on the other is a :class:`UserError` (neither silently replaces the other)."""
    merged = dict(base)
    for key, value in update.items():
        here = f"{path}{key}"
        old = merged.get(key)
        if isinstance(value, dict) and isinstance(old, dict):
            merged[key] = deep_merge(old, value, f"{here}.")
        elif key in merged and (isinstance(value, dict) != isinstance(old, dict)) and (
                old is not None and value is not None):
            raise UserError(f"config key {here!r} is a section (key: value pairs) on one side "
                            f"and the value {old if not isinstance(old, dict) else value!r} on "
                            f"the other: set its keys, e.g. {here}.<key>=value")
        else:
            merged[key] = value
    return merged


T = typing.TypeVar("T")


def from_dict(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
    """Build dataclass ``cls`` from a nested dict, rejecting unknown keys and bad types."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        choices = ", ".join(sorted(names))
        raise UserError(f"unknown config key '{prefix}{unknown[0]}': valid keys here are {choices}")
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(hints[name], value, f"{prefix}{name}")
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, key: str) -> Any:
    if dataclasses.is_dataclass(tp):
        if value is None:  # an empty section (`model:` with nothing under it)
            value = {}
        if not isinstance(value, dict):
            raise UserError(f"config section {key!r} must be a mapping of keys to values, got "
                            f"{value!r}: write its keys, e.g. {key}.<key>=value")
        return from_dict(tp, value, prefix=f"{key}.")
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(args[0], value, key)
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, list | tuple) or len(value) != len(args):
            raise UserError(f"config key {key!r} must be a list of {len(args)} values, got "
                            f"{value!r}")
        return tuple(_coerce(a, v, key) for a, v in zip(args, value, strict=True))
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in _BOOL_WORDS:
            return _BOOL_WORDS[value.lower()]
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, bool):
            return "on" if value else "off"  # a preset's YAML 1.1 `off` means the word
        if isinstance(value, str | int | float):
            return str(value)
    else:
        return value
    raise UserError(f"config key {key!r} expects {tp.__name__}, got {value!r}")


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain nested dict of a dataclass config (tuples become lists for YAML)."""
    def conv(v: Any) -> Any:
        if isinstance(v, tuple):
            return [conv(x) for x in v]
        if isinstance(v, dict):
            return {k: conv(x) for k, x in v.items()}
        return v
    return conv(dataclasses.asdict(cfg))


def to_yaml(cfg: Any) -> str:
    """The resolved config as YAML text."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def load_config(
    cls: type[T] = RunConfig,  # type: ignore[assignment]
    preset: str | None = None,
    overrides: list[str] | None = None,
    flags: dict[str, Any] | None = None,
) -> T:
    """Resolve a config: defaults < preset YAML < ``--set`` overrides < flags (nested dict)."""
    data: dict[str, Any] = {}
    if preset:
        data = read_yaml(preset_path(preset))
    data = deep_merge(data, parse_overrides(overrides))
    data = deep_merge(data, flags or {})
    return from_dict(cls, data)


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` as ``{"a.b": 1}``: a nested config dict by dotted key."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def explicit_keys(overrides: list[str] | None, flags: dict[str, Any] | None) -> set[str]:
    """Dotted keys the user set on the command line (``--set`` and flags), as opposed to values
    that come from a preset or a default."""
    return set(flatten(parse_overrides(overrides))) | set(flatten(flags or {}))
