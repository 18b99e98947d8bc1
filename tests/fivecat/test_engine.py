"""5CAT on tiny models trained on real text: trained models pass, broken ones fail.

One small corpus (docstrings of a few standard-library packages; the interpreter's help topics
as OOD) and one tiny model per direction are built once for the module.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sysconfig
from pathlib import Path
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from backlm.cli import app

TINY = [
    "model.depth=2", "model.width=64", "model.head_dim=32", "model.seq_len=64",
    "model.vocab_size=512", "train.device_batch_size=16", "train.total_batch_tokens=1024",
    "train.eval_every=50", "train.eval_tokens=2048", "train.save_every=1000",
    "train.device=cpu", "data.dataset=stdlib", "data.docs_per_batch=64",
    "data.buffer_docs=64", "log.hdf5=false",
]
STEPS = 100  # enough for every gate to pass with a margin (README, ## 5CAT)
PACKAGES = ("email", "json", "asyncio", "logging", "unittest", "http", "xml", "importlib",
            "concurrent", "multiprocessing")


def train_args(direction: str, exp_id: str, *extra: str, steps: int = STEPS) -> list[str]:
    args = ["train", "--direction", direction, "--id", exp_id, "--max-steps", str(steps),
            "--wandb", "off"]
    for s in TINY:
        args += ["--set", s]
    return args + list(extra)


def cli(*args: str):
    return CliRunner().invoke(app, list(args))


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    """BACKLM_HOME with the ``stdlib`` dataset (val: every 10th document; OOD: help topics)."""
    from backlm.data import corpus
    from backlm.data.shards import write_shard
    from backlm.tokenizer import Tokenizer

    root = tmp_path_factory.mktemp("fivecat")
    std = Path(sysconfig.get_paths()["stdlib"])
    docs = corpus.extract_docs(corpus.source_files([std / p for p in PACKAGES]), workers=1)
    train = [d for i, d in enumerate(docs) if i % 10]
    d = root / "home" / "data" / "stdlib"
    write_shard(d / "train_00000.parquet", train)
    write_shard(d / "val_00000.parquet", docs[::10])
    write_shard(d / "ood_00000.parquet", corpus.ood_docs(corpus.default_ood_source()))
    Tokenizer.train(train, vocab_size=512).save(d / "tokenizer")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BACKLM_HOME", str(root / "home"))
        mp.setenv("BACKLM_EXPERIMENTS", str(root / "exps"))
        yield root


def _trained(home: Path, direction: str, exp_id: str, *extra: str, steps: int = STEPS) -> Path:
    res = cli(*train_args(direction, exp_id, *extra, steps=steps))
    assert res.exit_code == 0, res.output
    return home / "exps" / exp_id


@pytest.fixture(scope="module")
def forward(home) -> Path:
    return _trained(home, "forward", "fwd")


@pytest.fixture(scope="module")
def backward(home) -> Path:
    """Trained with in-training 5CAT every 50 steps (and the inversion stop armed)."""
    return _trained(home, "backward", "bwd", "--set", "fivecat.every=50",
                    "--stop-on-inversion")


@pytest.fixture(scope="module")
def mislabeled(forward) -> Path:
    """The forward model with a checkpoint that declares it backward."""
    dst = forward.parent / "mislabeled"
    shutil.copytree(forward, dst)
    for meta_path in dst.glob("checkpoints/step_*/meta.json"):
        meta = json.loads(meta_path.read_text())
        meta_path.write_text(json.dumps(dict(meta, direction="backward")))
    return dst


def fivecat(exp: Path, *extra: str) -> tuple[int, str, dict]:
    """Run ``backlm 5cat`` on ``exp``; exit code, output and the JSON result it saved."""
    res = cli("5cat", exp.name, *extra)
    saved = sorted(exp.glob("evaluations/*/fivecat/*.json"), key=lambda p: p.stat().st_mtime)
    return res.exit_code, res.output, json.loads(saved[-1].read_text()) if saved else {}


def test_forward_model_passes(forward):
    code, out, result = fivecat(forward)
    assert code == 0, out
    assert "5CAT 5/5" in out and result["passed"] and result["gates_passed"] == 5
    assert {r["split"] for r in result["rows"]} == {"val", "ood", "val~ood"}
    assert (forward / "evaluations" / "base" / "fivecat" / "step_000100.json").is_file()
    assert "DIRECTION INVERTED" not in out


def test_backward_model_passes_and_training_kept_best_5cat(backward):
    code, out, result = fivecat(backward)
    assert code == 0, out
    assert result["direction"] == "backward" and result["gates_passed"] == 5
    best = json.loads((backward / "checkpoints" / "best_5cat.json").read_text())
    assert best["step"] in (50, 100) and best["formula"] == "0.8*B + 0.2*D"
    assert (backward / "checkpoints" / f"step_{best['step']:06d}").is_dir()
    assert best["score"] == pytest.approx(0.8 * best["gates"]["B"]["value"]
                                          + 0.2 * best["gates"]["D"]["value"])
    rows = [json.loads(x) for x in (backward / "metrics.jsonl").read_text().splitlines()]
    scored = {r["step"]: r for r in rows if "fivecat_score" in r}
    assert sorted(scored) == [50, 100]
    assert all(r["fivecat_inverted"] == 0 for r in scored.values())
    assert json.loads((backward / "metadata.json").read_text())["status"] == "finished"


def test_mislabeled_model_fails_gate_b_with_the_inversion_warning(mislabeled):
    code, out, result = fivecat(mislabeled)
    assert code == 1, out
    assert "DIRECTION INVERTED" in out
    b_rows = [r for r in result["rows"] if r["gate"] == "B"]
    assert b_rows and all(r["value"] < 0 and not r["passed"] for r in b_rows)
    assert result["inverted"] and not result["gates"]["B"]["passed"]
    assert result["checkpoint_direction"] == "backward"


def test_direction_override_judges_a_checkpoint_as_another_direction(forward):
    code, out, result = fivecat(forward, "--direction", "backward", "--max-samples", "8")
    assert code == 1 and "DIRECTION INVERTED" in out
    assert result["direction"] == "backward" and result["checkpoint_direction"] == "forward"
    assert (forward / "evaluations/base/fivecat/step_000100_as-backward.json").is_file()


def test_untrained_model_fails(home, forward):
    from backlm.config import ModelConfig
    from backlm.fivecat import load_spec, run_fivecat
    from backlm.model import GPT
    from backlm.tokenizer import Tokenizer

    tok = Tokenizer.load(forward / "tokenizer")
    cfg = ModelConfig(depth=2, width=64, head_dim=32, seq_len=64, vocab_size=tok.vocab_size)
    result = run_fivecat(GPT(cfg).eval(), tok, "forward", home / "home/data/stdlib", load_spec())
    assert not result.passed and result.passed_count <= 2
    for gate in "ABCD":
        assert not result.gate_passed(gate), gate
    assert not result.inverted  # a model that learned nothing is not "inverted"


def _fake_run(exp: Path, model, direction: str, **fivecat_cfg):
    from backlm.config import RunConfig
    from backlm.experiment import Experiment
    from backlm.tokenizer import Tokenizer

    cfg = RunConfig()
    cfg.data.direction = direction
    cfg.log.hdf5 = False
    for k, v in fivecat_cfg.items():
        setattr(cfg.fivecat, k, v)
    e = Experiment(exp)
    printed: list[str] = []
    return SimpleNamespace(
        cfg=cfg, exp=e, data_dir=Path(e.metadata()["data_dir"]), raw_model=model, device=model.lm_head.weight.device,
        tokenizer=Tokenizer.load(exp / "tokenizer"), dist=SimpleNamespace(main=True, world=1),
        autocast=contextlib.nullcontext, print=printed.append, printed=printed, step=0,
        stop_reason=None, save_requested=False,
    )


def test_callback_stops_a_mislabeled_run_and_keeps_best_5cat(mislabeled):
    from backlm.fivecat import training_callbacks
    from backlm.inference import load_model

    model = load_model(mislabeled, device="cpu").model.train()
    run = _fake_run(mislabeled, model, "backward", every=10, max_samples=8,
                    stop_on_inversion=True)
    (cb,) = training_callbacks(run)
    cb.on_train_start(run)
    record: dict = {}
    cb.on_step_end(run, 5, record)  # not a 5CAT step
    assert record == {} and run.stop_reason is None
    cb.on_step_end(run, 10, record)
    assert model.training  # back in training mode afterwards
    assert run.stop_reason == "direction inverted"
    assert any("DIRECTION INVERTED" in line for line in run.printed)
    assert record["fivecat_inverted"] == 1 and record["fivecat_B"] < 0
    assert run.save_requested  # first score is the best so far: its step needs a checkpoint
    cb.on_checkpoint(run, 10, mislabeled / "checkpoints")
    best = json.loads((mislabeled / "checkpoints" / "best_5cat.json").read_text())
    assert best["step"] == 10 and best["inverted"]


def test_callback_is_off_by_default():
    from backlm.fivecat import training_callbacks

    run = SimpleNamespace(cfg=SimpleNamespace(fivecat=SimpleNamespace(every=0)))
    assert training_callbacks(run) == []


def test_bad_input_is_one_line_exit_2(forward):
    res = cli("5cat", "nope")
    assert res.exit_code == 2 and res.output.startswith("error:")
    assert "no experiment 'nope'" in res.output and len(res.output.strip().splitlines()) == 1
    res = cli("5cat", "fwd", "--step", "7")
    assert res.exit_code == 2 and "no checkpoint at step 7" in res.output
    assert len(res.output.strip().splitlines()) == 1
    res = cli("5cat", "fwd", "--max-samples", "1")
    assert res.exit_code == 2 and "--max-samples" in res.output
    res = cli("5cat", "fwd", "--direction", "sideways")
    assert res.exit_code == 2 and "unknown direction" in res.output
    moved = forward.parent / "moved"
    shutil.copytree(forward, moved)
    meta = json.loads((moved / "metadata.json").read_text())
    (moved / "metadata.json").write_text(json.dumps(dict(meta, data_dir=str(moved / "gone"))))
    res = cli("5cat", "moved")
    assert res.exit_code == 2 and "does not exist" in res.output
    assert len(res.output.strip().splitlines()) == 1


def test_missing_ood_falls_back_to_train_with_a_warning(home, forward):
    from backlm.fivecat import load_spec, run_fivecat
    from backlm.inference import load_model

    data = home / "home" / "data"
    shutil.copytree(data / "stdlib", data / "no-ood", ignore=shutil.ignore_patterns("ood_*"))
    lm = load_model(forward, device="cpu")
    spec = load_spec().with_max_samples(8)
    result = run_fivecat(lm.model, lm.tokenizer, "forward", data / "no-ood", spec)
    assert any("no ood_*.parquet" in w and "TRAIN" in w for w in result.warnings)
    assert {r.split for r in result.rows} == {"val", "val~train"}
    assert result.sets.keys() == {"val", "train"}


def test_rollout_rewinding_one_kv_cache_equals_fresh_rollouts(forward):
    """Gate D's shared-cache rollouts give exactly what separate full forwards give, and at
    horizon 1 a rollout is teacher forcing."""
    import torch

    from backlm.fivecat import load_spec
    from backlm.fivecat.gates import declared_pass, rollout_cuts, rollout_vs_teacher
    from backlm.fivecat.samples import build_probes
    from backlm.inference import load_model

    lm = load_model(forward, device="cpu")
    spec = load_spec().with_max_samples(6)
    data = Path(lm.exp.metadata()["data_dir"])
    (probe,), _ = build_probes(data, lm.tokenizer, "forward", spec.samples, 64, ["val"])
    x = torch.tensor(probe.declared)
    _, _, top, _ = declared_pass(lm.model, x, probe.prefix, 8, contextlib.nullcontext)
    match, tf = rollout_vs_teacher(lm.model, x, top, probe.prefix, 1, contextlib.nullcontext)
    assert match == tf > 0
    h, hits, total = 4, 0, 0
    match, _ = rollout_vs_teacher(lm.model, x, top, probe.prefix, h, contextlib.nullcontext)
    with torch.no_grad():
        for cut in rollout_cuts(probe.prefix, x.size(1), h):
            seq = x[:, :cut]
            for _ in range(h):
                seq = torch.cat([seq, lm.model(seq)[:, -1].argmax(-1, keepdim=True)], dim=1)
            hits += int((seq[:, cut:] == x[:, cut:cut + h]).sum())
            total += x[:, cut:cut + h].numel()
    assert match == hits / total


@pytest.mark.slow
def test_bidirectional_model_passes_every_gate_per_marker(home):
    exp = _trained(home, "bidirectional", "bidi", steps=200)
    code, out, result = fivecat(exp)
    assert code == 0, out
    markers = {(r["split"], r["marker"]) for r in result["rows"]}
    assert markers == {(s, m) for s in ("val", "ood", "val~ood") for m in ("forward", "backward")}
    assert any(r["figure"] == "marker margin" and r["passed"] for r in result["rows"])


def mislabeled_callbacks(run) -> list:
    """Test factory: 5CAT judges this forward run as backward, like a mislabeled checkpoint."""
    from backlm.fivecat.callback import FivecatCallback

    cb = FivecatCallback(run)
    cb.direction = "backward"
    return [cb]


@pytest.mark.slow
def test_stop_on_inversion_stops_a_mislabeled_training_run(home):
    from backlm import trainer
    from backlm.config import RunConfig, load_config
    from backlm.launch import create_experiment

    overrides = [*TINY, "fivecat.every=25", "fivecat.max_samples=8", "train.max_steps=100",
                 "fivecat.stop_on_inversion=true", "id=mislabeled-run"]
    cfg = load_config(RunConfig, overrides=overrides, flags={"log": {"wandb": "off"}})
    exp = create_experiment(cfg, home / "exps")
    summary = trainer.run(exp.path, display=False, factories=[
        "tests.fivecat.test_engine:mislabeled_callbacks", "backlm.early_stop:callbacks",
        "backlm.logs:callbacks"])
    assert summary.status == "direction inverted" and summary.steps < 100
    assert (exp.checkpoints / f"step_{summary.steps:06d}").is_dir()
    best = json.loads((exp.checkpoints / "best_5cat.json").read_text())
    assert best["inverted"] and best["gates"]["B"]["value"] < 0
