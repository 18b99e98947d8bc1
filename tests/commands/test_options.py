"""Options several commands share are defined once: same name, default and help everywhere."""

from __future__ import annotations

import inspect

import pytest

from backlm.cli import app
from backlm.commands import options
from backlm.errors import UserError
from tests.helpers import assert_user_error, run_cli

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


@pytest.mark.parametrize("args,names", [
    (["data", "prepare", "--chat", "--vocab-size", "4000"], ("--vocab-size 4000", "--chat")),
    (["data", "import", "--chat", "x.jsonl", "--text-field", "t"], ("--text-field t", "--chat")),
    (["data", "import", "--chat", "x.jsonl", "--split-paragraphs"],
     ("--split-paragraphs", "--chat")),
    (["data", "import", "--chat", "x.jsonl", "--append"], ("--append", "--chat")),
    (["data", "download", "--task", "arc", "--shards", "3"], ("--shards 3", "--task arc")),
    (["data", "download", "other", "--task", "smoltalk"], ("NAME other", "--task smoltalk")),
    (["data", "download", "--task", "smoltalk", "--workers", "3"], ("--workers 3", "smoltalk")),
    (["data", "diagnose", "--mix", "0.3"], ("--mix 0.3", "forward", "bidirectional")),
    (["data", "diagnose", "-d", "backward", "--mix", "0.3"], ("--mix 0.3", "backward")),
    (["eval", "x", "--tasks", "lm", "--max-new-tokens", "9"], ("--max-new-tokens 9", "gsm8k")),
    (["eval", "x", "--tasks", "arc-easy", "--lm-tokens", "9"], ("--lm-tokens 9", "lm task")),
    (["eval", "x", "--tasks", "lm", "--max-per-task", "9"], ("--max-per-task 9", "--tasks lm")),
], ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_an_option_the_chosen_mode_does_not_read_is_refused(tmp_path, monkeypatch, args, names):
    monkeypatch.setenv("BACKLM_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("BACKLM_EXPERIMENTS", str(tmp_path / "exps"))
    monkeypatch.chdir(tmp_path)
    assert_user_error(run_cli(args), *names)
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_an_unread_option_at_its_default_passes():
    options.refuse_unused("never", {"--a": (None, 1), "--b": (2, 2), "--c": (False, False)})
    with pytest.raises(UserError, match="--b 3 has no effect never; drop it"):
        options.refuse_unused("never", {"--b": (3, 2)})
