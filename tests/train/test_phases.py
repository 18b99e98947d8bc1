"""Phase order (which phase may follow which), chains, how a step's batch splits into streams,
and which loaders each phase trains on."""

from __future__ import annotations

import pytest

from backlm.config import RunConfig
from backlm.errors import UserError
from backlm.train.phases import FOLLOWS, ORDER, article, check_follows, parse_chain, plan_streams


@pytest.mark.parametrize(("phase", "parent"), [("mid", "base"), ("sft", "base"),
                                                ("sft", "mid"), ("rl", "sft")])
def test_allowed_orders(phase, parent):
    check_follows(phase, parent, "p")  # no error


@pytest.mark.parametrize(("phase", "parent"), [
    ("rl", "base"), ("rl", "mid"), ("rl", "rl"), ("mid", "sft"), ("mid", "mid"), ("mid", "rl"),
    ("sft", "sft"), ("sft", "rl"), ("sft", "None"),
])
def test_refused_orders_name_the_parent_and_what_is_allowed(phase, parent):
    with pytest.raises(UserError) as err:
        check_follows(phase, parent, "exp7")
    text = str(err.value)
    assert "exp7" in text and f"{article(parent)} {parent} run" in text
    assert all(p in text for p in FOLLOWS[phase]) and "\n" not in text


@pytest.mark.parametrize("phase", ["base", "foo", "", "SFT"])
def test_phases_that_cannot_be_branched(phase):
    with pytest.raises(UserError, match="cannot branch a") as err:
        check_follows(phase, "base")
    assert "backlm train" in str(err.value)


def test_every_phase_after_base_follows_something():
    assert ORDER[0] == "base" and set(FOLLOWS) == set(ORDER[1:])
    assert all(set(parents) <= set(ORDER) for parents in FOLLOWS.values())


@pytest.mark.parametrize(("text", "phases"), [
    ("base", ["base"]), ("base,mid,sft,rl", ["base", "mid", "sft", "rl"]),
    ("base,sft", ["base", "sft"]), (" Base , SFT ", ["base", "sft"]),
    ("base,sft,rl", ["base", "sft", "rl"]),
])
def test_parse_chain(text, phases):
    assert parse_chain(text) == phases


@pytest.mark.parametrize(("text", "words"), [
    ("mid,sft", ["starts with base", "backlm branch"]),
    ("sft", ["starts with base", "backlm branch"]),
    ("base,rl", ["rl phase cannot follow", "rl follows sft"]),
    ("base,foo", ["unknown phase", "'base,foo'"]),
    ("base,,sft", ["unknown phase"]),
    ("base,sft,mid", ["mid phase cannot follow"]),
    ("base,base", ["cannot branch a 'base'"]),
])
def test_bad_chains(text, words):
    with pytest.raises(UserError) as err:
        parse_chain(text)
    assert all(w in str(err.value) for w in words), str(err.value)


def _cfg(phase="base", total=512, rows=4, seq=32, prompts=4) -> RunConfig:
    cfg = RunConfig(phase=phase)
    cfg.train.total_batch_tokens, cfg.train.device_batch_size = total, rows
    cfg.model.seq_len, cfg.rl.prompts_per_step = seq, prompts
    return cfg


@pytest.mark.parametrize("phase", ["base", "mid", "sft"])
def test_text_and_chat_streams_do_not_depend_on_the_world(phase):
    cfg = _cfg(phase, total=1024, rows=4, seq=32)  # 8 streams of 4 rows
    assert plan_streams(cfg, 1) == (8, 8)
    assert plan_streams(cfg, 2) == (8, 4)
    assert plan_streams(cfg, 8) == (8, 1)
    with pytest.raises(UserError, match="cannot be split over 3 ranks"):
        plan_streams(cfg, 3)


def test_rl_streams_are_prompts():
    cfg = _cfg("rl", total=1000, prompts=6)  # total_batch_tokens is irrelevant to RL
    assert plan_streams(cfg, 1) == (6, 6) and plan_streams(cfg, 3) == (6, 2)
    with pytest.raises(UserError, match="rl.prompts_per_step"):
        plan_streams(cfg, 4)


def test_batch_must_be_whole_rows():
    with pytest.raises(UserError, match=r"multiple of device_batch_size × seq_len \(128\)"):
        plan_streams(_cfg("sft", total=200, rows=4, seq=32), 1)


@pytest.mark.parametrize(("phase", "kind"), [("base", "PackedLoader"),
                                              ("sft", "ConversationLoader"),
                                              ("mid", "MixedLoader"), ("rl", "PromptStream")])
def test_each_phase_gets_its_loaders(phase_world, monkeypatch, phase, kind):
    from backlm.tokenizer import Tokenizer
    from backlm.train.phases import build_loaders
    from tests.helpers import use_world

    use_world(monkeypatch, phase_world, phase_world / "exps")
    data = phase_world / "home" / "data" / "tiny"
    cfg = _cfg(phase, total=1024, rows=4, seq=128)
    cfg.chat.dataset, cfg.data.dataset, cfg.data.direction = "tinychat", "tiny", "backward"
    loaders = build_loaders(cfg, Tokenizer.load(data / "tokenizer"), data, 1, 2, 4)
    assert [type(x).__name__ for x in loaders] == [kind, kind]
