"""Options several commands share are defined once: same name, default and help everywhere."""

from __future__ import annotations

import inspect

from backlm.cli import app
from backlm.commands import options

SHARED = {"--experiments-dir": options.EXPERIMENTS_DIR, "--device": options.DEVICE,
          "--step": options.STEP}


def _commands():
    yield from ((c.name, c.callback) for c in app.registered_commands)


def test_every_command_uses_the_shared_definitions():
    seen = {flag: [] for flag in SHARED}
    for name, fn in _commands():
        for param in inspect.signature(fn).parameters.values():
            decls = getattr(param.default, "param_decls", ()) or ()
            for flag, shared in SHARED.items():
                if flag in decls:
                    assert param.default is shared, f"{name} redefines {flag}"
                    seen[flag].append(name)
    assert {"train", "eval", "5cat", "ls", "log", "note"} <= set(seen["--experiments-dir"])
    assert {"eval", "5cat"} <= set(seen["--device"]) and {"eval", "5cat"} <= set(seen["--step"])


def test_the_experiments_folder_defaults_to_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("BACKLM_EXPERIMENTS", str(tmp_path / "e"))
    assert options.experiments_root(None) == tmp_path / "e"
    assert options.experiments_root(tmp_path / "x") == tmp_path / "x"


def test_train_and_branch_options_land_in_the_config_through_one_mapping():
    from backlm.config import RunConfig, load_config

    flags = options.config_flags(direction="backward", depth=None, max_steps=5, exp_id="x",
                                 init_lr_frac=0.5, stop_on_inversion=False)
    assert flags == {"data": {"direction": "backward"}, "train": {"max_steps": 5}, "id": "x",
                     "optim": {"init_lr_frac": 0.5}, "fivecat": {"stop_on_inversion": False}}
    cfg = load_config(RunConfig)
    for dotted in options.CONFIG_KEYS.values():  # every target is a real config key
        node = cfg
        for part in dotted.split("."):
            node = getattr(node, part)
