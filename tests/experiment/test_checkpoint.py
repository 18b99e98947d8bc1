"""One checkpoint folder: weights, optimizer state and metadata round-trip; damage is found; a
full disk, another write error or a Ctrl-C in mid-write leaves the previous checkpoint and no
temporary folder; what a SIGKILL left is removed."""

from __future__ import annotations

import errno
import json
import os
import random
import shutil

import pytest
import torch

from backlm.errors import UserError
from backlm.experiment import checkpoint as ckpt
from backlm.experiment import compat, weights
from tests.helpers import fail_optimizer_write


def _model_and_optimizer():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 2))
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(3, 4)).sum().backward()
    opt.step()
    return model, opt


def _meta(step: int, **changes) -> dict:
    """A meta.json with every key a resume needs."""
    meta = {"step": step, "direction": "backward", "model_config": {"depth": 2}, "tokens": 64,
            "loaders": [{}], "rng": ckpt.rng_state(cuda=False)}
    return {**meta, **changes}


def test_save_then_load_round_trips(tmp_path):
    model, opt = _model_and_optimizer()
    folder = ckpt.save(tmp_path / "step_000007", model.state_dict(), opt.state_dict(), _meta(7))
    assert ckpt.is_complete(folder) and not list(tmp_path.glob(".*tmp"))
    state, optim, meta = ckpt.load(folder)
    assert meta["step"] == 7 and meta["direction"] == "backward"
    assert meta["model_sha256"] == ckpt.sha256_file(folder / ckpt.MODEL_FILE)
    for k, v in model.state_dict().items():
        assert torch.equal(state[k], v)
    fresh, fresh_opt = _model_and_optimizer()
    fresh.load_state_dict(state)
    fresh_opt.load_state_dict(optim)  # the structure (ints, tuples, tensors) came back whole
    assert fresh_opt.state_dict()["param_groups"] == opt.state_dict()["param_groups"]
    assert torch.equal(fresh_opt.state_dict()["state"][0]["exp_avg"],
                       opt.state_dict()["state"][0]["exp_avg"])
    _, none, _ = ckpt.load(folder, with_optimizer=False)
    assert none is None


def test_a_second_save_replaces_the_folder(tmp_path):
    model, opt = _model_and_optimizer()
    folder = ckpt.save(tmp_path / "s", model.state_dict(), opt.state_dict(), _meta(1))
    (folder / "stray").write_text("x")
    ckpt.save(tmp_path / "s", model.state_dict(), opt.state_dict(), _meta(2))
    assert ckpt.read_meta(folder)["step"] == 2 and not (folder / "stray").exists()


def test_damage_is_a_user_error(tmp_path):
    model, opt = _model_and_optimizer()
    folder = ckpt.save(tmp_path / "s", model.state_dict(), opt.state_dict(), _meta(1))
    weights = folder / ckpt.MODEL_FILE
    good = weights.read_bytes()
    weights.write_bytes(good[:-4] + b"\0\0\0\0")
    with pytest.raises(UserError, match="checksum mismatch"):
        ckpt.load(folder)
    weights.write_bytes(good)
    (folder / "optim.safetensors").unlink()
    with pytest.raises(UserError, match="incomplete: optim.safetensors is missing"):
        ckpt.load(folder)
    (folder / ckpt.META_FILE).write_text("{torn")
    with pytest.raises(UserError, match="corrupt"):
        ckpt.read_meta(folder)
    (folder / ckpt.META_FILE).unlink()
    assert not ckpt.is_complete(folder)
    with pytest.raises(UserError, match="no meta.json"):
        ckpt.read_meta(folder)


def test_rng_state_restores_the_same_draws():
    torch.manual_seed(3)
    random.seed(3)
    state = json.loads(json.dumps(ckpt.rng_state(cuda=False)))  # survives meta.json
    first = (torch.rand(3), random.random())
    torch.manual_seed(99)
    random.seed(99)
    ckpt.restore_rng_state(state, cuda=False)
    again = (torch.rand(3), random.random())
    assert torch.equal(first[0], again[0]) and first[1] == again[1]


@pytest.mark.parametrize("key", ["step", "direction", "model_config", "tokens", "loaders", "rng"])
def test_meta_missing_a_key_is_refused_by_name(tmp_path, key):
    meta = {k: v for k, v in _meta(3).items() if k != key}
    with pytest.raises(UserError, match=f"lacks '{key}'"):
        ckpt.validate_meta(meta, tmp_path, resume=True)


@pytest.mark.parametrize("change, needle", [
    ({"step": "x"}, "invalid 'step'"), ({"step": -1}, "invalid 'step'"),
    ({"step": True}, "invalid 'step'"), ({"direction": "sideways"}, "unknown direction"),
    ({"model_config": {"depth": "deep"}}, "expects int"),
    ({"model_config": {"layers": 3}}, "unknown config key"),
    ({"loaders": [1]}, "data positions"), ({"rng": {"torch": 1}}, "random-number"),
    ({"tokens": 1.5}, "invalid 'tokens'"),
])
def test_meta_with_a_bad_value_is_refused(tmp_path, change, needle):
    with pytest.raises(UserError, match=needle):
        ckpt.validate_meta({**_meta(3), **change}, tmp_path, resume=True)


def test_inference_needs_only_the_model_keys(tmp_path):
    ckpt.validate_meta({"step": 1, "direction": "forward", "model_config": {}}, tmp_path,
                       resume=False)
    with pytest.raises(UserError, match="not a JSON object"):
        ckpt.validate_meta([1], tmp_path, resume=False)


def test_weights_must_match_the_model_shapes(tmp_path):
    model, _ = _model_and_optimizer()
    state = dict(model.state_dict())
    compat.check_weights(model, state, tmp_path)
    state["0.weight"] = torch.zeros(9, 4)
    with pytest.raises(UserError, match=r"0.weight has shape \[9, 4\]"):
        compat.check_weights(model, state, tmp_path)
    del state["0.weight"]
    with pytest.raises(UserError, match="no tensor '0.weight'"):
        compat.check_weights(model, state, tmp_path)


def test_the_tokenizer_must_be_the_models_own(tmp_path):
    from backlm.tokenizer import Tokenizer
    from tests.conftest import make_docs

    tok = Tokenizer.train(make_docs(200), vocab_size=300)
    tok.save(tmp_path / "tokenizer")
    record = compat.tokenizer_record(tok)
    assert compat.check_tokenizer(tmp_path / "tokenizer", 300, {"tokenizer": record},
                                tmp_path).vocab_size == 300
    for size in (280, 400):
        with pytest.raises(UserError, match=f"has a {size}-token vocabulary.*own tokenizer"):
            compat.check_tokenizer(tmp_path / "tokenizer", size, None, tmp_path)
    shuffled = {**record, "special_ids": {**record["special_ids"], "bos": 5}}
    with pytest.raises(UserError, match="special tokens differently"):
        compat.check_tokenizer(tmp_path / "tokenizer", 300, {"tokenizer": shuffled}, tmp_path)
    with pytest.raises(UserError, match="is missing"):
        compat.check_tokenizer(tmp_path / "gone", 300, None, tmp_path)

def _saved_before(tmp_path):
    """A checkpoint at step 2 (the resume point) and the model and optimizer to save next."""
    model, opt = _model_and_optimizer()
    ckpt.save(tmp_path / "step_000002", model.state_dict(), opt.state_dict(), _meta(2))
    return model, opt


def _only_the_resume_point(tmp_path):
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_000002"]  # no .tmp, no step 3
    state, _, meta = ckpt.load(tmp_path / "step_000002")  # checksum verified
    assert meta["step"] == 2 and state


@pytest.mark.parametrize("error", [
    OSError(errno.ENOSPC, "No space left on device"),
    OSError(errno.EDQUOT, "Disk quota exceeded"),
])
def test_a_full_disk_is_one_user_error_and_leaves_nothing(tmp_path, monkeypatch, error):
    model, opt = _saved_before(tmp_path)
    real = weights.write

    def second_file_fails(path, *args, **kw):
        if str(path).endswith(ckpt.OPTIM_FILE):
            raise error
        return real(path, *args, **kw)

    monkeypatch.setattr(weights, "write", second_file_fails)
    with pytest.raises(UserError) as exc:
        ckpt.save(tmp_path / "step_000003", model.state_dict(), opt.state_dict(), _meta(3),
                  previous=2, resume_with="backlm train --resume e1")
    assert str(exc.value) == (
        f"no space left on device while writing checkpoint step 3 to {tmp_path}; the "
        "checkpoint at step 2 is still the resume point; free space and resume with "
        "`backlm train --resume e1`")
    _only_the_resume_point(tmp_path)


def test_a_full_disk_at_a_new_runs_first_checkpoint_advises_no_resume(tmp_path, monkeypatch):
    """The caller removes a new experiment whose first save fails: nothing to resume."""
    model, opt = _model_and_optimizer()
    fail_optimizer_write(monkeypatch)
    folder = tmp_path / "e1" / "checkpoints" / "step_000001"
    with pytest.raises(UserError) as exc:
        ckpt.save(folder, model.state_dict(), opt.state_dict(), _meta(1),
                  resume_with="backlm train --resume e1", fresh=True)
    assert str(exc.value) == (
        f"no space left on device while writing checkpoint step 1 to {folder.parent}; the new "
        "experiment e1 has no checkpoint yet, so it is removed; free space and run the same "
        "command again (there is nothing to resume)")


def test_other_write_errors_and_interrupts_leave_nothing(tmp_path, monkeypatch):
    model, opt = _saved_before(tmp_path)

    def ctrl_c():
        raise KeyboardInterrupt

    def broken(*args, **kw):
        raise OSError(errno.EIO, "Input/output error")

    with pytest.raises(KeyboardInterrupt):  # a Ctrl-C once the weights are written
        ckpt.save(tmp_path / "step_000003", model.state_dict(), opt.state_dict(), _meta(3),
                  after_weights=ctrl_c)
    _only_the_resume_point(tmp_path)
    rename = os.rename
    monkeypatch.setattr(os, "rename", broken)  # the last move into place fails
    with pytest.raises(UserError, match=r"^could not write checkpoint step 3 to .*"
                       r"\(Input/output error\); no earlier checkpoint exists"):
        ckpt.save(tmp_path / "step_000003", model.state_dict(), opt.state_dict(), _meta(3))
    monkeypatch.setattr(os, "rename", rename)
    _only_the_resume_point(tmp_path)


def test_too_little_free_space_is_refused_before_writing(tmp_path, monkeypatch):
    model, opt = _saved_before(tmp_path)
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage",
                        lambda p: usage._replace(free=1_000_000))  # 1 MB < the 4 MB margin
    with pytest.raises(UserError) as exc:
        ckpt.save(tmp_path / "step_000003", model.state_dict(), opt.state_dict(), _meta(3),
                  previous=2, resume_with="backlm train --resume e1")
    assert str(exc.value) == (
        f"not enough disk space for checkpoint step 3 in {tmp_path}: it needs about 4 MB, 1 MB "
        "are free; the checkpoint at step 2 is still the resume point; free space and resume "
        "with `backlm train --resume e1`")
    _only_the_resume_point(tmp_path)


def test_remove_partial_takes_what_a_kill_left_and_nothing_else(tmp_path):
    model, opt = _saved_before(tmp_path)
    for name in (".step_000004.tmp", ".step_000002.old"):  # killed in mid-write, mid-replace
        (tmp_path / name).mkdir()
        (tmp_path / name / ckpt.MODEL_FILE).write_bytes(b"torn")
    (tmp_path / ".best.json.x1y2.tmp").write_text("{")  # an atomic write cut short
    assert ckpt.remove_partial(tmp_path) == [".best.json.x1y2.tmp", ".step_000004.tmp",
                                             ".step_000002.old"]
    _only_the_resume_point(tmp_path)
