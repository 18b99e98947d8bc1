"""A served stream against the engine it serves: in-process decode vs ``backlm serve`` read by
the official ``openai`` client in another process, alternated in one run; then aggregate
tokens/s with several concurrent streams.

Usage::

    python benchmarks/serve_stream.py [--tokens 256] [--rounds 5] [--streams 1,4,16]
        [--temperature 0] [--experiment EXP --experiments-dir DIR]

Without ``--experiment`` it trains a cpu-tiny model (depth 4, head dim 64, vocab 8192, fp32) for
one step in a temporary folder (``backlm data prepare`` must have run), as benchmarks/decode.py
does. Three processes: this one (the in-process rows), ``backlm serve`` on 127.0.0.1 (its own
process, as users run it) and a client process that streams ``/v1/chat/completions`` with
``openai.OpenAI(base_url=...)`` and ``stream=True`` and times the chunks as they arrive.

Rows, alternated each round (A, B, C, A, B, C, ...) so machine load hits them alike:
- engine: ``model.decode`` on the chat prompt the server builds, the same sampling, stepped
  and nothing else (the engine the server runs);
- chat in process: :class:`backlm.serve.Chat` ``send`` (the engine plus text, stop rules);
- served stream: one stream through the server and the official client.

Speed is (tokens - 1) over the time from the first token to the last (as ``backlm chat``
reports it): served, from the first content chunk's arrival to the last one's, tokens from the
usage chunk (several tokens may share a chunk). First-token latency: engine, from the call to
the first step; served, from sending the request to the first content chunk. Concurrent rows:
K streams started together, total tokens over the wall time from the first request to the last
stream's end.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

PROMPT = "The quick brown fox jumps over the lazy dog. Python lists keep their items in order."
READY = re.compile(r" at (http://\S+)")


def cpu_line() -> str:
    """The CPU model, its vector flags that matter here, cores, threads, load."""
    import torch

    from backlm.hardware import cpu_model
    from backlm.model import native

    flags: set[str] = set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    wanted = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16")
    return (f"CPU: {cpu_model()} · {os.cpu_count()} cores · flags: "
            f"{' '.join(f for f in wanted if f in flags) or 'none of ' + ' '.join(wanted)} · "
            f"torch {torch.__version__}, {torch.get_num_threads()} threads · native kernels "
            f"{native.native_kernels()} · load average {os.getloadavg()[0]:.1f}")


def _experiment(tmp: Path) -> tuple[str, Path]:
    exps = tmp / "exps"
    cmd = [sys.executable, "-m", "backlm.cli", "train", "--config", "cpu-tiny", "--max-steps",
           "1", "--id", "serve-bench", "--experiments-dir", str(exps), "--wandb", "off",
           "--set", "train.eval_tokens=4096"]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return "serve-bench", exps


# --- the client process ---------------------------------------------------------------------

def _one_stream(client, model: str, tokens: int, temperature: float, seed: int | None) -> dict:
    start = time.perf_counter()
    stamps, used = [], 0
    stream = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": PROMPT}], stream=True,
        temperature=temperature, max_tokens=tokens, seed=seed,
        stream_options={"include_usage": True})
    for chunk in stream:
        if chunk.usage is not None:
            used = chunk.usage.completion_tokens
        elif chunk.choices and chunk.choices[0].delta.content:
            stamps.append(time.perf_counter())
    end = time.perf_counter()
    return {"tokens": used, "chunks": len(stamps), "first": stamps[0] - start,
            "seconds": stamps[-1] - stamps[0], "start": start, "end": end}


def client_main(url: str, model: str) -> None:
    """Read ``{"streams", "tokens", "temperature"}`` lines; answer each with a JSON line."""
    import openai

    client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0)
    pool = ThreadPoolExecutor(64)
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        job = json.loads(line)
        k = job["streams"]
        futures = [pool.submit(_one_stream, client, model, job["tokens"], job["temperature"],
                               None if job.get("seed") is None else job["seed"] + i)
                   for i in range(k)]
        runs = [f.result() for f in futures]
        wall = max(r["end"] for r in runs) - min(r["start"] for r in runs)
        print(json.dumps({"runs": runs, "wall": wall}), flush=True)


class Client:
    """The client process, driven over its stdin/stdout."""

    def __init__(self, url: str, model: str) -> None:
        self.proc = subprocess.Popen([sys.executable, __file__, "--client", url, model],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert json.loads(self.proc.stdout.readline())["ready"]

    def run(self, **job) -> dict:
        self.proc.stdin.write(json.dumps(job) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the client process died")
        return json.loads(line)

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def start_server(exp: str, root: Path) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "backlm.cli", "serve", "--model", exp,
                             "--experiments-dir", str(root), "--port", "0"],
                            stdout=subprocess.PIPE, text=True,
                            env=dict(os.environ, COLUMNS="300"))
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x) for x in proc.stdout], daemon=True).start()
    match = READY.search(lines.get(timeout=300))
    assert match, "backlm serve did not print its address"
    return proc, match.group(1)


# --- the in-process rows --------------------------------------------------------------------

def engine_row(loaded, prompt: list[int], n: int, sampling) -> tuple[int, float, float]:
    """Tokens, seconds first→last, seconds to the first token: the engine stepped."""
    start = time.perf_counter()
    stamps = [time.perf_counter() for _ in loaded.model.decode(
        prompt, n, rows=1, sampling=sampling.params(), seed=sampling.seed)]
    return len(stamps), stamps[-1] - stamps[0], stamps[0] - start


def chat_row(loaded, sampling) -> tuple[int, float, float]:
    from backlm.serve import Chat

    ld = loaded
    chat = Chat(ld.model, ld.tokenizer, ld.direction, ld.phase)
    text = chat.load([{"role": "user", "content": PROMPT}])
    for _ in chat.send(text, sampling):
        pass
    s = chat.stats
    return s.tokens, s.seconds, s.first_token_seconds


def served_row(client: Client, n: int, temperature: float) -> tuple[int, float, float]:
    run = client.run(streams=1, tokens=n, temperature=temperature)["runs"][0]
    return run["tokens"], run["seconds"], run["first"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--streams", default="1,4,16", help="concurrent stream counts")
    parser.add_argument("--concurrent-tokens", type=int, default=64,
                        help="max_tokens of each concurrent stream")
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--experiment", help="an experiment id or folder (default: train one)")
    parser.add_argument("--experiments-dir", type=Path)
    parser.add_argument("--client", nargs=2, metavar=("URL", "MODEL"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        client_main(*args.client)
        return

    import torch
    from rich.console import Console
    from rich.table import Table

    from backlm.experiment.loading import load_model
    from backlm.serve import Chat, Sampling

    console = Console(width=120)
    n = args.tokens
    sampling = Sampling(temperature=args.temperature, max_tokens=n,
                        seed=None if args.temperature == 0 else 1234)
    with tempfile.TemporaryDirectory() as tmp:
        ref, root = ((args.experiment, args.experiments_dir) if args.experiment
                     else _experiment(Path(tmp)))
        server, url = start_server(ref, root)
        client = None
        try:
            loaded = load_model(ref, root, device="cpu")
            chat = Chat(loaded.model, loaded.tokenizer, loaded.direction, loaded.phase)
            prompt = chat._prompt(chat.load([{"role": "user", "content": PROMPT}]))[0]
            client = Client(url, loaded.name)
            variants = {
                "engine (model.decode, in process)": lambda: engine_row(loaded, prompt, n,
                                                                         sampling),
                "chat in process (engine + text)": lambda: chat_row(loaded, sampling),
                "served stream (openai client, other process)": lambda: served_row(
                    client, n, args.temperature),
            }
            # the in-process rows run on one dedicated thread, as the server's model thread
            # (on a loaded machine the main thread's OpenMP team can be far slower)
            model_thread = ThreadPoolExecutor(1)
            for name, fn in variants.items():  # warm-up: first-use setup is not the steady state
                (fn() if name.startswith("served") else model_thread.submit(fn).result())
            results: dict[str, list[tuple[int, float, float]]] = {k: [] for k in variants}
            for _ in range(args.rounds):
                for name, fn in variants.items():
                    results[name].append(fn() if name.startswith("served")
                                         else model_thread.submit(fn).result())
            concurrent = {}
            for k in [int(x) for x in args.streams.split(",") if x]:
                client.run(streams=k, tokens=8, temperature=args.temperature, seed=1)
                concurrent[k] = [client.run(streams=k, tokens=args.concurrent_tokens,
                                            temperature=args.temperature, seed=1)
                                 for _ in range(max(1, args.rounds // 2))]
        finally:
            if client is not None:
                client.close()
            server.terminate()
            server.wait(timeout=30)

    console.print(cpu_line())
    table = Table(title=f"One stream, {n} new tokens, temperature {args.temperature:g} · "
                        f"{args.rounds} alternated rounds (machine may be shared)")
    for col in ("row", "tokens", "tokens/s (median)", "range", "first token ms (median)",
                "vs engine"):
        table.add_column(col, justify="left" if col == "row" else "right")
    medians = {}
    for name, runs in results.items():
        speeds = [(t - 1) / s for t, s, _ in runs if s > 0]
        medians[name] = statistics.median(speeds)
    base = next(iter(medians.values()))
    for name, runs in results.items():
        speeds = [(t - 1) / s for t, s, _ in runs if s > 0]
        table.add_row(name, str(runs[0][0]), f"{medians[name]:,.0f}",
                      f"{min(speeds):,.0f}-{max(speeds):,.0f}",
                      f"{statistics.median(1000 * f for _, _, f in runs):.1f}",
                      f"{medians[name] / base:.0%}")
    console.print(table)
    if concurrent:
        table = Table(title=f"Concurrent served streams (openai client threads, one process), "
                            f"{args.concurrent_tokens} tokens each")
        for col in ("streams", "tokens (all)", "aggregate tokens/s (median)", "range",
                    "per-stream tokens/s (median)", "first token ms (median)"):
            table.add_column(col, justify="right")
        for k, reps in concurrent.items():
            agg = [sum(r["tokens"] for r in rep["runs"]) / rep["wall"] for rep in reps]
            per = [(r["tokens"] - 1) / r["seconds"] for rep in reps for r in rep["runs"]
                   if r["seconds"] > 0]
            first = [1000 * r["first"] for rep in reps for r in rep["runs"]]
            table.add_row(str(k), str(sum(r["tokens"] for r in reps[0]["runs"])),
                          f"{statistics.median(agg):,.0f}", f"{min(agg):,.0f}-{max(agg):,.0f}",
                          f"{statistics.median(per):,.0f}" if per else "-",
                          f"{statistics.median(first):.0f}")
        console.print(table)
    cfg = loaded.model.cfg
    dtype = str(getattr(loaded.model, "decode_dtype", None) or loaded.model.lm_head.weight.dtype)
    console.print(f"model: depth {cfg.depth}, width {cfg.model_dim}, vocab {cfg.vocab_size}, "
                  f"decoding in {dtype.removeprefix('torch.')} · prompt {len(prompt)} tokens · torch threads "
                  f"{torch.get_num_threads()} · command: python benchmarks/serve_stream.py "
                  + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
