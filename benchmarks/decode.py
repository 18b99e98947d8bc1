"""Decode speed, batch 1, greedy: no KV cache, the KV cache through PyTorch ops, the KV cache
through the fused C step, and the same model served over HTTP — side by side in one run, with
the memory ceiling: the time to read the step's weights once and do nothing else.

Usage::

    python benchmarks/decode.py [--tokens 256] [--rounds 5] [--experiment EXP]

Without ``--experiment`` it trains a cpu-tiny model (depth 4, head dim 64, vocab 8192, fp32) for
one step in a temporary folder (``backlm data prepare`` must have run) so the served figure
goes through a real experiment. Speed is tokens over the time from the first to the last token
(as ``backlm chat`` reports it); the first token's latency is from the prompt's ids to the first
token. Rounds alternate the variants so machine load hits them alike; the table shows medians.
The served figure streams ``/v1/chat/completions`` with ``max_tokens`` = ``--tokens`` from a
client in this process and times the chunks as they arrive. The ceiling row comes from
``benchmarks/weight_stream.c`` (built with gcc when present): batch-1 decoding reads every
weight once per token, so no decoder beats it on the same machine at the same moment.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

PROMPT = "The quick brown fox jumps over the lazy dog. Python lists keep their items in order."


def _experiment(tmp: Path) -> tuple[str, Path]:
    exps = tmp / "exps"
    cmd = [sys.executable, "-m", "backlm.cli", "train", "--config", "cpu-tiny", "--max-steps",
           "1", "--id", "decode-bench", "--experiments-dir", str(exps), "--wandb", "off",
           "--set", "train.eval_tokens=4096"]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return "decode-bench", exps


def _timed(gen) -> tuple[int, float, float]:
    """Tokens, seconds first→last, seconds to the first token."""
    start = time.perf_counter()
    stamps = [time.perf_counter() for _ in gen]
    return len(stamps), stamps[-1] - stamps[0], stamps[0] - start


def _uncached(model, prompt: list[int], n: int):
    import torch

    ids = list(prompt)
    with torch.inference_mode():
        for _ in range(n):
            nxt = int(model(torch.tensor([ids]))[0, -1].argmax())
            ids.append(nxt)
            yield nxt


def _serve(loaded):
    import socket

    import uvicorn

    from backlm.serve.app import create_app

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(create_app(loaded), log_level="warning"))
    threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    return server, f"http://127.0.0.1:{sock.getsockname()[1]}"


def _served(url: str, model: str, n: int) -> tuple[int, float, float, dict]:
    body = {"model": model, "messages": [{"role": "user", "content": PROMPT}], "stream": True,
            "temperature": 0, "max_tokens": n, "stream_options": {"include_usage": True}}
    req = urllib.request.Request(url + "/v1/chat/completions", json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})
    start = time.perf_counter()
    stamps, final, tokens = [], {}, 0
    with urllib.request.urlopen(req) as resp:
        for line in resp:
            if not line.startswith(b"data: ") or line.strip() == b"data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            elif chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                stamps.append(time.perf_counter())
            elif chunk["choices"] and chunk["choices"][0].get("finish_reason"):
                final = chunk["backlm"]
    return tokens, stamps[-1] - stamps[0], stamps[0] - start, final


def _ceiling_binary(tmp: Path) -> Path | None:
    """benchmarks/weight_stream.c built here, or None without gcc or off x86."""
    import platform
    import shutil

    if shutil.which("gcc") is None or platform.machine() not in ("x86_64", "AMD64"):
        return None
    out = tmp / "weight_stream"
    src = Path(__file__).with_name("weight_stream.c")
    subprocess.run(["gcc", "-O3", "-fopenmp", "-std=gnu11", str(src), "-o", str(out), "-lm"],
                   check=True)
    return out


def _ceiling(binary: Path, cfg, threads: int) -> tuple[int, float, float]:
    """The weights of one step read once, as a (tokens, seconds, first) row: 1 token/step."""
    res = subprocess.run([str(binary), str(cfg.depth), str(cfg.model_dim), str(cfg.vocab_size),
                          str(threads), "100"], check=True, capture_output=True, text=True)
    us = float(res.stdout.split()[0])
    return 2, us / 1e6, 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--experiment", help="an experiment id or folder (default: train one)")
    parser.add_argument("--experiments-dir", type=Path)
    parser.add_argument("--no-uncached", action="store_true", help="skip the slow variant")
    args = parser.parse_args()

    import torch
    from rich.console import Console
    from rich.table import Table

    from backlm.experiment.loading import load_model
    from backlm.hardware import cpu_model
    from backlm.model import native

    console = Console(width=110)
    with tempfile.TemporaryDirectory() as tmp:
        ref, root = ((args.experiment, args.experiments_dir) if args.experiment
                     else _experiment(Path(tmp)))
        loaded = load_model(ref, root, device="cpu")
        model, cfg = loaded.model, loaded.model.cfg
        prompt = [loaded.tokenizer.special_ids.bos, *loaded.tokenizer.encode(PROMPT)]
        server, url = _serve(loaded)
        n = args.tokens

        def cached(fused: bool):
            previous = native.set_native(fused)
            try:
                return _timed(model.generate(prompt, n, temperature=0.0))
            finally:
                native.set_native(previous)

        variants = {"KV cache, fused C step": lambda: cached(True),
                    "KV cache, PyTorch ops": lambda: cached(False),
                    "served API (stream, fused)": lambda: _served(url, loaded.exp.id, n)[:3]}
        binary = _ceiling_binary(Path(tmp))
        if binary is not None:
            variants["ceiling: the step's weights read once (C, nothing else)"] = (
                lambda: _ceiling(binary, cfg, torch.get_num_threads()))
        if not args.no_uncached:
            variants["no KV cache (full forward per token)"] = (
                lambda: _timed(_uncached(model, prompt, n)))
        for fn in variants.values():  # warm-up: first-use setup is not the steady state
            fn()
        results: dict[str, list[tuple[int, float, float]]] = {k: [] for k in variants}
        for _ in range(args.rounds):
            for name, fn in variants.items():
                results[name].append(fn())
        final = _served(url, loaded.exp.id, n)[3]
        server.should_exit = True

    table = Table(title=f"Decode, batch 1, greedy, {n} new tokens · {cpu_model()} · "
                        f"{torch.get_num_threads()} threads · native {native.native_kernels()}")
    for col in ("variant", "tokens", "tokens/s (median)", "range", "first token ms (median)"):
        table.add_column(col, justify="left" if col == "variant" else "right")
    for name, runs in results.items():
        speeds = [(t - 1) / s for t, s, _ in runs if s > 0]
        first = f"{statistics.median(1000 * f for _, _, f in runs):.1f}"
        ceiling = name.startswith("ceiling")
        table.add_row(name, "-" if ceiling else str(runs[0][0]),
                      f"{statistics.median(speeds):,.0f}",
                      f"{min(speeds):,.0f}-{max(speeds):,.0f}", "-" if ceiling else first)
    console.print(table)
    console.print(f"model: depth {cfg.depth}, width {cfg.model_dim}, head dim {cfg.head_dim}, "
                  f"vocab {cfg.vocab_size}, fp32 · prompt {len(prompt)} tokens · rounds "
                  f"{args.rounds} · server's own figure for its last stream: "
                  f"{final.get('tokens_per_sec')} tokens/s, first token "
                  f"{final.get('first_token_ms')} ms")


if __name__ == "__main__":
    main()
