"""The arrow-of-time gap: forward vs backward cpu-tiny models over several seeds, on the same
held-out bytes, with a paired confidence interval over documents.

Usage::

    python benchmarks/direction_gap.py [--seeds 1,2,3] [--experiments DIR] [--steps 200]
        [--resamples 2000]

For each seed it trains a forward and a backward model with the real command (`backlm train
--config cpu-tiny --direction D --seed S`; an experiment already in DIR is reused), evaluates
each with `backlm eval EXP --tasks lm` (whole val and OOD splits, both orders), and reads the
per-document sums the evaluations keep. The gap is forward bpb minus backward bpb, each model
in its native order, over the same documents and bytes (pairs checked by document hash). The
interval resamples documents (paired: a document's forward and backward losses move together),
per seed and pooled over seeds; the seed-level interval is a t-interval over the per-seed gaps
(both from :mod:`backlm.compare.stats`, the statistics `backlm compare` reports). Prints the CPU model, a table per split and a line per seed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from backlm.compare import stats


def backlm(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "backlm.cli", *args], text=True,
                          capture_output=True, env=dict(os.environ, COLUMNS="160"))


def trained(direction: str, seed: int, root: Path, steps: int) -> str:
    """The id of a finished cpu-tiny run of this direction and seed (trained if missing)."""
    exp_id = f"gap-{direction}-s{seed}"
    meta = root / exp_id / "metadata.json"
    if not (meta.is_file() and json.loads(meta.read_text()).get("status") == "finished"):
        res = backlm("train", "--config", "cpu-tiny", "--direction", direction, "--seed",
                     str(seed), "--max-steps", str(steps), "--id", exp_id, "--wandb", "off",
                     "--experiments-dir", str(root))
        if res.returncode != 0:
            raise SystemExit(f"training {exp_id} failed:\n{res.stdout[-2000:]}{res.stderr[-2000:]}")
    return exp_id


def native_documents(exp_id: str, direction: str, root: Path) -> dict[str, dict]:
    """Per split: the model's per-document sums read in its own order (evaluated if needed)."""
    path = root / exp_id / "evaluations" / "base" / direction / "lm.json"
    if not path.is_file():
        res = backlm("eval", exp_id, "--tasks", "lm", "--directions", "forward,backward",
                     "--experiments-dir", str(root), "--device", "cpu")
        if res.returncode != 0:
            raise SystemExit(f"eval of {exp_id} failed:\n{res.stdout[-2000:]}{res.stderr}")
    result = json.loads(path.read_text())
    return {r["split"]: r["per_document"] for r in result["records"]}


def paired_gap(fwd: dict, bwd: dict) -> stats.Pair:
    """Per-document (forward nats, backward nats, bytes), checked to be the same documents."""
    try:
        return stats.paired_documents(fwd, bwd)
    except ValueError as exc:
        raise SystemExit(f"forward and backward evaluations are {exc}") from None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--experiments", type=Path, default=Path("experiments-gap"))
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--resamples", type=int, default=2000)
    args = parser.parse_args()
    from backlm.hardware import cpu_model

    seeds = [int(s) for s in args.seeds.split(",")]
    docs: dict[tuple[str, int], dict] = {}
    for seed in seeds:
        for direction in ("forward", "backward"):
            exp_id = trained(direction, seed, args.experiments, args.steps)
            docs[direction, seed] = native_documents(exp_id, direction, args.experiments)
            print(f"seed {seed} {direction}: {exp_id} evaluated", flush=True)
    print(f"\n{cpu_model()} · cpu-tiny, {args.steps} steps · gap = forward bpb − backward bpb, "
          "each model in its own order, over the same documents and bytes")
    for split in ("val", "ood"):
        pairs = [paired_gap(docs["forward", s][split], docs["backward", s][split]) for s in seeds]
        print(f"\n{split}: {len(pairs[0][2])} documents, {int(pairs[0][2].sum()):,} bytes")
        print("| seed | forward bpb | backward bpb | gap | 95% CI over documents |")
        print("|---|---|---|---|---|")
        gaps = []
        for seed, (f, b, n) in zip(seeds, pairs, strict=True):
            one = stats.bootstrap_gap([(f, b, n)], args.resamples, seed)
            gaps.append(one.value)
            print(f"| {seed} | {stats.bpb(f, n):.4f} | {stats.bpb(b, n):.4f} | "
                  f"{one.value:+.4f} | [{one.lo:+.4f}, {one.hi:+.4f}] |")
        pooled = stats.bootstrap_gap(pairs, args.resamples)
        mean = float(np.mean(gaps))
        line = (f"| mean | | | {mean:+.4f} | [{pooled.lo:+.4f}, {pooled.hi:+.4f}] (documents, "
                "seeds pooled)")
        if len(gaps) > 1:
            by_seed = stats.seed_interval(gaps)
            line += f"; seeds: [{by_seed.lo:+.4f}, {by_seed.hi:+.4f}]"
        print(line + " |")


if __name__ == "__main__":
    main()
