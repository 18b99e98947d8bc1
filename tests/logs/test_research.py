"""Research logging: the {phase}.h5 schema and cadences, SWMR reading of a live and a killed
run, recovery on resume, wandb (offline, off, failing) and the `backlm log` command."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

from tests.commands.test_train import run_cli, tiny_args

FAST = ["--set", "train.save_every=4", "--set", "log.flush_every=2",
        "--set", "log.per_token_every=2", "--set", "log.stats_every=3"]




def train(exp_id: str, *extra: str, steps: int = 6, direction: str = "forward",
          wandb: str = "off"):
    res = run_cli(tiny_args("--direction", direction, "--id", exp_id, "--wandb", wandb, *FAST,
                            *extra, steps=steps))
    assert res.exit_code == 0, res.output
    return res


def read(path: Path) -> h5py.File:
    return h5py.File(path, "r", libver="latest", swmr=True)


def test_file_has_every_group_attribute_and_cadence(home):
    train("bi", "--set", "log.sample_every=3", direction="bidirectional")
    exp = home / "exps" / "bi"
    with read(exp / "base.h5") as f:
        assert f.attrs["schema_version"] == 1 and f.attrs["experiment_id"] == "bi"
        assert f.attrs["phase"] == "base" and f.attrs["direction"] == "bidirectional"
        assert yaml.safe_load(f.attrs["config"]) == yaml.safe_load((exp / "config.yaml").read_text())
        assert {"scalars", "per_token", "gradients", "activations", "eval", "extra"} <= set(f)
        assert list(f["scalars/step"][:]) == list(range(7))
        for name in ("loss", "lr_mult", "grad_norm", "tokens_per_sec", "mfu", "val_loss_forward",
                     "val_loss_backward", "val_bpb_forward", "val_bpb_backward"):
            assert f[f"scalars/{name}"].shape == (7,), name
        assert math.isnan(f["scalars/loss"][0]) and np.isfinite(f["scalars/loss"][1:]).all()
        val = f["scalars/val_loss_backward"][:]
        assert [i for i in range(7) if np.isfinite(val[i])] == [0, 4, 6]  # eval_every=4, last
        assert list(f["per_token/step"][:]) == [2, 4, 6]
        assert f["per_token/loss"].shape == (3, 2, 32) and f["per_token/loss"].dtype == np.float16
        assert f["per_token/pred"].dtype == np.int32 and f["per_token/input"].shape == (3, 2, 32)
        assert f["per_token/position_loss"].shape == (3, 32)
        assert math.isnan(f["per_token/loss"][0, 0, 0])  # the marker's target is ignored
        assert list(f["gradients/step"][:]) == [3, 6] == list(f["activations/step"][:])
        params = [k for k in f["gradients"] if k != "step"]
        assert "wte.weight" in params and "blocks.1.mlp.fc" in params and len(params) == 10
        assert sorted(f["gradients/blocks.0.attn.qkv"]) == ["max_abs", "mean", "norm", "std"]
        assert sorted(k for k in f["activations"] if k != "step") == ["blocks.0", "blocks.1"]
        assert sorted(f["activations/blocks.0"]) == ["max_abs", "mean", "rms", "std"]
        assert (f["activations/blocks.1/rms"][:] > 0).all()
        kinds = {(k, n) for k, n in zip(f["eval/kind"][:], f["eval/name"][:], strict=True)}
        assert (b"val", b"val_bpb_forward") in kinds and list(f["eval/step"][:2]) == [0, 0]
        assert f["per_token"].attrs["every"] == 2 and f["gradients"].attrs["every"] == 3
        for dset in (f["scalars/loss"], f["per_token/loss"]):
            assert dset.compression == "gzip" and dset.chunks and dset.maxshape[0] is None
    samples = [json.loads(x) for x in
               (exp / "notes" / "generation_samples.jsonl").read_text().splitlines()]
    assert [(s["step"], s["order"]) for s in samples] == [
        (3, "forward"), (3, "backward"), (6, "forward"), (6, "backward")]


def test_bf16_values_are_stored(home):
    train("bf", "--set", "train.dtype=bf16", "--set", "log.stats_every=2", steps=2)
    with read(home / "exps" / "bf" / "base.h5") as f:
        loss = f["per_token/loss"][0].astype(np.float32)
        assert np.isfinite(loss[:, 1:]).all() and 1.0 < np.nanmean(loss) < 10.0
        assert np.isfinite(f["activations/blocks.0/rms"][:]).all()
        assert f["activations/blocks.0/max_abs"][0] > 0


def test_per_token_slice_matches_the_model_loss_in_fp32_and_bf16():
    import contextlib

    import torch

    from backlm.config import ModelConfig
    from backlm.logs.research import ActivationProbe, per_token_slice, to_numpy
    from backlm.model import GPT

    torch.manual_seed(0)
    model = GPT(ModelConfig(depth=2, width=64, head_dim=32, vocab_size=97, seq_len=16))
    x = torch.randint(0, 97, (2, 16))
    y = torch.randint(0, 97, (2, 16))
    y[0, :3] = -1
    out = per_token_slice(model, x, y, contextlib.nullcontext(), chunk=7)
    ref = model(x, y, loss_reduction="none").detach().numpy()
    assert np.isnan(out["loss"][0, :3]).all()
    np.testing.assert_allclose(out["loss"][y >= 0], ref[(y >= 0).numpy()], rtol=2e-3, atol=2e-3)
    assert out["pred"].dtype == np.int32 and (out["input"] == x.numpy()).all()
    np.testing.assert_allclose(out["position_loss"][5], ref[:, 5].mean(), rtol=2e-3)
    probe = ActivationProbe(list(model.blocks))
    probe.arm()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf = per_token_slice(model, x, y, contextlib.nullcontext())
        model(x, y)
    stats = probe.disarm()
    assert not probe.armed and not model.blocks[0]._forward_hooks  # hooks really removed
    assert np.isfinite(bf["loss"][1]).all() and bf["loss"].dtype == np.float16
    assert all(math.isfinite(v) for s in stats.values() for v in s.values())
    assert to_numpy(torch.tensor([1.5], dtype=torch.bfloat16), "float32").tolist() == [1.5]


def _logger(path: Path, **kw):
    from backlm.logs.hdf5 import Hdf5Logger, Schema

    schema = Schema(scalars=("loss", "val_loss"), params=("w",), layers=("blocks.0",), rows=1,
                    seq_len=4)
    return Hdf5Logger(path, schema, {"schema_version": 1}, **kw)


READER = textwrap.dedent("""
    import sys, time, h5py
    f = h5py.File(sys.argv[1], "r", libver="latest", swmr=True)
    ds, t = f["scalars/step"], time.time()
    seen = [ds.shape[0]]
    print("open", seen[0], flush=True)
    while time.time() - t < 60:
        ds.refresh()
        if ds.shape[0] != seen[-1]:
            seen.append(ds.shape[0])
            print(ds.shape[0], ds[:].tolist(), flush=True)
        if ds.shape[0] >= 6:
            break
        time.sleep(0.05)
""")


def test_a_reader_follows_the_file_while_it_is_written(tmp_path):
    path = tmp_path / "base.h5"
    log = _logger(path, flush_every=2)
    log.log(0, {"val_loss": 3.0})
    log.log(1, {"loss": 2.5})  # second record: flushed
    reader = subprocess.Popen([sys.executable, "-c", READER, str(path)], stdout=subprocess.PIPE,
                              text=True)
    assert reader.stdout.readline().strip() == "open 2"  # the flushed rows, live
    for step in range(2, 6):
        time.sleep(0.3)
        log.log(step, {"loss": 2.0})
    out, _ = reader.communicate(timeout=60)
    log.close()
    # it saw the file grow while the writer held it open
    assert out.splitlines()[-1] == "6 [0, 1, 2, 3, 4, 5]", out


def test_steps_are_never_duplicated_and_append_eval_goes_through_the_writer(tmp_path):
    from backlm.logs.hdf5 import append_eval

    path = tmp_path / "base.h5"
    log = _logger(path, flush_every=100)
    log.log(1, {"loss": 1.0, "note": 7})
    log.log(1, {"loss": 9.0})
    append_eval(path, "5cat", 1, {"score": 0.75})  # through the open writer, then flushed
    with read(path) as f:
        assert list(f["scalars/loss"][:]) == [1.0] and list(f["extra/name"][:]) == [b"note"]
        assert list(f["eval/kind"][:]) == [b"5cat"] and f["eval/value"][0] == 0.75
    log.close()
    append_eval(path, "5cat", 2, {"score": 0.8})  # standalone, after the run
    with h5py.File(path, "r") as f:  # a cleanly closed file opens without SWMR too
        assert list(f["eval/step"][:]) == [1, 2]
    from backlm.errors import UserError
    from backlm.logs.reader import read_eval

    assert read_eval(path, "5cat") == {"score": ([1, 2], [0.75, 0.8])}
    with pytest.raises(UserError, match="no research log"):
        append_eval(tmp_path / "none.h5", "5cat", 1, {"score": 1.0})


def _train_subprocess(home: Path, exp_id: str, env: dict | None = None, resume=False):
    args = ["train", "--resume", exp_id] if resume else tiny_args(
        "--direction", "backward", "--id", exp_id, "--wandb", "off", *FAST,
        "--set", "log.flush_every=3", steps=10)
    return subprocess.run([sys.executable, "-m", "backlm.cli", *args],
                          env=dict(os.environ, **(env or {})), capture_output=True, text=True,
                          timeout=300)


def test_sigkill_leaves_a_readable_file_and_resume_appends_without_duplicates(home):
    from backlm.logs.hdf5 import append_eval

    killed = _train_subprocess(home, "crash", {"BACKLM_KILL_AT_STEP": "7"})
    assert killed.returncode == -9, killed.stderr
    path = home / "exps" / "crash" / "base.h5"
    with pytest.raises(OSError):
        h5py.File(path, "r")  # still flagged "open for write"
    with read(path) as f:  # flushes every 3 records and at the step-4 checkpoint
        assert list(f["scalars/step"][:]) == list(range(8))
        assert list(f["per_token/step"][:]) == [2, 4, 6]
    shown = run_cli(["log", "crash"])
    assert shown.exit_code == 0 and "/per_token" in shown.output, shown.output
    append_eval(path, "5cat", 7, {"score": 0.5})  # standalone on a killed file: rebuilt first
    with h5py.File(path, "r") as f:
        assert list(f["eval/kind"][-1:]) == [b"5cat"]
    resumed = _train_subprocess(home, "crash", resume=True)
    assert resumed.returncode == 0, resumed.stderr
    with h5py.File(path, "r") as f:
        assert list(f["scalars/step"][:]) == list(range(11))
        assert list(f["per_token/step"][:]) == [2, 4, 6, 8, 10]
        assert list(f["gradients/step"][:]) == [3, 6, 9]
        assert f.attrs["resumed_at"] == "4"
        assert b"5cat" not in set(f["eval/kind"][:])  # step 7 > checkpoint 4: dropped
        assert np.isfinite(f["scalars/loss"][1:]).all()


def test_wandb_offline_writes_into_the_experiment_and_off_writes_nothing(home):
    train("wb", "--set", "log.hdf5=false", steps=2, wandb="offline")
    runs = list((home / "exps" / "wb" / "wandb").glob("offline-run-*-wb"))
    assert runs and any(runs[0].rglob("*.wandb"))
    assert not (home / "exps" / "wb" / "base.h5").exists()
    train("nowb", steps=2, wandb="off")
    assert not (home / "exps" / "nowb" / "wandb").exists()


def test_wandb_failures_never_fail_the_run(home, monkeypatch):
    import wandb

    def broken(*a, **k):
        raise RuntimeError("no wandb service")

    monkeypatch.setattr(wandb, "init", broken)
    res = train("wbinit", steps=2, wandb="offline")
    assert "wandb unavailable (RuntimeError: no wandb service)" in res.output

    class FlakyRun:
        def log(self, *a, **k):
            raise ConnectionError("gone")

        def finish(self, *a, **k):
            pass

    monkeypatch.setattr(wandb, "init", lambda *a, **k: FlakyRun())
    res = train("wblog", steps=3, wandb="offline")
    assert res.output.count("wandb.log failed") == 1
    monkeypatch.setitem(sys.modules, "wandb", None)  # not installed
    res = train("wbmissing", steps=2, wandb="offline")
    assert "wandb unavailable (ModuleNotFoundError" in res.output


def test_wandb_auto_mode_needs_a_key_to_go_online(monkeypatch, tmp_path):
    from backlm.logs.wandb_log import resolve_mode

    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    assert resolve_mode("auto") == "offline"
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert resolve_mode("auto") == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert resolve_mode("auto") == "off" and resolve_mode("offline") == "offline"


def test_log_command_shows_tables(home):
    train("shown", steps=4)
    res = run_cli(["log", "shown"])
    assert res.exit_code == 0, res.output
    for needle in ("/scalars", "/per_token", "/gradients", "/activations", "/eval", "val_bpb",
                   "lm_head.weight", "blocks.1", "argmax accuracy", "(5,)"):
        assert needle in res.output, needle
    res = run_cli(["log", "shown", "--follow"])  # a finished run: summary, then it stops
    assert res.exit_code == 0 and "is not running (finished)" in res.output


def test_log_follow_prints_new_steps_until_the_run_ends(tmp_path):
    from backlm.atomic import write_json

    exp = tmp_path / "exps" / "live"
    exp.mkdir(parents=True)
    write_json(exp / "metadata.json", {"id": "live", "phase": "base", "status": "running"})
    import socket

    (exp / "run.lock").write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
    log = _logger(exp / "base.h5", flush_every=1)
    log.log(0, {"val_loss": 3.0})

    def write():
        for step in range(1, 4):
            time.sleep(0.4)
            log.log(step, {"loss": 2.0 - step / 10})
        log.close()
        write_json(exp / "metadata.json", {"id": "live", "phase": "base", "status": "finished"})

    writer = threading.Thread(target=write)
    writer.start()
    res = run_cli(["log", "live", "--follow", "--experiments-dir", str(tmp_path / "exps")])
    writer.join()
    assert res.exit_code == 0, res.output
    assert "step       3 · loss 1.7" in res.output and "is not running (finished)" in res.output


def _one_line_error(res, needle):
    assert res.exit_code == 2, res.output
    lines = [x for x in res.output.strip().splitlines() if x.strip()]
    assert "Traceback" not in res.output and len(lines) == 1
    assert lines[0].startswith("error:") and needle in res.output, res.output


def test_log_user_errors(home):
    from backlm.atomic import write_json

    _one_line_error(run_cli(["log", "ghost"]), "no experiment 'ghost'")
    exp = home / "exps" / "bare"
    exp.mkdir(parents=True)
    write_json(exp / "metadata.json", {"id": "bare", "phase": "base", "status": "finished"})
    _one_line_error(run_cli(["log", "bare"]), "has no research log base.h5")
    (exp / "base.h5").write_bytes(b"not an hdf5 file at all")
    _one_line_error(run_cli(["log", "bare"]), "corrupt")
    _one_line_error(run_cli(tiny_args("--wandb", "sideways")), "unknown wandb mode")
