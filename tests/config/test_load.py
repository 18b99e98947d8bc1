"""Config resolution: defaults < preset < --set < flags; unknown keys and bad types refused."""

from __future__ import annotations

import pytest

from backlm.config import RunConfig, load_config, parse_overrides, preset_path, to_yaml
from backlm.errors import UserError


def test_precedence(tmp_path):
    preset = tmp_path / "p.yaml"
    preset.write_text("model:\n  depth: 6\ntrain:\n  max_steps: 10\n  seed: 1\n")
    cfg = load_config(RunConfig, preset=str(preset), overrides=["train.max_steps=20"],
                      flags={"train": {"seed": 3}})
    assert (cfg.model.depth, cfg.train.max_steps, cfg.train.seed) == (6, 20, 3)
    assert cfg.model.model_dim == 384 and cfg.model.n_heads == 3
    assert load_config(RunConfig).train.max_steps == 1000  # the dataclass default


def test_round_trip_through_yaml(tmp_path):
    cfg = load_config(RunConfig, overrides=["optim.adam_betas=[0.9, 0.99]", "data.mix=0.25"])
    path = tmp_path / "c.yaml"
    path.write_text(to_yaml(cfg))
    again = load_config(RunConfig, preset=str(path))
    assert again == cfg and again.optim.adam_betas == (0.9, 0.99)


@pytest.mark.parametrize("override,needle", [
    ("train.nope=1", "unknown config key 'train.nope'"),
    ("nope.x=1", "unknown config key 'nope'"),
    ("train.max_steps=ten", "expects int"),
    ("data.mix=high", "expects float"),
    ("train.compile=maybe", "expects bool"),
    ("train=3", "must be a mapping"),
    ("no_equals_sign", "key=value"),
])
def test_bad_overrides(override, needle):
    with pytest.raises(UserError, match=needle):
        load_config(RunConfig, overrides=[override])


def test_yaml11_words_stay_words_for_strings_and_work_for_bools():
    cfg = load_config(RunConfig, overrides=["log.wandb=off", "train.compile=yes"])
    assert cfg.log.wandb == "off" and cfg.train.compile is True
    assert parse_overrides(["a.b=on"]) == {"a": {"b": "on"}}


def test_presets_resolve_by_name_and_path():
    assert preset_path("cpu-tiny").name == "cpu-tiny.yaml"
    assert preset_path("configs/d12.yaml").name == "d12.yaml"
    with pytest.raises(UserError, match="known presets are .*cpu-tiny"):
        preset_path("d99")
    for name in ("cpu-tiny", "d12", "d20", "d26"):
        load_config(RunConfig, preset=name)  # every shipped preset is valid


def test_a_set_that_a_flag_replaces_is_refused_naming_the_flag_and_an_equal_one_passes():
    from backlm.config import Flags, user_layer

    flags = Flags({"train": {"max_steps": 10}, "data": {"direction": "forward"}},
                  {"train.max_steps": "--max-steps 10"}, {"data.direction": "drop it"})
    assert user_layer(["train.max_steps=10.0", "data.direction=forward"], flags) == {
        "train": {"max_steps": 10}, "data": {"direction": "forward"}}
    with pytest.raises(UserError, match=r"^--set train.max_steps=5 conflicts with --max-steps "
                                        r"10: give one$"):
        user_layer(["train.max_steps=5"], flags)
    with pytest.raises(UserError, match="--set data.direction=backward conflicts with the option "
                                        "for data.direction: drop it"):
        load_config(RunConfig, overrides=["data.direction=backward"], flags=flags)
    # a key set twice by --set: the last one is the value (no flag in between)
    assert load_config(RunConfig, overrides=["train.seed=1", "train.seed=2"]).train.seed == 2
