"""The HDF5 writer: SWMR reading of a live and a killed run, no duplicated steps, evaluations
appended through the writer or standalone, recovery on resume; HDF5's own h5dump reads the log
live, after a SIGKILL and after the resume; a checkpoint's steps are in the log before it."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from tests.helpers import LOG_FAST as FAST
from tests.helpers import hdf5_logger as _logger
from tests.helpers import read_h5 as read
from tests.helpers import run_cli, tiny_args

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

HOLDER = textwrap.dedent("""
    import sys, h5py
    f = h5py.File(sys.argv[1], "r", libver="latest", swmr=True)
    print(f["scalars/step"].shape[0], flush=True)
    sys.stdin.readline()
    f["scalars/step"].refresh()
    print(f["scalars/step"].shape[0], flush=True)
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
    with h5py.File(path, "r") as f:  # closed between flushes: a plain open works too
        assert list(f["scalars/step"][:]) == list(range(8))
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


@pytest.mark.skipif(shutil.which("h5dump") is None, reason="HDF5's tools are not installed")
def test_hdf5s_own_tools_read_the_log(tmp_path):
    """The format is SWMR's (v110) and no newer: HDF5 1.10's h5ls and h5dump read it, also
    after a standalone eval append reopened it."""
    from backlm.logs.hdf5 import append_eval

    path = tmp_path / "base.h5"
    log = _logger(path, flush_every=1)
    for step in (1, 2):
        log.log(step, {"loss": 3.0 / step, "val_loss": 2.5})
    log.close()
    append_eval(path, "5cat", 2, {"score": 0.75})
    listing = subprocess.run(["h5ls", "-r", str(path)], capture_output=True, text=True)
    assert listing.returncode == 0 and "ERROR" not in listing.stdout, listing.stdout
    dump = subprocess.run(["h5dump", "-d", "/scalars/loss", str(path)], capture_output=True,
                          text=True)
    assert dump.returncode == 0 and "3, 1.5" in dump.stdout, dump.stdout + dump.stderr


def h5dump(path: Path, dataset: str) -> list[float]:
    """The values HDF5's own h5dump prints for a 1-D dataset (floats at full precision)."""
    res = subprocess.run(["h5dump", "-m", "%.17g", "-d", dataset, str(path)],
                         capture_output=True, text=True)
    assert res.returncode == 0 and "error" not in res.stderr, res.stdout + res.stderr
    data = res.stdout.split("DATA {", 1)[1].split("}", 1)[0] if "DATA {" in res.stdout else ""
    return [float(v) for v in re.sub(r"\(\d+\):", " ", data).replace(",", " ").split()]


@pytest.mark.skipif(shutil.which("h5dump") is None, reason="HDF5's tools are not installed")
def test_h5dump_reads_a_live_log_between_flushes(tmp_path):
    path = tmp_path / "base.h5"
    log = _logger(path, flush_every=2)
    for step in range(5):
        log.log(step, {"loss": 1.0 / (step + 1)})
    assert h5dump(path, "/scalars/step") == [0, 1, 2, 3]  # step 4 waits for the next flush
    assert h5dump(path, "/scalars/loss") == [1.0, 1 / 2, 1 / 3, 1 / 4]
    # a reader in another process holding the file open (SWMR, as `backlm log`) blocks no flush
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(path)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "4"
    log.log(5, {"loss": 0.5})
    assert h5dump(path, "/scalars/step") == [0, 1, 2, 3, 4, 5]
    out, _ = holder.communicate("\n", timeout=60)
    assert out.strip() == "6"  # and it sees the new rows
    log.close()


@pytest.mark.skipif(shutil.which("h5dump") is None, reason="HDF5's tools are not installed")
def test_h5dump_reads_the_log_after_sigkill_and_after_resume(home):
    from tests.helpers import losses

    killed = _train_subprocess(home, "dumped", {"BACKLM_KILL_AT_STEP": "7"})
    assert killed.returncode == -9, killed.stderr
    exp = home / "exps" / "dumped"
    path, logged = exp / "base.h5", losses(exp)
    assert h5dump(path, "/scalars/step") == list(range(8))  # flushed at 3, 4 (checkpoint), 6
    dumped = h5dump(path, "/scalars/loss")
    assert dumped[1:] == [logged[s] for s in range(1, 8)], (dumped, logged)  # exactly
    header = subprocess.run(["h5dump", "-H", str(path)], capture_output=True, text=True)
    assert header.returncode == 0 and 'GROUP "per_token"' in header.stdout, header.stderr
    resumed = _train_subprocess(home, "dumped", resume=True)
    assert resumed.returncode == 0, resumed.stderr
    logged = losses(exp)
    assert h5dump(path, "/scalars/step") == list(range(11))
    assert h5dump(path, "/scalars/loss")[1:] == [logged[s] for s in range(1, 11)]
    assert h5dump(path, "/per_token/step") == [2, 4, 6, 8, 10]


def test_every_step_is_in_the_log_before_its_checkpoint_exists(home, monkeypatch):
    """A checkpoint is the resume point once it exists: a kill right after it must not lose
    logged rows, so they are flushed before it is written."""
    from backlm.experiment import checkpoint as ckpt

    real, seen = ckpt.save, {}

    def save(folder, *args, **kw):
        step = args[2]["step"]
        with read(home / "exps" / "ordered" / "base.h5") as f:
            seen[step] = (f["scalars/step"][:].tolist(), f["per_token/step"][:].tolist())
        return real(folder, *args, **kw)

    monkeypatch.setattr(ckpt, "save", save)
    res = run_cli(tiny_args("--direction", "forward", "--id", "ordered", "--wandb", "off",
                            *FAST, "--set", "log.flush_every=100", steps=6))
    assert res.exit_code == 0, res.output
    assert sorted(seen) == [1, 4, 6]  # (step 1: the best after the first evaluation)
    for step, (scalars, per_token) in seen.items():
        assert scalars == list(range(step + 1))
        assert per_token == [s for s in (2, 4, 6) if s <= step]
