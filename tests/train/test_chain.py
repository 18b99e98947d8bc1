"""Phase chains (backlm/train/chain.py): ``backlm train --phase base,sft`` trains each member as a
child of the one before, skips finished members when rerun, continues an interrupted one, and
refuses chains whose order is wrong before anything is written."""

from __future__ import annotations

import shutil

import pytest

from backlm.experiment import folder as xp
from tests.helpers import (
    BRANCH_FAST,
    PHASE_BASE,
    assert_user_error,
    losses,
    make_child,
    run_cli,
    tiny_args,
    tree_snapshot,
)


def chain_args(phases: str, *extra: str) -> list[str]:
    """A tiny chain: a 2-step backward base, then 2 steps per child (``--set`` reaches the
    children; ``--max-steps`` only the base)."""
    return tiny_args("--direction", "backward", "--phase", phases, *PHASE_BASE, *BRANCH_FAST,
                     "--set", "train.max_steps=2", *extra, steps=2)


@pytest.fixture
def exps(phase_world, tmp_path, monkeypatch):
    """An empty experiments folder next to the shared phase world's data."""
    from tests.helpers import use_world

    root = tmp_path / "exps"
    use_world(monkeypatch, phase_world, root)
    monkeypatch.setenv("COLUMNS", "200")
    return root


@pytest.mark.slow
def test_chain_trains_skips_and_continues(exps):
    res = run_cli(chain_args("base,sft", "--id", "ch"))
    assert res.exit_code == 0, res.output
    assert "chain: training ch-base" in res.output
    assert "chain: training ch-sft from ch-base" in res.output
    base, sft = xp.Experiment(exps / "ch-base"), xp.Experiment(exps / "ch-sft")
    assert base.metadata()["phase"] == "base" and base.metadata()["status"] == "finished"
    assert sft.metadata()["phase"] == "sft" and sft.metadata()["status"] == "finished"
    link = sft.parent_link()
    assert link["parent_id"] == "ch-base" and link["chain_ids"] == ["ch-base"]
    assert link["checkpoint"] == str(base.checkpoint_dir(2).resolve())
    assert sft.config().model.seq_len == 128 and sft.config().chat.dataset == "tinychat"
    assert sorted(losses(exps / "ch-sft")) == [1, 2]

    # rerun: both finished, nothing trained, nothing changed
    before = tree_snapshot(exps)
    again = run_cli(chain_args("base,sft", "--id", "ch"))
    assert again.exit_code == 0, again.output
    assert "ch-base already finished" in again.output
    assert "ch-sft already finished" in again.output
    assert tree_snapshot(exps) == before

    # an interrupted second member is continued from its last checkpoint
    assert sft.checkpoint_steps() == [1, 2]
    shutil.rmtree(sft.checkpoint_dir(2))
    sft.update_metadata(status="interrupted")
    first = losses(exps / "ch-sft")
    res = run_cli(chain_args("base,sft", "--id", "ch"))
    assert res.exit_code == 0, res.output
    assert "ch-base already finished" in res.output and "continuing ch-sft" in res.output
    assert sft.metadata()["status"] == "finished" and sft.checkpoint_steps()[-1] == 2
    after = losses(exps / "ch-sft")
    assert sorted(after) == [1, 2]
    assert after[2] == pytest.approx(first[2], rel=1e-4)  # resumed exactly


@pytest.mark.parametrize(("phases", "words"), [
    ("mid,sft", "a chain starts with base"),
    ("base,rl", "an rl phase cannot follow the chain's previous phase, a base run"),
    ("base,foo", "unknown phase in --phase 'base,foo'"),
    ("sft", "use `backlm branch PHASE --parent EXP`"),
    ("rl", "use `backlm branch PHASE --parent EXP`"),
])
def test_bad_chains_are_refused_before_anything_is_written(exps, phase_world, phases, words):
    home = phase_world / "home"
    before = tree_snapshot(home)
    res = run_cli(chain_args(phases, "--id", "bad"))
    assert_user_error(res, words)
    assert not exps.exists() or not any(exps.iterdir())
    assert tree_snapshot(home) == before


def test_chain_member_ids(exps):
    from backlm.config import RunConfig
    from backlm.train.chain import chain_prefix

    cfg = RunConfig(id="run7")
    assert chain_prefix(cfg) == "run7"
    cfg = RunConfig()
    cfg.data.direction, cfg.model.depth = "backward", 3
    assert chain_prefix(cfg).startswith("chain_backward_d3_")


def test_chain_trains_each_member_from_the_one_before(exps):
    res = run_cli(tiny_args("--direction", "backward", "--phase", "base,sft", *PHASE_BASE,
                            *BRANCH_FAST, "--set", "train.max_steps=1", "--id", "q", steps=1))
    assert res.exit_code == 0, res.output
    sft = xp.Experiment(exps / "q-sft")
    assert sorted(p.name for p in exps.iterdir()) == ["q-base", "q-sft"]
    assert sft.metadata()["status"] == "finished" and sft.metadata()["phase"] == "sft"
    assert sft.parent_link()["parent_id"] == "q-base" and sft.parent_link()["step"] == 1
    assert sorted(losses(exps / "q-sft")) == [1]


def test_finished_members_are_skipped(exps):
    make_child(exps, "ch-base")
    make_child(exps, "ch-sft", parent="ch-base")
    before = tree_snapshot(exps)
    res = run_cli(chain_args("base,sft", "--id", "ch"))
    assert res.exit_code == 0, res.output
    assert "chain: ch-base already finished, skipped" in res.output
    assert "chain: ch-sft already finished, skipped" in res.output
    assert tree_snapshot(exps) == before


@pytest.mark.parametrize(("phases", "words"), [
    ("base,mid,sft", "ch-sft exists as an sft run, a child of ch-base, but the chain --phase "
                     "base,mid,sft needs an sft run from ch-mid"),
    ("base,sft", "ch-sft exists as an sft run, a child of other"),
])
def test_members_of_another_chain_are_refused(exps, phases, words):
    make_child(exps, "ch-base")
    make_child(exps, "other")
    make_child(exps, "ch-sft", parent="ch-base" if "mid" in phases else "other")
    before = tree_snapshot(exps)
    res = run_cli(chain_args(phases, "--id", "ch"))
    assert_user_error(res, words)
    assert tree_snapshot(exps) == before
