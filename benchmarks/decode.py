"""Decode speed on one model kind in fp32 and in bf16, side by side in one run: batch 1 greedy
through the fused C decoder (many steps per C call), through PyTorch ops (the model's cached
forward, bf16 under autocast), served over HTTP, and without a KV cache; several rows at once
(BatchDecoder, each row at its own position: aggregate tokens/s at batch 1, 4 and 16); and
each precision's memory ceiling: the time to read one step's weights once and do nothing else.

Usage::

    python benchmarks/decode.py [--tokens 128] [--rounds 3] [--experiment EXP] [--no-uncached]

Without ``--experiment`` it trains a cpu-tiny model (depth 4, width 256, head dim 64, vocab
8192) for one step in a temporary folder (``backlm data prepare`` must have run) so the served
figure goes through a real experiment; the same weights decode in fp32 and in bf16 (the
precision is the model's ``decode_dtype``, which the loader sets to the run's). Speed is tokens
over the time from the first to the last token (as ``backlm chat`` reports it); the first
token's latency is from the prompt's ids to the first token. Rows alternate the variants so
machine load hits them alike; the table shows medians and ranges. The served figure streams
``/v1/chat/completions`` in the run's precision. The ceiling rows come from
``benchmarks/weight_stream.c`` (built with gcc on x86 with AVX-512): batch-1 decoding reads
every weight once per token, so no batch-1 decoder beats it on the same machine at the same
moment; "% ceiling" is each batch-1 row against its precision's ceiling.
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


def _ceiling(binary: Path, cfg, threads: int, dtype: str) -> tuple[int, float, float]:
    """The weights of one step read once, as a (tokens, seconds, first) row: 1 token/step.
    All threads and one are both timed and the faster kept, as the decoder itself does."""
    best = float("inf")
    for count in sorted({threads, 1}):
        res = subprocess.run([str(binary), str(cfg.depth), str(cfg.model_dim),
                              str(cfg.vocab_size), str(count), "100", dtype], check=True,
                             capture_output=True, text=True)
        best = min(best, float(res.stdout.split()[0]))
    return 2, best / 1e6, 0.0


def _batched(model, prompt: list[int], rows: int, n: int) -> tuple[int, float, float]:
    """``rows`` rows at different positions (prompts cut to different lengths) stepped
    together ``n`` times: (tokens made, seconds, seconds to the first step's logits)."""
    from backlm.model.decode import BatchDecoder

    batch = BatchDecoder(model, len(prompt) + n + 1, slots=rows)
    slots, tokens = [], []
    for r in range(rows):
        slot, logits = batch.add(prompt[:len(prompt) - r % 8])
        slots.append(slot)
        tokens.append(int(logits.argmax()))
    start = time.perf_counter()
    first = 0.0
    for i in range(n):
        logits = batch.step(slots, tokens)
        tokens = logits.argmax(dim=-1).tolist()
        if i == 0:
            first = time.perf_counter() - start
    return rows * n + 1, time.perf_counter() - start, first


def _cpu_line() -> str:
    from backlm.hardware import cpu_model
    from backlm.model import native

    try:
        flags = set(Path("/proc/cpuinfo").read_text().split("flags", 1)[1].split("\n")[0].split())
    except (OSError, IndexError):
        flags = set()
    shown = [f for f in ("avx2", "fma", "avx512f", "avx512bw", "avx512_bf16", "amx_bf16")
             if f in flags]
    isa = native.lib.decode_isa() if native.lib is not None else "none"
    return (f"CPU: {cpu_model()} · flags {' '.join(shown) or '?'} · decoding kernels {isa} · "
            f"training kernels {native.native_kernels()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batches", default="1,4,16", help="row counts for the batched rows")
    parser.add_argument("--experiment", help="an experiment id or folder (default: train one)")
    parser.add_argument("--experiments-dir", type=Path)
    parser.add_argument("--no-uncached", action="store_true", help="skip the slow variant")
    parser.add_argument("--no-served", action="store_true", help="skip the HTTP variant")
    args = parser.parse_args()

    import torch
    from rich.console import Console
    from rich.table import Table

    from backlm.experiment.loading import load_model
    from backlm.model import native

    console = Console(width=130)
    precisions = {"fp32": torch.float32, "bf16": torch.bfloat16}
    with tempfile.TemporaryDirectory() as tmp:
        ref, root = ((args.experiment, args.experiments_dir) if args.experiment
                     else _experiment(Path(tmp)))
        loaded = load_model(ref, root, device="cpu")
        model, cfg = loaded.model, loaded.model.cfg
        run_dtype = model.decode_dtype
        prompt = [loaded.tokenizer.special_ids.bos, *loaded.tokenizer.encode(PROMPT)]
        server, url = (None, "") if args.no_served else _serve(loaded)
        n = args.tokens

        def cached(dtype: str, fused: bool):
            def run():
                model.decode_dtype = precisions[dtype]
                previous = native.set_native(fused)
                try:
                    return _timed(model.generate(prompt, n, temperature=0.0))
                finally:
                    native.set_native(previous)
                    model.decode_dtype = run_dtype
            return run

        def batched(dtype: str, rows: int):
            def run():
                model.decode_dtype = precisions[dtype]
                try:
                    with torch.inference_mode():
                        return _batched(model, prompt, rows, n)
                finally:
                    model.decode_dtype = run_dtype
            return run

        binary = _ceiling_binary(Path(tmp))
        variants: dict[tuple[str, str], object] = {}
        for dtype in precisions:
            variants[(dtype, "batch 1, fused C decoder (greedy)")] = cached(dtype, True)
            variants[(dtype, "batch 1, PyTorch ops (cached forward)")] = cached(dtype, False)
            for rows in (int(r) for r in args.batches.split(",")):
                variants[(dtype, f"batch {rows}, BatchDecoder step (aggregate)")] = (
                    batched(dtype, rows))
            if binary is not None:
                variants[(dtype, "ceiling: the step's weights read once")] = (
                    lambda dtype=dtype: _ceiling(binary, cfg, torch.get_num_threads(), dtype))
        run_name = "bf16" if run_dtype == torch.bfloat16 else "fp32"
        if server is not None:
            variants[(run_name, "batch 1, served API (stream)")] = (
                lambda: _served(url, loaded.exp.id, n)[:3])
        if not args.no_uncached:
            variants[("fp32", "batch 1, no KV cache (full forward per token)")] = (
                lambda: _timed(_uncached(model, prompt, n)))
        for fn in variants.values():  # warm-up: first-use setup is not the steady state
            fn()
        results: dict[tuple[str, str], list[tuple[int, float, float]]] = {k: [] for k in variants}
        for _ in range(args.rounds):
            for key, fn in variants.items():
                results[key].append(fn())
        final = _served(url, loaded.exp.id, n)[3] if server is not None else {}
        if server is not None:
            server.should_exit = True

    def speeds(runs):
        return [(t - 1) / s for t, s, _ in runs if s > 0]

    ceilings = {d: statistics.median(speeds(r)) for (d, name), r in results.items()
                if name.startswith("ceiling")}
    batch1 = {d: statistics.median(speeds(r)) for (d, name), r in results.items()
              if name.startswith("batch 1, BatchDecoder")}
    table = Table(title=f"Decode, greedy, {n} new tokens per row · {torch.get_num_threads()} "
                        "threads · medians of alternated rounds")
    for col in ("precision", "variant", "tokens/s (median)", "range", "% ceiling",
                "× batch 1 rows", "first token ms"):
        table.add_column(col, justify="left" if col in ("precision", "variant") else "right")
    for (dtype, name), runs in results.items():
        sp = speeds(runs)
        med = statistics.median(sp)
        ceiling = name.startswith("ceiling")
        pct = (f"{100 * med / ceilings[dtype]:.0f}%" if dtype in ceilings
               and name.startswith("batch 1,") else "-")
        times = (f"{med / batch1[dtype]:.1f}×" if dtype in batch1 and "BatchDecoder" in name
                 else "-")
        first = "-" if ceiling else f"{statistics.median(1000 * f for _, _, f in runs):.1f}"
        table.add_row(dtype, name, f"{med:,.0f}", f"{min(sp):,.0f}-{max(sp):,.0f}", pct, times,
                      first)
    console.print(table)
    console.print(_cpu_line())
    console.print(f"model: depth {cfg.depth}, width {cfg.model_dim}, head dim {cfg.head_dim}, "
                  f"vocab {cfg.vocab_size} · run precision {run_name} · prompt {len(prompt)} "
                  f"tokens · rounds {args.rounds} · server's own figure for its last stream: "
                  f"{final.get('tokens_per_sec')} tokens/s, first token "
                  f"{final.get('first_token_ms')} ms")
    console.print("command: python " + " ".join(sys.argv))


if __name__ == "__main__":
    main()
