"""The validation pass: every rule refuses a bad value by name, and planning writes nothing."""

from __future__ import annotations

import math

import pytest

from backlm.config import RunConfig, keys, load_config
from backlm.errors import UserError
from backlm.train.plan import check_config, monitors, plan_new_run, plan_train
from tests.helpers import TINY, assert_user_error, branch_args, run_cli, tiny_args, tree_snapshot

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


# --- one planning pass: the run and --estimate-only refuse the same; no value dropped ---------

def _t(*args: str, steps: int = 8, **kw):
    """A train case: the tiny run (``--max-steps steps``, forward, id ``v``) plus ``args``."""
    return pytest.param(tiny_args("--direction", "forward", "--id", "v", *args, steps=steps),
                        **kw)


# (arguments, fragments the one line must name)
TRAIN_REFUSED = [
    _t("--set", "data.direction=backward", id="set-direction-vs-flag"),
    _t("--set", "train.max_steps=5", steps=10, id="set-max-steps-vs-flag"),
    _t("--set", "train.seed=3", "--seed", "4", id="set-seed-vs-flag"),
    _t("--set", "id=w", id="set-id-vs-flag"),
    _t("--set", "description=a", "--description", "b", id="set-description-vs-flag"),
    _t("--set", "fivecat.stop_on_inversion=true", "--no-stop-on-inversion", id="set-vs-switch"),
    _t("--set", "log.wandb=offline", "--wandb", "off", id="set-wandb-vs-flag"),
    _t("--device", "auto", id="set-device-vs-flag"),  # tiny sets train.device=cpu
    _t("--set", "phase=sft", "--phase", "base", id="set-phase-vs-flag"),
    _t("--set", "data.mix=0.3", id="mix-for-forward"),
    _t("--set", "chat.dataset=x", id="chat-for-base"),
    _t("--set", "rl.group_size=2", "--phase", "base,sft", id="rl-for-chain-without-rl"),
    _t("--set", "chat.text_frac=0.2", "--phase", "base,sft", id="text-frac-for-sft-chain"),
    _t("--phase", "", id="phase-empty"),
    _t("--phase", "  ", id="phase-blank"),
    _t("--phase", "bogus", id="phase-unknown"),
    _t("--set", "model.vocab_size=500", id="vocab-the-tokenizer-replaces"),
    _t("--nproc-per-node", "0", id="nproc-0"),
    _t("--set", "model.depth=0", id="depth-0"),
    _t("--set", "early_stop.monitor=val_chat_loss", id="monitor-not-measured"),
]
NAMES = {  # case id -> what the line must name
    "set-direction-vs-flag": ("--set data.direction=backward", "--direction forward",
                              "give one"),
    "set-max-steps-vs-flag": ("--set train.max_steps=5", "--max-steps 10"),
    "set-seed-vs-flag": ("--set train.seed=3", "--seed 4"),
    "set-id-vs-flag": ("--set id=w", "--id v"),
    "set-description-vs-flag": ("--set description=a", "--description b"),
    "set-vs-switch": ("--set fivecat.stop_on_inversion=true", "--no-stop-on-inversion"),
    "set-wandb-vs-flag": ("--set log.wandb=offline", "--wandb off"),
    "set-device-vs-flag": ("--set train.device=cpu", "--device auto"),
    "set-phase-vs-flag": ("--set phase=sft", "--phase base"),
    "mix-for-forward": ("data.mix=0.3", "bidirectional", "forward"),
    "chat-for-base": ("chat.dataset=x", "mid or sft", "base run"),
    "rl-for-chain-without-rl": ("rl.group_size=2", "rl runs", "base,sft"),
    "text-frac-for-sft-chain": ("chat.text_frac=0.2", "mid runs", "base,sft"),
    "phase-empty": ("--phase ''", "base, mid, sft, rl"),
    "phase-blank": ("--phase '  '", "base, mid, sft, rl"),
    "phase-unknown": ("bogus", "base, mid, sft, rl"),
    "vocab-the-tokenizer-replaces": ("model.vocab_size=500", "300-token tokenizer"),
    "nproc-0": ("--nproc-per-node",),
    "depth-0": ("depth",),
    "monitor-not-measured": ("val_chat_loss", "val_bpb"),
}


@pytest.mark.parametrize("args", TRAIN_REFUSED)
def test_train_and_its_estimate_refuse_the_same_line_and_write_nothing(home, request, args):
    names = NAMES[request.node.callspec.id]
    before = tree_snapshot(home)
    line = assert_user_error(run_cli(args), *names)
    assert assert_user_error(run_cli([*args, "--estimate-only"]), *names) == line
    assert tree_snapshot(home) == before and not (home / "exps").exists()


@pytest.mark.parametrize("args", [
    _t("--set", "data.direction=forward", id="same-direction"),
    _t("--set", "train.max_steps=8.0", id="same-steps-other-spelling"),
    _t("--set", "data.mix=0.5", id="mix-default-for-forward"),
    _t("--set", "chat.dataset=pydocs-chat", id="chat-default-for-base"),
    _t("--set", "chat.dataset=x", "--phase", "base,sft", id="chat-for-chain-with-sft"),
])
def test_an_equal_value_given_twice_or_a_default_passes(home, args):
    res = run_cli([*args, "--estimate-only"])
    assert res.exit_code == 0, res.output


def test_plan_train_is_the_pass_both_take(home):
    from backlm.config import Flags
    from backlm.train.launch import Processes

    plan = plan_train(home / "exps", overrides=TINY, phase="base,sft", processes=Processes(),
                      flags=Flags({"data": {"direction": "backward"}}))
    assert plan.phases == ("base", "sft") and plan.cfg.model.vocab_size == 300
    assert plan.new is not None and "data.direction" in plan.explicit
    assert not (home / "exps").exists()


BRANCH_REFUSED = [  # from the phase world's backward base b0 (arguments, fragments)
    (("--set", "data.mix=0.3"), ("data.mix=0.3", "bidirectional", "backward")),
    (("--set", "train.max_steps=5"), ("--set train.max_steps=5", "--max-steps 2")),
    (("--set", "data.direction=forward", "--direction", "backward"),
     ("--set data.direction=forward", "--direction backward")),
    (("--set", "optim.init_lr_frac=0.3", "--init-lr-frac", "0.5"),
     ("--set optim.init_lr_frac=0.3", "--init-lr-frac 0.5")),
    (("--set", "rl.group_size=2"), ("rl.group_size=2", "rl runs", "an sft run")),
    (("--set", "chat.text_frac=0.2"), ("chat.text_frac=0.2", "mid runs", "an sft run")),
    (("--config", "CONFIG"), ("model.depth", "parent checkpoint")),
]


@pytest.mark.parametrize("args,names", BRANCH_REFUSED,
                         ids=[" ".join(a) for a, _ in BRANCH_REFUSED])
def test_branch_refuses_a_value_it_would_drop_and_writes_nothing(lineage, tmp_path, args,
                                                                  names):
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text("model:\n  depth: 3\n")
    args = tuple(str(yaml_file) if a == "CONFIG" else a for a in args)
    before = tree_snapshot(lineage)
    assert_user_error(run_cli(branch_args("sft", "b0", "--id", "c", *args)), *names)
    assert tree_snapshot(lineage) == before


@pytest.mark.parametrize("args,names", [
    (("--set", "data.direction=backward"), ("--set data.direction=backward",
                                            "quickstart's per-member direction")),
    (("--set", "data.direction=forward"), ("per-member direction", "backward")),
    (("--set", "train.seed=3"), ("--set train.seed=3", "--seed 0")),
    (("--set", "train.max_steps=5", "--steps", "6"), ("--set train.max_steps=5", "--steps 6")),
    (("--set", "id=x"), ("--set id=x", "--prefix")),
])
def test_quickstart_refuses_a_set_its_members_replace(home, args, names):
    before = tree_snapshot(home)
    assert_user_error(run_cli(["quickstart", *args]), *names)
    assert tree_snapshot(home) == before
