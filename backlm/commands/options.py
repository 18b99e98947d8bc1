"""Options several commands share, defined once so their names, defaults and help agree, and
where the options of train and branch land in the config."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

EXPERIMENTS_DIR = typer.Option(
    None, "--experiments-dir", help="Where experiments live (default ./experiments, or "
    "$BACKLM_EXPERIMENTS).")
DEVICE = typer.Option(None, "--device", help="auto, cpu or cuda (default: auto; for train, "
                      "the config's train.device).")
STEP = typer.Option(None, "--step", help="Checkpoint step (default: the best, else the latest).")
EXPERIMENT = typer.Argument(..., help="Experiment id, tag (e.g. d20_backward) or folder.")
OVERRIDES = typer.Option(None, "--set", help="Override a config key: a.b=value.")
DESCRIPTION = typer.Option(None, "--description", help="Free text for metadata.")
WANDB = typer.Option(None, "--wandb",
                     help="auto (offline without an API key), online, offline or off.")


def experiments_root(option: Path | None) -> Path:
    """The experiments folder: the option's value, else the default."""
    from backlm.paths import experiments_root as default

    return option or default()


# Where each option of train and branch lands in the config: parameter name -> dotted key.
CONFIG_KEYS = {
    "direction": "data.direction", "depth": "model.depth", "max_steps": "train.max_steps",
    "device": "train.device", "seed": "train.seed", "wandb": "log.wandb",
    "stop_on_inversion": "fivecat.stop_on_inversion", "init_lr_frac": "optim.init_lr_frac",
    "exp_id": "id", "description": "description",
}


# How an option is spelled where it differs from its parameter name.
FLAG_NAMES = {"exp_id": "--id"}


def config_flags(**given: Any) -> Any:
    """The flags layer of :func:`backlm.config.load_config` (a :class:`backlm.config.Flags`:
    a nested dict, and how each option was given, so that a ``--set`` it would replace is
    refused naming it) from options given by their parameter names (:data:`CONFIG_KEYS`);
    None is an option not given. Text values pass the text boundary first
    (:func:`backlm.errors.check_argument`)."""
    from backlm.config import Flags
    from backlm.errors import check_argument

    flags = Flags()
    for name, value in given.items():
        if value is None:
            continue
        if isinstance(value, str):
            check_argument(value, "--id" if name == "exp_id" else f"--{name.replace('_', '-')}")
        *sections, key = CONFIG_KEYS[name].split(".")
        node = flags
        for section in sections:
            node = node.setdefault(section, {})
        node[key] = value
        flag = FLAG_NAMES.get(name, "--" + name.replace("_", "-"))
        if isinstance(value, bool):  # a --x/--no-x switch
            flags.labels[CONFIG_KEYS[name]] = flag if value else flag.replace("--", "--no-", 1)
        else:
            flags.labels[CONFIG_KEYS[name]] = f"{flag} {value}"
    return flags


def refuse_unused(why: str, given: dict[str, tuple[Any, Any]]) -> None:
    """Refuse the first option of ``given`` (flag -> (value, default); None: not given) that
    has a value other than its default although the command would not read it; ``why`` ends
    the line (e.g. "with --chat: a chat dataset has no tokenizer of its own")."""
    from backlm.errors import UserError

    for flag, (value, default) in given.items():
        if value is not None and value != default:
            shown = flag if value is True else f"{flag} {value}"
            raise UserError(f"{shown} has no effect {why}; drop it")
