"""A real ``backlm chat`` session with a bidirectional model, in a pseudo-terminal, as a person
would type it: ``/backward``, an ending, ``/forward``, a question, ``/show``.

Usage::

    python benchmarks/chat_transcript.py --model EXP [--experiments-dir DIR] [--ending TEXT]
        [--question TEXT]

Prints the terminal's text (colours stripped, the live view's redraws collapsed). Greedy (``-t 0``), so a rerun prints the same.
"""

from __future__ import annotations

import argparse
import os
import pty
import re
import select
import subprocess
import sys
import time

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\r")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--experiments-dir")
    parser.add_argument("--ending", default="The answer is 12.")
    parser.add_argument("--question", default="What is 7 plus 5?")
    parser.add_argument("--max-tokens", type=int, default=48)
    args = parser.parse_args()

    cmd = [sys.executable, "-m", "backlm.cli", "chat", "--model", args.model, "-t", "0",
           "--max-tokens", str(args.max_tokens)]
    if args.experiments_dir:
        cmd += ["--experiments-dir", args.experiments_dir]
    master, slave = pty.openpty()
    proc = subprocess.Popen(cmd, stdin=slave, stdout=slave, stderr=slave,
                            env=dict(os.environ, COLUMNS="100"))
    os.close(slave)
    seen = ""

    def wait_prompt(count: int) -> None:
        nonlocal seen
        end = time.monotonic() + 300
        while seen.count("you>") < count and time.monotonic() < end:
            if select.select([master], [], [], 0.2)[0]:
                try:
                    seen += os.read(master, 65536).decode("utf-8", "replace")
                except OSError:
                    return

    lines = ["/backward", args.ending, "/forward", args.question, "/show", "/quit"]
    for i, line in enumerate(lines, start=1):
        wait_prompt(i)
        os.write(master, (line + "\n").encode())
    proc.wait(timeout=60)
    try:
        seen += os.read(master, 65536).decode("utf-8", "replace")
    except OSError:
        pass
    os.close(master)
    for line in ANSI.sub("", seen).splitlines():
        # the live view redraws the turn as it grows: keep its last state
        print("model: " + line.rsplit("model: ", 1)[1] if "model: " in line else line)


if __name__ == "__main__":
    main()
