"""The README's main job, measured: cpu-tiny in each direction, against a unigram baseline.

Usage::

    python benchmarks/cpu_tiny.py [--directions forward,backward,bidirectional] [--set k=v ...]

For each direction it runs ``backlm train --direction D --config configs/cpu-tiny.yaml`` as a
user would (a subprocess, fresh experiment folder), then prints wall time, val bpb before and
after training, and the unigram baseline: the bits per byte of the val tokens under the
train split's token frequencies (add-one smoothed) — what a model that ignores context gets.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from rich.console import Console
from rich.table import Table


def unigram_bpb(dataset: Path) -> float:
    """Bits per byte of val under add-one-smoothed train unigram frequencies."""
    from backlm.data.shards import iter_texts, list_shards
    from backlm.tokenizer import Tokenizer

    tok = Tokenizer.load(dataset / "tokenizer")
    counts: Counter[int] = Counter()
    for path in list_shards(dataset, "train"):
        for ids in tok.encode_batch(list(iter_texts(path)), 2):
            counts.update(ids)
    total = sum(counts.values()) + tok.vocab_size
    nbytes, bits = 0, 0.0
    lengths = tok.token_byte_lengths()
    for path in list_shards(dataset, "val"):
        for ids in tok.encode_batch(list(iter_texts(path)), 2):
            for i in ids:
                bits -= math.log2((counts[i] + 1) / total)
                nbytes += lengths[i]
    return bits / nbytes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--directions", default="forward,backward,bidirectional")
    parser.add_argument("--config", default="configs/cpu-tiny.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="backlm-cpu-tiny-"))
    table = Table(title=f"main job · {args.config} · experiments in {root}")
    for col in ("direction", "wall (command)", "steps", "val bpb start", "val bpb end",
                "unigram bpb", "tokens/s"):
        table.add_column(col, justify="left" if col == "direction" else "right")
    baseline = None
    for direction in args.directions.split(","):
        cmd = [sys.executable, "-m", "backlm.cli", "train", "--direction", direction, "--config",
               args.config, "--id", f"tiny-{direction}", "--experiments-dir", str(root)]
        for o in args.overrides:
            cmd += ["--set", o]
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - t0
        exp = root / f"tiny-{direction}"
        s = json.loads((exp / "training_summary.json").read_text())
        if baseline is None:
            meta = json.loads((exp / "metadata.json").read_text())
            baseline = unigram_bpb(Path(meta["data_dir"]))
        table.add_row(direction, f"{wall:.0f} s", str(s["steps"]), f"{s['first_val_bpb']:.3f}",
                      f"{s['val_bpb']:.3f}", f"{baseline:.3f}", f"{s['tokens_per_sec']:,.0f}")
    Console().print(table)


if __name__ == "__main__":
    main()
