"""Branching (backlm/train/branch.py): which parent checkpoint a branch starts from, the exact parent
link it records, the child's config, and the parent weights checked again before training
(backlm/experiment/compat.py). The world: a backward base ``b0`` (checkpoints 1 and 4, best 4) and its SFT
child ``s1`` (tests/conftest.py ``lineage``)."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from safetensors.torch import load_file

from backlm.errors import UserError
from backlm.experiment import checkpoint as ckpt
from backlm.experiment import compat
from backlm.experiment import folder as xp
from backlm.model.gpt import GPT
from backlm.train.branch import choose_checkpoint, create_child, plan_branch
from tests.helpers import make_child, metrics, tree_snapshot

FAST = ["chat.dataset=tinychat", "train.eval_every=2", "train.save_every=2",
        "train.max_steps=1"]


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _flip(path, at: int = -100) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))


def _plan(lineage, phase="sft", parent="b0", **kw):
    kw.setdefault("overrides", FAST)
    return plan_branch(phase, parent, lineage, **kw)


# --- the parent link of a trained child ------------------------------------------------------


def test_sft_child_records_its_exact_parent(lineage):
    b0, s1 = xp.Experiment(lineage / "b0"), xp.Experiment(lineage / "s1")
    meta = s1.metadata()
    assert (meta["phase"], meta["direction"], meta["parent"], meta["status"]) == \
        ("sft", "backward", "b0", "finished")
    link = s1.parent_link()
    folder = b0.checkpoint_dir(4)  # the best (and latest) checkpoint of b0
    assert link["parent_id"] == "b0" and link["step"] == 4
    assert link["checkpoint"] == str(folder.resolve())
    assert link["weights_sha256"] == _sha(folder / "model.safetensors")
    assert link["parent_phase"] == "base" and link["parent_direction"] == "backward"
    assert link["direction"] == "backward" and link["direction_change"] is None
    tok = compat.check_tokenizer(b0.tokenizer_dir, 300, None, None)
    assert link["tokenizer_sha256"] == compat.tokenizer_hash(tok)
    assert link["chain"] == [str(b0.path.resolve())] and link["chain_ids"] == ["b0"]
    assert link["init_lr_frac"] == 0.05 and s1.config().optim.init_lr_frac == 0.05
    assert b0.parent_link() is None


def test_child_has_the_parents_tokenizer_and_shape(lineage):
    b0, s1 = xp.Experiment(lineage / "b0"), xp.Experiment(lineage / "s1")
    names = sorted(p.name for p in b0.tokenizer_dir.iterdir())
    assert names and names == sorted(p.name for p in s1.tokenizer_dir.iterdir())
    for name in names:
        assert (s1.tokenizer_dir / name).read_bytes() == (b0.tokenizer_dir / name).read_bytes()
    assert s1.config().model == b0.config().model
    assert s1.config().model.seq_len == 128


def test_child_starts_from_the_parent_weights(lineage):
    # The child's step-0 validation on the text set is the parent's at the checkpoint's step.
    parent = {m["step"]: m for m in metrics(lineage / "b0")}[4]
    child = {m["step"]: m for m in metrics(lineage / "s1")}[0]
    assert child["val_loss"] == pytest.approx(parent["val_loss"], rel=1e-6)
    assert child["val_bpb"] == pytest.approx(parent["val_bpb"], rel=1e-6)


def test_load_parent_weights_loads_exactly_the_linked_checkpoint(lineage):
    s1 = xp.Experiment(lineage / "s1")
    folder = xp.Experiment(lineage / "b0").checkpoint_dir(4)
    model = GPT(ckpt.model_config(ckpt.read_meta(folder)))
    compat.load_parent_weights(s1, model)
    expected = load_file(str(folder / "model.safetensors"))
    got = model.state_dict()
    assert set(expected) <= set(got)
    for key, tensor in expected.items():
        assert torch.equal(got[key], tensor), key


def test_parent_weights_changed_after_branching_are_refused(lineage):
    s1 = xp.Experiment(lineage / "s1")
    weights = xp.Experiment(lineage / "b0").checkpoint_dir(4) / "model.safetensors"
    model = GPT(ckpt.model_config(ckpt.read_meta(weights.parent)))
    _flip(weights)
    with pytest.raises(UserError, match="changed since s1 branched"):
        compat.load_parent_weights(s1, model)
    weights.unlink()
    with pytest.raises(UserError, match="is gone"):
        compat.load_parent_weights(s1, model)
    s1.parent_link_path.unlink()
    with pytest.raises(UserError, match="without a parent link"):
        compat.load_parent_weights(s1, model)


def test_weights_changed_between_plan_and_training_leave_no_child(lineage):
    from backlm.train.launch import train

    planned = _plan(lineage, exp_id="late")
    _flip(xp.Experiment(lineage / "b0").checkpoint_dir(4) / "model.safetensors")
    with pytest.raises(UserError, match="changed since late branched"):
        train(None, lineage, branch=planned)
    assert not (lineage / "late").exists()


# --- choosing the checkpoint ------------------------------------------------------------------


def test_choose_checkpoint(lineage):
    b0 = xp.Experiment(lineage / "b0")
    assert b0.checkpoint_steps() == [1, 4] and b0.best("val")["step"] == 4
    assert choose_checkpoint(b0, None) == (b0.checkpoint_dir(4), 4)
    b0.write_best("val", {**b0.best("val"), "step": 1})
    assert choose_checkpoint(b0, None) == (b0.checkpoint_dir(1), 1)  # best is the default
    assert choose_checkpoint(b0, "best") == (b0.checkpoint_dir(1), 1)
    assert choose_checkpoint(b0, "latest") == (b0.checkpoint_dir(4), 4)
    assert choose_checkpoint(b0, " LATEST ") == (b0.checkpoint_dir(4), 4)
    assert choose_checkpoint(b0, "4") == (b0.checkpoint_dir(4), 4)
    with pytest.raises(UserError, match=r"no checkpoint at step 3: it has 1, 4"):
        choose_checkpoint(b0, "3")
    with pytest.raises(UserError, match=r"'abc' is not a step: give best, latest or one of 1, 4"):
        choose_checkpoint(b0, "abc")
    with pytest.raises(UserError, match="not a step"):
        choose_checkpoint(b0, "-1")


def test_latest_is_the_default_without_a_best(lineage):
    b0 = xp.Experiment(lineage / "b0")
    b0.best_path("val").unlink()
    assert choose_checkpoint(b0, None) == (b0.checkpoint_dir(4), 4)
    with pytest.raises(UserError, match="no best checkpoint on disk"):
        choose_checkpoint(b0, "best")


def test_a_best_step_that_is_gone_is_refused_not_replaced(lineage):
    b0 = xp.Experiment(lineage / "b0")
    b0.write_best("val", {**b0.best("val"), "step": 3})
    with pytest.raises(UserError, match="no best checkpoint on disk.*1, 4"):
        choose_checkpoint(b0, None)


def test_no_checkpoints(lineage):
    empty = make_child(lineage, "empty")
    with pytest.raises(UserError, match="has no checkpoint to branch from"):
        choose_checkpoint(empty, "latest")


# --- the plan: config, ids, refusals (nothing written) ----------------------------------------


def test_plan_writes_nothing_and_says_what_differs(lineage):
    before = tree_snapshot(lineage)
    planned = _plan(lineage, exp_id="kid", flags={"optim": {"init_lr_frac": 0.3}})
    assert tree_snapshot(lineage) == before and not (lineage / "kid").exists()
    cfg = planned.cfg
    assert (cfg.phase, cfg.id, cfg.data.direction) == ("sft", "kid", "backward")
    assert cfg.optim.init_lr_frac == 0.3 and planned.link["init_lr_frac"] == 0.3
    assert cfg.train.max_steps == 1 and cfg.early_stop.monitor == "val_chat_loss"
    assert cfg.optim.warmdown_frac == 0.5  # the phase default, not the parent's
    changed = {k: (old, new) for k, old, new in planned.overridden}
    assert changed["optim.init_lr_frac"] == (1.0, 0.3)
    assert changed["chat.dataset"] == ("pydocs-chat", "tinychat")
    assert not any(k.startswith("model.") for k in changed) and "phase" not in changed
    what = dict(planned.inherited)
    assert what["direction"] == "backward" and "depth 2" in what["model"]
    assert "seq 128" in what["model"] and "300 tokens" in what["tokenizer"]
    assert what["weights"].startswith("b0 step 4")


def test_phase_defaults_apply_below_user_keys(lineage):
    import yaml

    from backlm.train.branch import PHASE_DEFAULTS

    rl = yaml.safe_load(PHASE_DEFAULTS.read_text())["rl"]
    planned = plan_branch("rl", "s1", lineage, overrides=["optim.warmdown_frac=0.25"])
    assert planned.cfg.optim.init_lr_frac == rl["optim"]["init_lr_frac"] != 1.0
    assert planned.cfg.train.max_steps == rl["train"]["max_steps"]
    assert planned.cfg.optim.warmdown_frac == 0.25
    assert planned.cfg.early_stop.mode == "max"
    assert planned.link["chain_ids"] == ["b0", "s1"]
    assert planned.link["parent_phase"] == "sft" and planned.step == 2


def test_default_id_names_phase_direction_and_depth(lineage):
    planned = _plan(lineage)
    import re

    assert re.fullmatch(r"sft_backward_d2_\d{8}-\d{6}", planned.cfg.id), planned.cfg.id
    forward = _plan(lineage, flags={"data": {"direction": "forward"}},
                    allow_direction_change=True)
    assert forward.cfg.id.startswith("sft_forward_d2_")  # the child's direction


def test_created_child_is_a_created_experiment(lineage):
    planned = plan_branch("rl", "s1", lineage, exp_id="r0")
    exp = create_child(planned, lineage, lambda _: None)
    meta = exp.metadata()
    assert (meta["phase"], meta["direction"], meta["parent"], meta["status"]) == \
        ("rl", "backward", "s1", "created")
    assert json.loads(exp.parent_link_path.read_text())["chain_ids"] == ["b0", "s1"]
    assert exp.config().phase == "rl"


@pytest.mark.parametrize(("kwargs", "words"), [
    ({"phase": "rl"}, "an rl phase cannot follow b0, a base run"),
    ({"phase": "mid", "parent": "s1"}, "a mid phase cannot follow s1, an sft run"),
    ({"phase": "base"}, "cannot branch a 'base' phase"),
    ({"phase": "foo", "parent": "nope"}, "cannot branch a 'foo' phase"),
    ({"parent": "nope"}, "no experiment 'nope'"),
    ({"overrides": ["model.depth=3"]}, "model.depth cannot be set on a branch"),
    ({"overrides": ["chat.dataset=nope"]}, "chat dataset 'nope' has no train shards"),
    ({"exp_id": ""}, "--id is empty"),
    ({"exp_id": "  "}, "--id is empty"),
    ({"exp_id": "s1"}, "experiment s1 already exists"),
    ({"exp_id": "b0"}, "experiment b0 already exists"),
    ({"exp_id": "a/b"}, "invalid experiment id"),
    ({"flags": {"data": {"direction": "forward"}}}, "add --allow-direction-change"),
    ({"step": "9"}, "no checkpoint at step 9"),
])
def test_refusals_write_nothing(lineage, kwargs, words):
    before = tree_snapshot(lineage)
    with pytest.raises(UserError) as err:
        _plan(lineage, **kwargs)
    assert words in str(err.value) and "\n" not in str(err.value)
    assert tree_snapshot(lineage) == before


def test_direction_change_on_purpose_is_recorded(lineage):
    planned = _plan(lineage, flags={"data": {"direction": "forward"}},
                    allow_direction_change=True)
    assert planned.cfg.data.direction == "forward"
    assert planned.link["direction_change"] == {"from": "backward", "to": "forward"}
    assert planned.link["parent_direction"] == "backward"


def test_tokenizer_missing_or_altered_is_refused(lineage):
    from backlm.tokenizer import Tokenizer
    from tests.conftest import make_docs

    tok_dir = xp.Experiment(lineage / "b0").tokenizer_dir
    other = Tokenizer.train([d.upper() for d in make_docs(300, seed=5)], vocab_size=300)
    assert other.vocab_size == 300
    saved = {p.name: p.read_bytes() for p in tok_dir.iterdir()}
    other.save(tok_dir)
    with pytest.raises(UserError, match="not the tokenizer checkpoint step_000004 was trained"):
        _plan(lineage)
    for name, data in saved.items():
        (tok_dir / name).write_bytes(data)
    _plan(lineage)  # restored: accepted again
    (tok_dir / "backlm_tokenizer.json").unlink()
    with pytest.raises(UserError, match="restore the experiment's own tokenizer/ folder"):
        _plan(lineage)


def test_corrupt_parent_weights_are_refused(lineage):
    _flip(xp.Experiment(lineage / "b0").checkpoint_dir(4) / "model.safetensors")
    with pytest.raises(UserError, match="checksum mismatch"):
        _plan(lineage)
    assert _plan(lineage, step="1").step == 1  # another step is still fine
