"""The validation pass: every rule refuses a bad value by name, and planning writes nothing."""

from __future__ import annotations

import math

import pytest

from backlm.config import RunConfig, keys, load_config
from backlm.errors import UserError
from backlm.train.plan import check_config, monitors, plan_new_run
from tests.helpers import TINY

# A value that breaks each range a config field declares (no range without a case here).
BAD = {
    "data.mix": 1.5, "data.tokenizer_threads": 0, "data.docs_per_batch": 0,
    "data.buffer_docs": -1, "model.depth": 0, "model.width": -64, "model.head_dim": 33,
    "model.seq_len": 0, "model.softcap": -1.0, "model.rope_base": 0.5,
    "optim.matrix_lr": -0.1, "optim.embedding_lr": -1.0, "optim.unembedding_lr": -1.0,
    "optim.scalar_lr": -1.0, "optim.weight_decay": -0.1, "optim.adam_betas": [0.9, 1.5],
    "optim.muon_momentum": 1.0, "optim.warmup_steps": -1, "optim.warmdown_frac": 1.2,
    "optim.final_lr_frac": -0.5, "optim.grad_clip": -1.0, "optim.ns_steps": 0,
    "optim.muon_momentum_warmup_steps": -3, "optim.muon_momentum_start": 2.0,
    "train.max_steps": 0, "train.total_batch_tokens": 0, "train.device_batch_size": 0,
    "train.eval_every": 0, "train.eval_tokens": 0, "train.save_every": 0, "train.log_every": 0,
    "train.seed": -1, "train.dtype": "fp16", "fivecat.every": -1, "fivecat.max_samples": 1,
    "early_stop.mode": "lowest", "early_stop.patience": -1, "early_stop.min_delta": -0.1,
    "cost.usd_per_gpu_hour": -2.0, "cost.assumed_mfu": 0.0, "phase": "sideways",
    "log.sample_temperature": -1.0, "optim.init_lr_frac": 0.0, "log.per_token_every": -1,
    "log.per_token_rows": -1, "log.stats_every": -1, "log.attention_every": -1,
    "log.sample_every": -1, "log.sample_tokens": -1, "log.flush_every": 0, "log.print_every": -1,
    "log.print_seconds": -1.0, "chat.train_on": "nobody",
    "chat.text_frac": 1.5, "rl.prompts_per_step": 0, "rl.group_size": 1, "rl.max_new_tokens": 0,
    "rl.temperature": 0.0, "rl.kl_coef": -0.1, "rl.eval_prompts": 0,
}


def _cfg(*extra: str) -> RunConfig:
    return load_config(RunConfig, overrides=[*TINY, *extra])


def test_every_range_has_a_bad_case():
    assert {key.name for key in keys(RunConfig()) if key.check} == set(BAD)


@pytest.mark.parametrize("key", sorted(BAD))
def test_each_rule_refuses_its_bad_value_by_name(key):
    value = BAD[key]
    cfg = _cfg(f"{key}={value}")
    with pytest.raises(UserError) as err:
        check_config(cfg)
    assert key in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("key", ["optim.matrix_lr", "data.mix", "early_stop.min_delta"])
@pytest.mark.parametrize("value", [".nan", ".inf"])
def test_non_finite_numbers_are_refused(key, value):
    with pytest.raises(UserError, match=key.replace(".", r"\.")):
        check_config(_cfg(f"{key}={value}"))


def test_a_good_config_passes_and_thresholds_may_be_null():
    cfg = _cfg("early_stop.stopping_threshold=1.5")
    check_config(cfg)
    with pytest.raises(UserError, match="stopping_threshold"):
        check_config(_cfg(f"early_stop.stopping_threshold={math.inf}"))


@pytest.mark.parametrize("extra, needle", [
    (["model.width=80"], "not a multiple of model.head_dim"),
    (["train.total_batch_tokens=100"], "multiple of"),
    (["model.vocab_size=100"], "vocab size must be at least"),
    (["early_stop.monitor=val_bpb_forward"], "not measured by a forward run"),
    (["fivecat.spec=nope/spec.yaml"], "does not exist"),
    (["cost.gpu=tpu9"], "unknown cost.gpu"),
    (["data.direction=sideways"], "unknown direction"),
])
def test_shapes_and_names_are_checked(extra, needle):
    with pytest.raises(UserError, match=needle):
        check_config(_cfg(*extra))


def test_bidirectional_runs_may_monitor_one_order():
    assert "val_bpb_backward" in monitors("bidirectional")
    check_config(_cfg("data.direction=bidirectional", "early_stop.monitor=val_bpb_backward"))


def _tree(path):
    return sorted(str(p.relative_to(path)) for p in path.rglob("*")) if path.exists() else []


def test_plan_new_run_writes_nothing_and_refuses_overrides_it_would_drop(home):
    root = home / "exps"
    before = _tree(home)
    cfg = _cfg("model.vocab_size=400")
    with pytest.raises(UserError, match="300-token tokenizer"):
        plan_new_run(cfg, root, explicit={"model.vocab_size"})
    with pytest.raises(UserError, match="data.mix only applies"):
        plan_new_run(_cfg("data.mix=0.3"), root, explicit={"data.mix"})
    plan_new_run(_cfg("data.mix=0.5"), root, explicit={"data.mix"})  # the default: no harm
    new = plan_new_run(cfg, root, explicit=set())  # a preset's size yields to the data's
    assert cfg.model.vocab_size == 300 and not new.prepare_data
    assert _tree(home) == before


@pytest.mark.parametrize("where", ["file", "under-file", "proc"])
def test_unusable_experiment_folders_are_refused_before_anything(home, where):
    target = {"file": home / "afile", "under-file": home / "afile" / "sub",
              "proc": home / "proc"}[where]
    (home / "afile").write_text("x")
    if where == "proc":
        target = __import__("pathlib").Path("/proc/backlm-nowhere/exps")
    before = _tree(home)
    with pytest.raises(UserError, match="experiments folder"):
        plan_new_run(_cfg(), target)
    assert _tree(home) == before


def test_an_unavailable_device_is_refused(home, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError, match="no CUDA device"):
        plan_new_run(_cfg("train.device=cuda"), home / "exps")


def test_memory_refuses_on_cpu_and_warns_on_gpu_when_only_activations_exceed(monkeypatch):
    import backlm.hardware as hardware
    import backlm.train.cost as cost
    from backlm.train.plan import check_device

    cfg = _cfg()
    need = cost.memory_estimate(cfg, 1, "cpu")
    monkeypatch.setattr(hardware, "available_memory", lambda device: need.total - 1)
    with pytest.raises(UserError, match="GiB is free: lower model.depth"):
        check_device(cfg)
    monkeypatch.setattr(hardware, "available_memory", lambda device: need.total + 1)
    assert check_device(cfg) is None

    gpu = hardware.DeviceInfo("cuda:0", "bf16", "H100", 1e15, "datasheet")
    monkeypatch.setattr(hardware, "resolve_device", lambda *a, **k: gpu)
    need = cost.memory_estimate(cfg, 1, "cuda")
    state = need.weights + need.grads + need.optimizer
    monkeypatch.setattr(hardware, "available_memory", lambda device: state + 1)
    assert check_device(cfg).startswith("warning:")
    monkeypatch.setattr(hardware, "available_memory", lambda device: state - 1)
    with pytest.raises(UserError, match="GiB is free"):
        check_device(cfg)
