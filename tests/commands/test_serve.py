"""``backlm serve`` as a real process: it prints where it listens, answers, and stops cleanly on
Ctrl-C even mid-generation; bad options, a port in use or a host it cannot bind are one line,
exit 2."""

from __future__ import annotations

import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.helpers import assert_user_error, run_cli

READY = re.compile(r"serving (\S+) \(step (\d+), (\w+), (\w+)\) at (http://127\.0\.0\.1:(\d+))")


def start(*args: str) -> tuple[subprocess.Popen, str, str]:
    """``backlm serve ARGS`` in its own process; (process, url, the ready line)."""
    proc = subprocess.Popen([sys.executable, "-m", "backlm.cli", "serve", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, COLUMNS="200"))
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x) for x in proc.stdout], daemon=True).start()
    try:
        line = lines.get(timeout=120)
    except queue.Empty:
        proc.kill()
        pytest.fail("backlm serve printed nothing in 120 s: " + proc.stderr.read())
    match = READY.search(line)
    assert match, line
    return proc, match.group(5), line


def stop(proc: subprocess.Popen) -> tuple[int, float, str]:
    """Ctrl-C: (exit code, seconds to exit, stderr)."""
    proc.send_signal(signal.SIGINT)
    started = time.monotonic()
    try:
        code = proc.wait(timeout=30)
    finally:
        proc.kill()
    return code, time.monotonic() - started, proc.stderr.read()


def test_serve_answers_and_stops_on_ctrl_c(served):
    proc, url, line = start("--model", "s1", "--port", "0")
    try:
        assert READY.search(line).groups()[:4] == ("s1", "2", "sft", "backward")
        assert "Ctrl-C stops" in line
        assert httpx.get(url + "/health", timeout=10).json() == {"status": "ok"}
        body = {"model": "s1", "temperature": 0, "max_tokens": 5,
                "messages": [{"role": "assistant", "content": "one two three."}]}
        r = httpx.post(url + "/v1/chat/completions", json=body, timeout=30)
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["role"] == "user"
    finally:
        code, took, err = stop(proc)
    assert code == 0 and err == "", err  # no traceback, no "error: interrupted"
    assert took < 5, took


def test_ctrl_c_does_not_wait_for_long_generations(served):
    proc, url, _ = start("--model", "bi1", "--port", "0")
    body = {"model": "bi1@forward", "temperature": 0, "max_tokens": 4096,
            "messages": [{"role": "user", "content": "Hello"}]}  # greedy bi1 never stops early

    def long(_: int) -> object:  # not streamed: one worker thread runs the whole generation
        try:
            return httpx.post(url + "/v1/chat/completions", json=body, timeout=60).json()
        except httpx.HTTPError as exc:  # the server went mid-request
            return exc

    with ThreadPoolExecutor(8) as pool:  # eight at once: seconds of work, interleaved
        try:
            outcomes = pool.map(long, range(8))
            time.sleep(0.5)
        finally:
            code, took, err = stop(proc)
        outcomes = list(outcomes)
    assert code == 0 and err == "", err  # no cancelled-task log, no traceback
    assert took < 8, took  # each generation stops at its next piece
    cut = [o for o in outcomes if not isinstance(o, dict)
           or o["usage"]["completion_tokens"] < 4096]
    assert cut, "every generation finished before Ctrl-C: nothing was tested"


@pytest.mark.parametrize(("args", "words"), [
    (["--model", "nope"], "no experiment 'nope'"),
    (["--model", "s1", "--port", "70000"], "--port must be between 0 and 65535"),
    (["--model", "s1", "--port", "-1"], "--port must be between 0 and 65535"),
    (["--model", "s1", "--step", "999"], "no checkpoint at step 999"),
    (["--model", "s1", "--port", "0", "--host", "203.0.113.1"], "cannot listen on 203.0.113.1"),
])
def test_bad_input_is_one_line(served, args, words):
    res = run_cli(["serve", *args])
    assert_user_error(res, words)


def test_a_port_in_use_is_one_line_naming_it(served):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        res = run_cli(["serve", "--model", "s1", "--port", str(port)])
    assert_user_error(res, f"127.0.0.1:{port}", "--port")
