"""``backlm eval`` end to end on a tiny backward model trained on real text."""

from __future__ import annotations

import json
import os
import sysconfig
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from backlm.cli import app
from tests.helpers import assert_user_error, write_task_sets

STEPS = 40


TRAIN = [
    "model.depth=2", "model.width=64", "model.head_dim=32", "model.seq_len=64",
    "model.vocab_size=512", "train.device_batch_size=8", "train.total_batch_tokens=512",
    f"train.eval_every={STEPS}", "train.eval_tokens=1024", f"train.save_every={STEPS}",
    "train.device=cpu", "data.dataset=pydocs-small", "data.docs_per_batch=64",
    "data.buffer_docs=32", "log.per_token_every=0", "log.stats_every=0", "log.sample_every=0",
    "train.dtype=fp32",  # `auto` is bf16 on CPUs with native bf16
]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Iterator[Path]:
    """A docstring corpus from a few stdlib packages, task files, and a trained backward
    model ``bw`` (shared by every test here: training is the slow part)."""
    from backlm.data.corpus import prepare_corpus

    tmp = tmp_path_factory.mktemp("eval")
    std = Path(sysconfig.get_paths()["stdlib"])
    roots = [std / p for p in ("email", "json", "asyncio", "logging", "unittest", "http", "xml",
                               "multiprocessing", "concurrent", "importlib", "urllib",
                               "collections")]
    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as mp:
        # One thread: on a busy 2-core box two threads per op make a step of this tiny model
        # ten times slower (the trainer takes a thread per core), not faster.
        mp.setattr(os, "cpu_count", lambda: 1)
        torch.set_num_threads(1)
        mp.setenv("BACKLM_HOME", str(tmp / "home"))
        mp.setenv("BACKLM_EXPERIMENTS", str(tmp / "exps"))
        prepare_corpus(tmp / "home" / "data" / "pydocs-small", vocab_size=512, roots=roots,
                       ood_source=std / "pydoc_data" / "topics.py")
        write_task_sets(tmp / "home" / "data" / "tasks")
        for exp_id, direction, steps in (("bw", "backward", STEPS), ("bi", "bidirectional", 4)):
            args = ["train", "--direction", direction, "--id", exp_id, "--max-steps", str(steps),
                    "--wandb", "off"]
            for s in TRAIN:
                args += ["--set", s]
            res = CliRunner().invoke(app, args)
            assert res.exit_code == 0, res.output
    yield tmp
    torch.set_num_threads(threads)


@pytest.fixture
def env(world, monkeypatch) -> Path:
    monkeypatch.setenv("BACKLM_HOME", str(world / "home"))
    monkeypatch.setenv("BACKLM_EXPERIMENTS", str(world / "exps"))
    monkeypatch.setenv("COLUMNS", "160")  # keep rich tables on one line each
    return world


def _eval(*args: str):
    return CliRunner().invoke(app, ["eval", "bw", "--device", "cpu", *args])


def _result(world: Path, direction: str, task: str) -> dict:
    return json.loads((world / "exps" / "bw" / "evaluations" / "base" / direction /
                       f"{task}.json").read_text())


def test_backward_model_reads_backward_far_better(env):
    res = _eval("--tasks", "lm", "--lm-tokens", "4096")
    assert res.exit_code == 0, res.output
    bw, fw = _result(env, "backward", "lm"), _result(env, "forward", "lm")
    assert bw["native"] and not fw["native"] and bw["model_direction"] == "backward"
    assert bw["step"] == STEPS and len(bw["records"]) == 2  # val and ood
    for split in ("val", "ood"):
        native, cross = bw["summary"][f"{split}_loss"], fw["summary"][f"{split}_loss"]
        print(f"{split}: native (backward) CE {native:.3f}, cross (forward) CE {cross:.3f}")
        assert cross - native > 0.75, (split, native, cross)
        assert bw["summary"][f"{split}_bpb"] < fw["summary"][f"{split}_bpb"]
    buckets = bw["records"][0]["by_position"]
    assert buckets[0]["first"] == 1 and buckets[-1]["last"] <= 64
    assert sum(b["tokens"] for b in buckets) == bw["summary"]["val_tokens"]
    assert "backward *" in res.output and "gap" in res.output


def test_tasks_in_both_directions(env):
    res = _eval("--tasks", "arc-easy,arc-challenge,mmlu,gsm8k", "--max-per-task", "2",
                "--max-new-tokens", "8")
    assert res.exit_code == 0, res.output
    for task in ("arc-easy", "mmlu"):
        fw, bw = _result(env, "forward", task), _result(env, "backward", task)
        assert fw["summary"]["scoring"] == "conditional" and bw["summary"]["scoring"] == "joint"
        assert fw["summary"]["n"] == len(bw["records"]) == 2
        assert {"acc", "acc_norm"} <= set(bw["summary"])
    assert _result(env, "backward", "mmlu")["records"][0]["subject"] == "elementary_mathematics"
    gen_fw, gen_bw = _result(env, "forward", "gsm8k"), _result(env, "backward", "gsm8k")
    assert "exact_match" in gen_fw["summary"] and "answer_mentioned" in gen_bw["summary"]
    assert gen_bw["records"][0]["given"] == "#### 5"
    assert all(len(r["output"]) < 200 for r in gen_bw["records"])
    for task in ("arc-easy", "arc-challenge", "mmlu", "gsm8k"):
        assert task in res.output


def test_summaries_go_to_the_research_log(env):
    pytest.importorskip("backlm.logs.hdf5")
    h5py = pytest.importorskip("h5py")
    h5 = env / "exps" / "bw" / "base.h5"
    if not h5.is_file():
        pytest.skip("training wrote no research log")
    res = _eval("--tasks", "lm", "--directions", "backward", "--lm-tokens", "512")
    assert res.exit_code == 0 and "appended to the research log" in res.output, res.output
    with h5py.File(h5, "r", libver="latest", swmr=True) as f:
        rows = set(zip(f["eval/kind"][:].tolist(), f["eval/name"][:].tolist(), strict=True))
    assert (b"lm", b"backward/val_loss") in rows


@pytest.mark.parametrize("args, needle", [
    (["eval", "nope"], "no experiment 'nope'"),
    (["eval", "bw", "--step", "7"], "no checkpoint at step 7"),
    (["eval", "bw", "--tasks", "lm,hellaswag"], "known tasks are lm, arc-easy"),
    (["eval", "bw", "--directions", "sideways"], "unknown direction 'sideways' in --directions"),
    (["eval", "bw", "--directions", "bidirectional"], "with the marker of each"),
    (["eval", "bw", "--max-per-task", "0"], "--max-per-task"),
])
def test_bad_input_is_one_line(env, args, needle):
    res = CliRunner().invoke(app, args)
    assert_user_error(res, needle)


def test_task_not_downloaded_names_the_command(env, monkeypatch, tmp_path):
    monkeypatch.setenv("BACKLM_HOME", str(tmp_path / "bare"))
    res = _eval("--tasks", "lm,gsm8k")
    assert_user_error(res, "`backlm data download --task gsm8k`")
    res = _eval("--tasks", "lm", "--directions", "backward", "--lm-tokens", "256")
    assert res.exit_code == 0 and "not downloaded" not in res.output  # asked for lm only


def test_bidirectional_model_is_evaluated_with_each_marker(env):
    res = CliRunner().invoke(app, ["eval", "bi", "--tasks", "lm,mmlu", "--max-per-task", "1",
                                   "--lm-tokens", "512", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    folder = env / "exps" / "bi" / "evaluations" / "base"
    for d in ("forward", "backward"):
        for task in ("lm", "mmlu"):
            data = json.loads((folder / d / f"{task}.json").read_text())
            assert data["native"] and data["model_direction"] == "bidirectional"
    assert "forward *" in res.output and "backward *" in res.output
