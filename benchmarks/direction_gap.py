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
per seed and pooled over seeds; the seed-level interval is a t-interval over the per-seed gaps.
Prints the CPU model, a table per split and a line per seed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306,
         9: 2.262}  # Student t, 97.5 % quantile, by degrees of freedom


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


def bpb(nats: np.ndarray, nbytes: np.ndarray) -> float:
    return float(nats.sum() / (math.log(2) * nbytes.sum()))


def paired_gap(fwd: dict, bwd: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-document (forward nats, backward nats, bytes), checked to be the same documents."""
    if fwd["hash"] != bwd["hash"] or fwd["bytes"] != bwd["bytes"]:
        raise SystemExit("forward and backward evaluations are not over the same documents")
    return (np.asarray(fwd["nats"]), np.asarray(bwd["nats"]),
            np.asarray(fwd["bytes"], dtype=np.float64))


def bootstrap(pairs: list[tuple[np.ndarray, np.ndarray, np.ndarray]], resamples: int,
              seed: int = 0) -> tuple[float, float]:
    """95 % interval of the mean (over seeds) gap in bpb, documents resampled with the same
    draw in every seed (a document's losses in all runs move together)."""
    rng = np.random.default_rng(seed)
    n = len(pairs[0][2])
    gaps = np.empty(resamples)
    for i in range(resamples):
        pick = rng.integers(0, n, n)
        gaps[i] = np.mean([bpb(fwd[pick], nbytes[pick]) - bpb(bwd[pick], nbytes[pick])
                           for fwd, bwd, nbytes in pairs])
    lo, hi = np.percentile(gaps, [2.5, 97.5])
    return float(lo), float(hi)


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
            gap = bpb(f, n) - bpb(b, n)
            gaps.append(gap)
            lo, hi = bootstrap([(f, b, n)], args.resamples, seed)
            print(f"| {seed} | {bpb(f, n):.4f} | {bpb(b, n):.4f} | {gap:+.4f} | "
                  f"[{lo:+.4f}, {hi:+.4f}] |")
        lo, hi = bootstrap(pairs, args.resamples)
        mean = float(np.mean(gaps))
        line = f"| mean | | | {mean:+.4f} | [{lo:+.4f}, {hi:+.4f}] (documents, seeds pooled)"
        if len(gaps) > 1:
            half = T_975.get(len(gaps) - 1, 1.96) * float(np.std(gaps, ddof=1)) / len(gaps) ** .5
            line += f"; seeds: [{mean - half:+.4f}, {mean + half:+.4f}]"
        print(line + " |")


if __name__ == "__main__":
    main()
