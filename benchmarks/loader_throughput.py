"""Dataloader throughput: tokenize + direction + best-fit pack, tokens per second.

Usage::

    python benchmarks/loader_throughput.py [--dataset pydocs] [--tokens 4000000] [--threads 2]

Runs forward, backward and bidirectional side by side in one process on the embedded corpus
(prepared first if missing), each twice: tokenizing on the fly, and reading the pre-tokenized
cache that ``backlm data prepare`` writes (built here first if missing, timed). Prints packed
row tokens/s and text tokens/s (tokens that carry loss: rows also hold BOS, markers and
padding) for each, next to the raw tokenizer speed on the same documents. Target (issue 17):
at least 1M text tokens/s in every direction.
"""

from __future__ import annotations

import argparse
import itertools
import time

from rich.console import Console
from rich.table import Table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="pydocs")
    parser.add_argument("--tokens", type=int, default=4_000_000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=512)
    args = parser.parse_args()

    from backlm.data.corpus import prepare_corpus
    from backlm.data.loader import PackedLoader
    from backlm.data.shards import iter_texts, list_shards
    from backlm.data.token_cache import ensure_tokens
    from backlm.direction import Direction
    from backlm.hardware import cpu_model
    from backlm.paths import dataset_dir
    from backlm.tokenizer import Tokenizer

    folder = dataset_dir(args.dataset)
    if not any(folder.glob("train_*.parquet")):
        prepare_corpus(folder)
    tok = Tokenizer.load(folder / "tokenizer")
    shards = list_shards(folder, "train")
    console = Console()

    # Raw tokenizer speed on the same text (the floor the loader cannot beat).
    texts, chars = [], 0
    for t in iter_texts(shards[0]):
        texts.append(t)
        chars += len(t)
        if chars > 8_000_000:
            break
    t0 = time.perf_counter()
    n_raw = sum(len(x) for x in tok.encode_batch(texts, args.threads))
    raw = n_raw / (time.perf_counter() - t0)

    t0 = time.perf_counter()
    built, _ = ensure_tokens(shards, tok, args.threads)
    cache_s = time.perf_counter() - t0

    table = Table(title=f"dataloader throughput · {cpu_model()} · {args.dataset} · "
                        f"{args.threads} threads · B={args.batch_size} T={args.seq_len}")
    for col in ("pipeline", "row tokens", "seconds", "row tokens/s", "text tokens/s",
                "vs raw tokenizer", "≥ 1M text/s"):
        table.add_column(col, justify="left" if col == "pipeline" else "right")
    table.add_row("tiktoken encode_ordinary_batch only", f"{n_raw:,}", "", f"{raw:,.0f}",
                  f"{raw:,.0f}", "1.00×", "")
    for direction, cached in itertools.product(Direction, (False, True)):
        loader = PackedLoader(shards, tok, direction, batch_size=args.batch_size,
                              seq_len=args.seq_len, threads=args.threads, token_cache=cached)
        if cached and loader.cache_notes:
            raise SystemExit("\n".join(loader.cache_notes))
        loader.next_batch()  # open files, fill the buffer
        n, text, t0 = 0, 0, time.perf_counter()
        while n < args.tokens:
            batch = loader.next_batch()
            n += batch.inputs.size
            text += batch.num_targets  # rows also hold BOS, markers and padding: no loss
        dt = time.perf_counter() - t0
        source = "token cache" if cached else "tokenize"
        table.add_row(f"{direction}: {source} + order + pack", f"{n:,}", f"{dt:.2f}",
                      f"{n / dt:,.0f}", f"{text / dt:,.0f}", f"{text / dt / raw:.2f}×",
                      "yes" if text / dt >= 1e6 else "no")
    console.print(table)
    console.print(f"token cache: {'built' if built else 'found'} for {len(shards)} train "
                  f"shard(s) ({cache_s:.2f} s)")


if __name__ == "__main__":
    main()
