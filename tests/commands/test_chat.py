"""``backlm chat``: ``-p`` answers once in reading order; the interactive loop driven through a
pseudo-terminal (slash commands, a streamed turn, refusals that keep the session alive)."""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import sys
import time

import pytest

from tests.helpers import assert_user_error, run_cli


def test_prompt_once_writes_the_turn_in_reading_order(lineage):
    res = run_cli(["chat", "--model", "s1", "-p", "The answer is 12.", "-t", "0",
                   "--max-tokens", "6"])
    assert res.exit_code == 0, res.output
    again = run_cli(["chat", "--model", "s1", "-p", "The answer is 12.", "-t", "0",
                     "--max-tokens", "6"])
    assert again.output == res.output  # greedy: the same turn


@pytest.mark.parametrize(("args", "words"), [
    (["-t", "-1"], "temperature"), (["--top-k", "0"], "top-k"), (["--max-tokens", "0"], "max"),
    (["--direction", "forward"], "only a bidirectional model"), (["-p", "  "], "say something"),
])
def test_bad_options_are_one_line(lineage, args, words):
    res = run_cli(["chat", "--model", "s1", "-p", "hi", *args])
    assert_user_error(res, words)


class Terminal:
    """A process on a pseudo-terminal: write lines, wait for text."""

    def __init__(self, args):
        self.master, slave = pty.openpty()
        self.proc = subprocess.Popen([sys.executable, "-m", "backlm.cli", *args], stdin=slave,
                                     stdout=slave, stderr=slave, env=dict(os.environ,
                                                                          COLUMNS="120"))
        os.close(slave)
        self.seen = ""

    def expect(self, pattern: str, timeout: float = 60) -> str:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if match := re.search(pattern, self.seen):
                # what came after the match stays for the next expect: the banner and the
                # prompt can arrive in one read
                found, self.seen = self.seen[:match.end()], self.seen[match.end():]
                return found
            ready, _, _ = select.select([self.master], [], [], 0.2)
            if ready:
                try:
                    self.seen += os.read(self.master, 65536).decode("utf-8", "replace")
                except OSError:
                    break
        raise AssertionError(f"{pattern!r} not seen; got {self.seen[-2000:]!r}")

    def send(self, line: str) -> None:
        os.write(self.master, (line + "\n").encode())

    def __enter__(self) -> Terminal:
        return self

    def __exit__(self, *exc) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        os.close(self.master)


def test_the_interactive_loop_in_a_terminal(lineage):
    with Terminal(["chat", "--model", "s1", "-t", "0", "--max-tokens", "5"]) as term:
        term.expect("← backward")
        term.expect("you>")
        term.send("/help")
        term.expect(r"/clear[\s\S]*you>")
        term.send("/forward")
        term.expect(r"only a bidirectional model[\s\S]*you>")
        term.send("/temperature abc")
        term.expect(r"needs a number[\s\S]*you>")
        term.send("/nonsense")
        term.expect(r"unknown command[\s\S]*you>")
        term.send("The answer is 12.")
        term.expect(r"tokens/s[\s\S]*you>")
        term.send("/quit")
        assert term.proc.wait(timeout=30) == 0


def test_a_bidirectional_model_switches_order_per_turn_in_a_terminal(served):
    with Terminal(["chat", "--model", "bi1", "-t", "0", "--max-tokens", "5"]) as term:
        term.expect("↔ bidirectional")
        term.expect("→ forward you>")  # a bidirectional chat starts forward
        term.send("/backward")
        term.expect(r"next turns: ← backward[\s\S]*← backward you>")
        term.send("The answer is 12.")
        term.expect(r"tokens/s[\s\S]*← backward you>")
        term.send("/forward")
        term.expect(r"next turns: → forward[\s\S]*→ forward you>")
        term.send("And then?")
        term.expect(r"tokens/s[\s\S]*→ forward you>")
        term.send("/show")  # reading order: the written user turn, the ending, then forward
        shown = term.expect(r"user: [\s\S]*assistant: The answer is 12\.[\s\S]*"
                            r"user: And then\?[\s\S]*assistant: [\s\S]*→ forward you>")
        assert shown.index("The answer is 12.") < shown.index("And then?")
        term.send("/exit")
        assert term.proc.wait(timeout=30) == 0
