"""One checkpoint folder: weights, optimizer state and metadata round-trip; damage is found."""

from __future__ import annotations

import json
import random

import pytest
import torch

from backlm import checkpoint as ckpt
from backlm.errors import UserError


def _model_and_optimizer():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 2))
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(3, 4)).sum().backward()
    opt.step()
    return model, opt


def test_save_then_load_round_trips(tmp_path):
    model, opt = _model_and_optimizer()
    folder = ckpt.save(tmp_path / "step_000007", model.state_dict(), opt.state_dict(),
                       {"step": 7, "direction": "backward"})
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
    folder = ckpt.save(tmp_path / "s", model.state_dict(), opt.state_dict(), {"step": 1})
    (folder / "stray").write_text("x")
    ckpt.save(tmp_path / "s", model.state_dict(), opt.state_dict(), {"step": 2})
    assert ckpt.read_meta(folder)["step"] == 2 and not (folder / "stray").exists()


def test_damage_is_a_user_error(tmp_path):
    model, opt = _model_and_optimizer()
    folder = ckpt.save(tmp_path / "s", model.state_dict(), opt.state_dict(), {"step": 1})
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
