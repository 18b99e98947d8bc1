"""Dataloader throughput: tokenize + direction + best-fit pack, tokens per second.

Usage::

    python benchmarks/loader_throughput.py [--dataset pydocs] [--tokens 4000000] [--threads 2]

Runs forward, backward and bidirectional side by side in one process on the embedded corpus
(prepared first if missing) and prints packed row tokens/s and text tokens/s (tokens that
carry loss: rows also hold BOS, markers and padding) for each, next to the raw tokenizer
speed on the same documents, so the cost of direction + packing is visible. Target on the
2-core CI machine: at least 500k tokens/s (aim for 1M).
"""

from __future__ import annotations

import argparse
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

    table = Table(title=f"dataloader throughput · {cpu_model()} · {args.dataset} · "
                        f"{args.threads} threads · B={args.batch_size} T={args.seq_len}")
    for col in ("pipeline", "row tokens", "seconds", "row tokens/s", "text tokens/s",
                "vs raw tokenizer"):
        table.add_column(col, justify="left" if col == "pipeline" else "right")
    table.add_row("tiktoken encode_ordinary_batch only", f"{n_raw:,}", "", f"{raw:,.0f}",
                  f"{raw:,.0f}", "1.00×")
    for direction in ("forward", "backward", "bidirectional"):
        loader = PackedLoader(shards, tok, direction, batch_size=args.batch_size,
                              seq_len=args.seq_len, threads=args.threads)
        loader.next_batch()  # open files, fill the buffer
        n, text, t0 = 0, 0, time.perf_counter()
        while n < args.tokens:
            batch = loader.next_batch()
            n += batch.inputs.size
            text += batch.num_targets  # rows also hold BOS, markers and padding: no loss
        dt = time.perf_counter() - t0
        table.add_row(f"{direction}: tokenize + order + pack", f"{n:,}", f"{dt:.2f}",
                      f"{n / dt:,.0f}", f"{text / dt:,.0f}", f"{text / dt / raw:.2f}×")
    console.print(table)


if __name__ == "__main__":
    main()
