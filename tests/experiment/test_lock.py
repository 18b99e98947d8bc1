"""The run lock: one live holder at a time, stale locks taken over."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from backlm.errors import UserError
from backlm.experiment.lock import RunLock


def test_acquire_release_and_refuse_a_second_holder(tmp_path):
    path = tmp_path / "run.lock"
    with RunLock(path) as lock:
        holder = json.loads(path.read_text())
        assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
        assert lock.active()
        with pytest.raises(UserError, match=f"in use by pid {os.getpid()}"):
            RunLock(path).acquire()
    assert not path.exists() and not RunLock(path).active()


def test_a_dead_holder_is_taken_over(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    path = tmp_path / "run.lock"
    path.write_text(json.dumps({"pid": int(dead), "host": socket.gethostname()}))
    assert not RunLock(path).active()
    lock = RunLock(path).acquire()
    assert json.loads(path.read_text())["pid"] == os.getpid()
    lock.release()


def test_unknown_holders_count_as_alive(tmp_path):
    path = tmp_path / "run.lock"
    path.write_text(json.dumps({"pid": 1, "host": "another-host"}))
    assert RunLock(path).active()  # cannot check another machine: be safe
    with pytest.raises(UserError, match="another-host"):
        RunLock(path).acquire()
    path.write_text("garbage")
    lock = RunLock(path).acquire()  # an unreadable lock names nobody: taken over
    assert lock.held
    lock.release()
