"""Typed run configuration; knows no model, data, experiment or loop.

- ``schema``: the dataclasses, each field with its default, help and range;
- ``load``: presets, YAML, ``--set`` overrides and flags merged and coerced into them.

Only these dataclasses reach the engine; a config is checked whole (:func:`check_ranges`)
before anything is written.
"""

from __future__ import annotations

from backlm.config.load import (
    CONFIG_DIR,
    Flags,
    deep_merge,
    explicit_keys,
    flatten,
    from_dict,
    load_config,
    parse_overrides,
    preset_path,
    read_yaml,
    to_dict,
    to_yaml,
    user_layer,
)
from backlm.config.schema import (
    PHASES,
    WANDB_MODES,
    ChatConfig,
    CostConfig,
    DataConfig,
    EarlyStopConfig,
    FivecatConfig,
    Key,
    LogConfig,
    ModelConfig,
    OptimConfig,
    RLConfig,
    RunConfig,
    TrainConfig,
    check_ranges,
    keys,
)

__all__ = [
    "CONFIG_DIR", "PHASES", "Flags", "WANDB_MODES", "ChatConfig", "CostConfig", "DataConfig",
    "EarlyStopConfig", "FivecatConfig", "Key", "LogConfig", "ModelConfig", "OptimConfig",
    "RLConfig", "RunConfig", "TrainConfig", "check_ranges", "deep_merge", "explicit_keys",
    "flatten", "from_dict", "keys", "load_config", "parse_overrides", "preset_path",
    "read_yaml", "show", "to_dict", "to_yaml", "user_layer",
]


def show(preset: str | None = None, overrides: list[str] | None = None) -> list[Key]:
    """The resolved config of ``preset`` with ``overrides``, every key with its help and range
    (what ``backlm config show`` prints); a value out of its range is refused as train would."""
    cfg = load_config(RunConfig, preset, overrides)
    check_ranges(cfg)
    return list(keys(cfg))
