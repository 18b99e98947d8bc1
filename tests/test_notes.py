"""`backlm note` (notes.txt / issues.txt) and generation samples in model and reading order."""

from __future__ import annotations

import contextlib
import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest

from backlm.atomic import write_json
from tests.commands.test_train import run_cli
from tests.conftest import make_docs


@pytest.fixture
def exps(tmp_path, monkeypatch) -> Path:
    """An experiments folder with one experiment at step 12 (checkpoint 8, metrics to 12)."""
    root = tmp_path / "exps"
    exp = root / "e1"
    (exp / "checkpoints" / "step_000008").mkdir(parents=True)
    for name in ("meta.json", "model.safetensors"):
        (exp / "checkpoints" / "step_000008" / name).write_text("{}")
    write_json(exp / "metadata.json", {"id": "e1", "phase": "base", "status": "running"})
    lines = [json.dumps({"step": s, "loss": 1.0}) for s in range(13)]
    (exp / "metrics.jsonl").write_text("\n".join(lines) + "\n" + '{"step": 13, "lo')  # torn
    monkeypatch.setenv("BACKLM_EXPERIMENTS", str(root))
    return root


LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00  step (\d+)  (.*)$")


def test_note_and_issue_append_timestamped_lines(exps):
    assert run_cli(["note", "e1", "lr looks\n too high"]).exit_code == 0
    res = run_cli(["note", "e1", "second", "--experiments-dir", str(exps)])
    assert res.exit_code == 0 and "notes.txt" in res.output
    notes = (exps / "e1" / "notes" / "notes.txt").read_text().splitlines()
    assert [LINE.match(x).groups() for x in notes] == [("12", "lr looks too high"),
                                                       ("12", "second")]
    assert run_cli(["note", "e1", "loss spike", "--issue"]).exit_code == 0
    issues = (exps / "e1" / "notes" / "issues.txt").read_text().splitlines()
    assert LINE.match(issues[0]).groups() == ("12", "loss spike")
    assert len((exps / "e1" / "notes" / "notes.txt").read_text().splitlines()) == 2


def test_latest_step_falls_back_to_checkpoints(exps):
    from backlm.experiment import Experiment
    from backlm.notes import latest_step

    (exps / "e1" / "metrics.jsonl").unlink()
    assert latest_step(Experiment(exps / "e1")) == 8


@pytest.mark.parametrize("args,needle", [
    (["note", "ghost", "text"], "no experiment 'ghost'"),
    (["note", "e1", "   "], "the note is empty"),
])
def test_note_user_errors(exps, args, needle):
    res = run_cli(args)
    assert res.exit_code == 2, res.output
    lines = [x for x in res.output.strip().splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0]
    assert "Traceback" not in res.output


@pytest.fixture(scope="module")
def tiny_run():
    """A run-like object: tiny GPT, real BPE tokenizer, config (enough for the samplers)."""
    import torch

    from backlm.config import RunConfig
    from backlm.model import GPT
    from backlm.tokenizer import Tokenizer

    tok = Tokenizer.train(make_docs(200), vocab_size=300)
    cfg = RunConfig()
    cfg.model.depth, cfg.model.width, cfg.model.head_dim = 2, 64, 32
    cfg.model.vocab_size, cfg.model.seq_len = tok.vocab_size, 32
    cfg.log.sample_tokens = 20
    torch.manual_seed(0)
    return SimpleNamespace(cfg=cfg, tokenizer=tok, raw_model=GPT(cfg.model),
                           autocast=contextlib.nullcontext, step=0)


@pytest.mark.parametrize("direction", ["forward", "backward", "bidirectional"])
def test_generation_samples_round_trip_between_orders(tiny_run, direction):
    from backlm.direction import model_order
    from backlm.logs.samples import generate_samples

    tiny_run.cfg.data.direction = direction
    samples = generate_samples(tiny_run, 7)
    ids = tiny_run.tokenizer.special_ids
    orders = ["forward", "backward"] if direction == "bidirectional" else [direction]
    assert [s["order"] for s in samples] == orders
    for s in samples:
        prompt = s["prompt_ids"]
        assert prompt[0] == ids.bos and s["model_order_ids"][:len(prompt)] == prompt
        if direction == "bidirectional":
            assert prompt[1] == ids.marker(s["order"])
        body = s["model_order_ids"][len(prompt):]
        assert len(body) == 20 and model_order(s["reading_order_ids"], s["order"]) == body
        tok = tiny_run.tokenizer
        assert s["reading_order_text"] == tok.decode(s["reading_order_ids"])
        assert s["model_order_text"] == tok.decode(s["model_order_ids"])
        assert s["step"] == 7 and s["direction"] == direction
    assert generate_samples(tiny_run, 8)[0]["model_order_ids"] == samples[0]["model_order_ids"]


def test_sample_file_drops_samples_past_the_resumed_step(tiny_run, tmp_path):
    from backlm.logs.samples import SampleCallback

    tiny_run.cfg.data.direction = "backward"
    tiny_run.cfg.log.sample_every = 2
    tiny_run.exp = SimpleNamespace(path=tmp_path)
    cb = SampleCallback(tiny_run)
    for step in range(0, 7):
        cb.on_step_end(tiny_run, step, {})
    path = tmp_path / "notes" / "generation_samples.jsonl"
    assert [json.loads(x)["step"] for x in path.read_text().splitlines()] == [2, 4, 6]
    tiny_run.step = 4  # a resume from the step-4 checkpoint
    SampleCallback(tiny_run)
    assert [json.loads(x)["step"] for x in path.read_text().splitlines()] == [2, 4]
