"""``backlm branch PHASE --parent EXP``: a child trained from a parent checkpoint, what the
command shows of it, siblings, ``--step``, and every bad input refused with exit 2, one line
and nothing written. The world: a backward base ``b0`` (checkpoints 1 and 4, best 4) and its SFT
child ``s1`` (tests/conftest.py ``lineage``)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import pytest

from backlm.experiment import folder as xp
from tests.helpers import (
    assert_user_error,
    branch_args,
    losses,
    make_child,
    metrics,
    run_cli,
    tree_snapshot,
)


@pytest.fixture(autouse=True)
def wide(monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # one table row per line


def refused(args, *roots) -> str:
    """Run ``args``; it must exit 2 with one ``error:`` line and leave ``roots`` unchanged."""
    before = tree_snapshot(*roots)
    line = assert_user_error(run_cli(args))
    assert tree_snapshot(*roots) == before
    return line


def _row(output: str, label: str) -> str:
    return next(x for x in output.splitlines() if label in x)


def test_branch_sft_shows_what_it_inherits_and_sets(lineage):
    res = run_cli(branch_args("sft", "b0", "--id", "kid", "--init-lr-frac", "0.3", steps=1))
    assert res.exit_code == 0, res.output
    assert "sft child kid of b0 (step 4)" in res.output
    assert "backward" in _row(res.output, "inherited direction")
    model = _row(res.output, "inherited model")
    assert "depth 2" in model and "width 64" in model and "seq 128" in model
    assert "300 tokens, sha256" in _row(res.output, "inherited tokenizer")
    assert "b0 step 4" in _row(res.output, "inherited weights")
    assert "1.0 → 0.3" in _row(res.output, "set optim.init_lr_frac")
    assert "'pydocs-chat' → 'tinychat'" in _row(res.output, "set chat.dataset")
    assert "set model." not in res.output and "direction change" not in res.output
    kid = xp.Experiment(lineage / "kid")
    assert kid.config().optim.init_lr_frac == 0.3
    assert "init_lr_frac: 0.3" in kid.config_path.read_text()
    meta = kid.metadata()
    assert (meta["phase"], meta["direction"], meta["status"]) == ("sft", "backward", "finished")
    link = kid.parent_link()
    weights = lineage / "b0" / "checkpoints" / "step_000004" / "model.safetensors"
    assert link["weights_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert link["chain_ids"] == ["b0"] and link["step"] == 4
    # it started from b0's step-4 weights: the same text validation loss at its step 0
    parent_val = {m["step"]: m for m in metrics(lineage / "b0")}[4]["val_loss"]
    assert metrics(lineage / "kid")[0]["val_loss"] == pytest.approx(parent_val, rel=1e-6)
    assert sorted(losses(lineage / "kid")) == [1]


def test_branch_rl_from_sft(lineage):
    res = run_cli(branch_args("rl", "s1", "--id", "r1", steps=1))
    assert res.exit_code == 0, res.output
    r1 = xp.Experiment(lineage / "r1")
    meta, link = r1.metadata(), r1.parent_link()
    assert (meta["phase"], meta["direction"], meta["parent"]) == ("rl", "backward", "s1")
    assert link["parent_phase"] == "sft" and link["step"] == 2
    assert link["checkpoint"] == str((lineage / "s1" / "checkpoints" / "step_000002").resolve())
    assert link["chain_ids"] == ["b0", "s1"]
    assert link["chain"] == [str((lineage / x).resolve()) for x in ("b0", "s1")]
    assert link["tokenizer_sha256"] == xp.Experiment(lineage / "s1").parent_link()[
        "tokenizer_sha256"]
    assert "val_reward" in metrics(lineage / "r1")[0]


def test_siblings_never_share_a_folder(lineage):
    s1_before = tree_snapshot(lineage / "s1")
    res = run_cli(branch_args("sft", "b0", "--id", "s2", "--init-lr-frac", "0.5",
                              "--step", "1", steps=1))
    assert res.exit_code == 0, res.output
    assert tree_snapshot(lineage / "s1") == s1_before
    s1, s2 = xp.Experiment(lineage / "s1"), xp.Experiment(lineage / "s2")
    assert s1.config().optim.init_lr_frac == 0.05 and s2.config().optim.init_lr_frac == 0.5
    assert s1.parent_link()["step"] == 4 and s2.parent_link()["step"] == 1
    assert s1.parent_link()["parent_id"] == s2.parent_link()["parent_id"] == "b0"
    line = refused(branch_args("sft", "b0", "--id", "s1", "--init-lr-frac", "0.9"), lineage)
    assert "experiment s1 already exists" in line and "--id" in line


def test_step_latest_and_best(lineage):
    b0 = xp.Experiment(lineage / "b0")
    b0.write_best("val", {**b0.best("val"), "step": 1})
    res = run_cli(branch_args("sft", "b0", "--id", "dflt", steps=1))
    assert res.exit_code == 0, res.output
    assert "(step 1)" in res.output  # best is the default
    assert xp.Experiment(lineage / "dflt").parent_link()["step"] == 1
    res = run_cli(branch_args("sft", "b0", "--id", "last", "--step", "latest", steps=1))
    assert res.exit_code == 0, res.output
    link = xp.Experiment(lineage / "last").parent_link()
    assert link["step"] == 4 and link["checkpoint"].endswith("step_000004")


@pytest.mark.parametrize(("step", "words"), [
    ("3", "b0 has no checkpoint at step 3: it has 1, 4"),
    ("abc", "--step 'abc' is not a step: give best, latest or one of 1, 4"),
    ("1.5", "is not a step"),
    ("²", "is not a step"),  # a digit to str.isdigit, not to int()
])
def test_bad_steps(lineage, step, words):
    assert words in refused(branch_args("sft", "b0", "--step", step), lineage)


def test_bad_inputs_are_refused_with_one_line(lineage, phase_world):
    home = phase_world / "home"
    make_child(lineage, "empty")  # a base without checkpoints
    cases = [
        (["sft", "nope"], "no experiment 'nope'"),
        (["sft", "empty"], "experiment empty has no checkpoint to branch from"),
        (["rl", "b0"], "an rl phase cannot follow b0, a base run: rl follows sft"),
        (["mid", "s1"], "a mid phase cannot follow s1, an sft run"),
        (["base", "b0"], "cannot branch a 'base' phase"),
        (["foo", "b0"], "cannot branch a 'foo' phase"),
        (["sft", "b0", "--direction", "forward"], "add --allow-direction-change"),
        (["sft", "b0", "--set", "model.depth=3"], "model.depth cannot be set on a branch"),
        (["sft", "b0", "--set", "chat.dataset=nope"], "chat dataset 'nope' has no train shards"),
        (["sft", "b0", "--set", "chat.dataset=tiny"], "dataset 'tiny' is a text dataset"),
        (["mid", "b0", "--set", "data.dataset=tinychat"], "dataset 'tinychat' is a chat dataset"),
        (["sft", "b0", "--id", ""], "--id is empty"),
        (["sft", "b0", "--id", "b0"], "experiment b0 already exists"),
        (["sft", "b0", "--init-lr-frac", "0"], "init_lr_frac"),
        (["sft", "b0", "--max-steps", "0"], "max_steps"),
    ]
    for (phase, parent, *extra), words in cases:
        line = refused(branch_args(phase, parent, *extra), lineage, home)
        assert words in line, (phase, parent, extra, line)


def test_direction_change_needs_the_flag_and_is_recorded(lineage):
    res = run_cli(branch_args("sft", "b0", "--id", "fwd", "--direction", "forward",
                              "--allow-direction-change", steps=1))
    assert res.exit_code == 0, res.output
    assert "backward → forward (recorded)" in _row(res.output, "direction change")
    fwd = xp.Experiment(lineage / "fwd")
    link = fwd.parent_link()
    assert link["direction_change"] == {"from": "backward", "to": "forward"}
    assert link["direction"] == "forward" and link["parent_direction"] == "backward"
    assert fwd.metadata()["direction"] == "forward"
    assert fwd.config().data.direction == "forward"


def test_parent_tokenizer_missing_or_altered(lineage):
    from backlm.tokenizer import Tokenizer
    from tests.conftest import make_docs

    tok = lineage / "b0" / "tokenizer"
    saved = (tok / "backlm_tokenizer.json").read_bytes()
    (tok / "backlm_tokenizer.json").unlink()
    line = refused(branch_args("sft", "b0"), lineage)
    assert "tokenizer" in line and "restore the experiment's own tokenizer/ folder" in line
    Tokenizer.train([d.upper() for d in make_docs(300, seed=5)], vocab_size=300).save(tok)
    assert (tok / "backlm_tokenizer.json").read_bytes() != saved
    line = refused(branch_args("sft", "b0"), lineage)
    assert "is not the tokenizer checkpoint step_000004 was trained with" in line


def test_corrupt_parent_weights(lineage):
    weights = lineage / "b0" / "checkpoints" / "step_000004" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-50] ^= 0xFF
    weights.write_bytes(bytes(data))
    line = refused(branch_args("sft", "b0"), lineage)
    assert "corrupt" in line and "checksum mismatch" in line and "--step" in line


def test_ls_tree_shows_children_under_parents(lineage):
    from backlm.train.branch import create_child, plan_branch

    create_child(plan_branch("rl", "s1", lineage, exp_id="r9"), lineage, lambda _: None)
    create_child(plan_branch("sft", "b0", lineage, exp_id="s9",
                             overrides=["chat.dataset=tinychat"]), lineage, lambda _: None)
    res = run_cli(["ls", "--tree"])
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    at = {w: next(i for i, x in enumerate(lines) if f" {w} " in x) for w in
          ("b0", "s1", "r9", "s9")}
    assert at["b0"] < at["s1"] < at["r9"] < at["s9"]  # depth first, children by creation
    assert "│ b0 " in lines[at["b0"]]
    assert "│ └─ s1 " in lines[at["s1"]] and " 4 " in lines[at["s1"]]
    assert "│    └─ r9 " in lines[at["r9"]] and " 2 " in lines[at["r9"]]
    assert "│ └─ s9 " in lines[at["s9"]]


@pytest.mark.slow
def test_two_process_gloo_sft_matches_one_process(lineage):
    small = ["--set", "train.device_batch_size=2"]  # 2 streams of 2 rows: splits over 2 ranks
    one = run_cli(branch_args("sft", "b0", "--id", "one", *small, steps=2))
    assert one.exit_code == 0, one.output
    two = subprocess.run(
        [sys.executable, "-m", "backlm.cli",
         *branch_args("sft", "b0", "--id", "two", "--nproc-per-node", "2", *small, steps=2)],
        env=dict(os.environ), capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = losses(lineage / "one"), losses(lineage / "two")
    assert sorted(a) == sorted(b) == [1, 2]
    for s in a:
        assert b[s] == pytest.approx(a[s], rel=1e-4, abs=1e-5)
    va = {m["step"]: m for m in metrics(lineage / "one")}
    vb = {m["step"]: m for m in metrics(lineage / "two")}
    for s in (0, 2):
        assert vb[s]["val_chat_loss"] == pytest.approx(va[s]["val_chat_loss"], rel=1e-4)
    meta = json.loads((lineage / "two" / "metadata.json").read_text())
    assert meta["world_size"] == 2 and meta["status"] == "finished"
    assert xp.Experiment(lineage / "two").parent_link()["weights_sha256"] == \
        xp.Experiment(lineage / "one").parent_link()["weights_sha256"]


def test_conversations_that_fit_no_row_leave_no_child(lineage, phase_world, tmp_path,
                                                      monkeypatch):
    import shutil

    from backlm.data.chat import write_chat_shard

    home = shutil.copytree(phase_world / "home", tmp_path / "home")
    monkeypatch.setenv("BACKLM_HOME", str(home))
    long = [[{"role": "user", "content": "alpha beta gamma " * 40},
             {"role": "assistant", "content": "delta " * 40}]] * 4
    write_chat_shard(home / "data" / "longchat" / "train_00000.parquet", long)
    write_chat_shard(home / "data" / "longchat" / "val_00000.parquet", long)
    before = tree_snapshot(lineage)
    res = run_cli(branch_args("sft", "b0", "--id", "toolong", "--set", "chat.dataset=longchat"))
    # Refused by the validation pass: one line, before the branch table.
    line = assert_user_error(res, "fits a 128-token row")
    assert line.startswith("error: no conversation of the chat dataset")
    assert tree_snapshot(lineage) == before


def test_rl_resumes_exactly(lineage):
    """Prompts and sampling noise are seeded by stream and prompt number: an RL run stopped
    at step 2 and resumed reproduces the uninterrupted run's steps 3 and 4."""
    full = run_cli(branch_args("rl", "s1", "--id", "full", steps=4))
    assert full.exit_code == 0, full.output
    part = run_cli(branch_args("rl", "s1", "--id", "part", steps=2))
    assert part.exit_code == 0, part.output
    more = run_cli(["train", "--resume", "part", "--max-steps", "4"])
    assert more.exit_code == 0, more.output
    a, b = metrics(lineage / "full"), metrics(lineage / "part")
    pick = {m["step"]: m for m in a if "loss" in m}, {m["step"]: m for m in b if "loss" in m}
    for step in (3, 4):
        for key in ("loss", "reward_mean", "reward_std", "zero_spread"):
            assert pick[1][step][key] == pytest.approx(pick[0][step][key], rel=1e-5, abs=1e-7)


def _chat_with_long_val(phase_world, tmp_path, monkeypatch, name: str = "shortval"):
    import shutil

    from backlm.data.chat import write_chat_shard

    home = shutil.copytree(phase_world / "home", tmp_path / "home")
    monkeypatch.setenv("BACKLM_HOME", str(home))
    short = [[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yes"}]] * 8
    long = [[{"role": "user", "content": "alpha beta gamma " * 40},
             {"role": "assistant", "content": "delta " * 40}]] * 4
    write_chat_shard(home / "data" / name / "train_00000.parquet", short)
    write_chat_shard(home / "data" / name / "val_00000.parquet", long)
    return name


def test_validation_that_fits_no_row_is_refused_before_the_run(lineage, phase_world, tmp_path,
                                                                monkeypatch):
    """No held-out conversation fits the context: val_chat_loss would be a mean over no
    token, so the plan refuses the branch (one line, exit 2, nothing written)."""
    name = _chat_with_long_val(phase_world, tmp_path, monkeypatch)
    line = refused(branch_args("sft", "b0", "--id", "noval", "--set", f"chat.dataset={name}"),
                   lineage)
    assert "no validation conversation" in line and "val_chat_loss" in line


@pytest.mark.slow
def test_validation_over_no_token_is_missing_never_zero_or_best(lineage, phase_world, tmp_path,
                                                                 monkeypatch):
    """Past the plan (its check skipped), a run whose validation scores no token records
    val_chat_loss as missing: null in the log, no best.json, one warning, no 0.0000 shown."""
    from backlm.train import branch

    monkeypatch.setattr(branch, "check_chat_fits", lambda cfg, tokenizer: None)
    name = _chat_with_long_val(phase_world, tmp_path, monkeypatch)
    res = run_cli(branch_args("sft", "b0", "--id", "noval", "--set", f"chat.dataset={name}",
                              steps=2))
    assert res.exit_code == 0, res.output
    warnings = [x for x in res.output.splitlines() if "measured over nothing" in x]
    assert len(warnings) == 1 and "val_chat_loss" in warnings[0]
    assert all(m.get("val_chat_loss") is None for m in metrics(lineage / "noval"))
    assert xp.Experiment(lineage / "noval").best("val") is None
    tree = run_cli(["ls", "--tree"])
    row = _row(tree.output, "noval")
    assert "0.0000" not in row and "nan" not in row.lower()
