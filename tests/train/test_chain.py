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


def q_args(*extra: str, direction: str = "backward") -> list[str]:
    """The tiny one-step chain ``q``: a backward base and its sft child."""
    return tiny_args("--direction", direction, "--phase", "base,sft", *PHASE_BASE, *BRANCH_FAST,
                     "--set", "train.max_steps=1", "--id", "q", *extra, steps=1)


@pytest.fixture(scope="module")
def q_chain(phase_world, tmp_path_factory):
    """The chain ``q`` trained once for the module (its tests copy it): its folder."""
    from tests.helpers import use_world

    root = tmp_path_factory.mktemp("q_chain") / "exps"
    with pytest.MonkeyPatch.context() as mp:
        use_world(mp, phase_world, root)
        mp.setenv("COLUMNS", "200")
        res = run_cli(q_args())
    assert res.exit_code == 0, res.output
    return root


@pytest.fixture
def q_copy(q_chain, exps):
    """A copy of the trained chain ``q`` in this test's experiments folder."""
    from tests.helpers import copy_experiments

    return copy_experiments(q_chain, exps)


def test_chain_trains_each_member_from_the_one_before(q_chain):
    sft = xp.Experiment(q_chain / "q-sft")
    assert sorted(p.name for p in q_chain.iterdir()) == ["q-base", "q-sft"]
    assert sft.metadata()["status"] == "finished" and sft.metadata()["phase"] == "sft"
    assert sft.parent_link()["parent_id"] == "q-base" and sft.parent_link()["step"] == 1
    assert sorted(losses(q_chain / "q-sft")) == [1]


def test_finished_members_are_skipped(q_copy):
    before = tree_snapshot(q_copy)
    res = run_cli(q_args())
    assert res.exit_code == 0, res.output
    assert "chain: q-base already finished, skipped" in res.output
    assert "chain: q-sft already finished, skipped" in res.output
    assert tree_snapshot(q_copy) == before


@pytest.mark.parametrize(("extra", "member", "field", "existing", "asked"), [
    (("--direction", "forward"), "q-base", "direction", "backward", "forward"),
    (("--seed", "7"), "q-base", "train.seed", "42", "7"),
    (("--set", "model.depth=3"), "q-base", "model.depth", "2", "3"),
    (("--set", "data.dataset=other"), "q-base", "data.dataset", "tiny", "other"),
    # a key only the child reads: the base matches, the sft member does not
    (("--set", "chat.train_on=all"), "q-sft", "chat.train_on", "", "all"),
])
def test_a_member_that_is_not_the_one_asked_for_is_refused(q_copy, extra, member, field,
                                                          existing, asked):
    if extra[0] == "--direction":
        args = q_args(direction=extra[1])
    else:
        args = q_args(*extra)
    before = tree_snapshot(q_copy)
    assert_user_error(run_cli(args), f"{member} exists but is not the member",
                      f"{field}={existing} in the existing experiment", f"{field}={asked} asked",
                      "another --id")
    assert tree_snapshot(q_copy) == before


def test_a_parent_step_the_chain_would_not_branch_from_is_another_member(q_copy):
    from backlm.atomic import write_json

    link = xp.Experiment(q_copy / "q-sft").parent_link()
    write_json(q_copy / "q-sft" / "parent_link.json", dict(link, step=3))
    assert_user_error(run_cli(q_args()), "q-sft exists",
                      "parent_step=3 in the existing experiment", "parent_step=1 asked")


@pytest.mark.parametrize(("given", "field"), [
    (("--set", "train.seed=7"), "train.seed=42 in the existing experiment, train.seed=7 asked"),
    (("--set", "optim.matrix_lr=0.5"), "optim.matrix_lr"),
    (("--direction", "forward"), "direction=backward in the existing experiment"),
    (("--depth", "5"), "model.depth=2 in the existing experiment, model.depth=5 asked"),
    (("--device", "cuda"), "train.device"),
])
def test_a_resume_with_options_that_change_the_run_names_the_field(q_copy, given, field):
    before = tree_snapshot(q_copy)
    assert_user_error(run_cli(["train", "--resume", "q-base", *given]),
                      "--resume continues q-base", field, "another --id")
    assert tree_snapshot(q_copy) == before


def test_a_resume_with_options_the_run_already_has_goes_on(q_copy):
    before = tree_snapshot(q_copy)
    res = run_cli(["train", "--resume", "q-base", "--set", "train.seed=42", "--direction",
                   "backward", "--set", "model.depth=2"])
    assert res.exit_code == 0, res.output
    assert "already over" in res.output
    assert tree_snapshot(q_copy) == before


def listing(*roots):
    """Every path below ``roots`` with its size and modification time (ns)."""
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns)
            for root in roots for p in sorted([root, *root.rglob("*")])}


@pytest.mark.parametrize(("phases", "sets", "words"), [
    ("base,mid", ("--set", "chat.dataset=nochat"), "chat dataset 'nochat' has no train shards"),
    ("base,mid,sft", ("--set", "chat.dataset=nochat"), "chat dataset 'nochat'"),
    ("base,sft", ("--set", "chat.dataset=nochat"), "chat dataset 'nochat'"),
    ("base,mid", ("--set", "chat.text_frac=2"), "chat.text_frac must be between 0 and 1"),
])
def test_a_chain_is_validated_whole_before_its_first_member_trains(exps, phase_world, phases,
                                                                   sets, words):
    home = phase_world / "home"
    exps.mkdir()
    before = listing(home, exps)
    res = run_cli(tiny_args("--direction", "backward", "--phase", phases, *PHASE_BASE,
                            "--set", "train.max_steps=1", *sets, "--id", "m", steps=1))
    assert_user_error(res, words)
    assert listing(home, exps) == before
    assert not any(exps.iterdir())


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
