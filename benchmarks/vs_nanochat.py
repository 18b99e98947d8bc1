"""backlm against nanochat on this CPU: the real training commands, same data, same shape.

Usage::

    python benchmarks/vs_nanochat.py --nanochat DIR [--depths 4 6] [--dtypes fp32 bf16]
        [--rounds 2] [--steps 40] [--work DIR] [--python PY]

``DIR`` is a nanochat checkout (BENCHMARKS.md, "backlm vs nanochat", says how to fetch it and
at which commit). The script:

1. builds backlm's embedded corpus (``backlm data prepare``, vocab 8192) in a temporary
   ``$BACKLM_HOME`` and links the same parquet shards into a temporary ``NANOCHAT_BASE_DIR``
   (train shards first, the val shard last: nanochat holds out its last shard);
2. trains nanochat's tokenizer on them at the same vocabulary (``python -m scripts.tok_train``);
3. per depth and precision, runs ``python -m scripts.base_train`` (nanochat, with its own
   ``torch.compile``, ``--window-pattern L`` so that both compute full causal attention) and
   ``backlm train`` (forward) alternately, ``--rounds`` times each, on head dim 64, seq 512,
   batch 8×512, vocab 8192, no validation or sampling before or during the timed steps
   (nanochat ``--eval-every -1``; backlm ``train.eval_at_start=false`` and a validation
   cadence past the run: it validates once, after the last step);
4. parses each step's tokens/s (nanochat's ``step NNNNN/NNNNN ... | tok/sec: N`` lines;
   backlm's ``metrics.jsonl`` records) and reports the median over steps 10-39 (counted from 0
   in both tools), and the time from the command to the end of the first step.

bf16 runs only where the CPU multiplies bf16 natively (AVX512-BF16 or AMX); elsewhere the row
says "n/a: no native bf16". Nothing is written inside the repository: the homes live under
``--work`` (a fresh temporary folder by default, removed at the end).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHAPE = {"head_dim": 64, "seq_len": 512, "batch": 8, "vocab": 8192}
FIRST, LAST = 10, 39  # steps (from 0) whose tokens/s make the median
NANOCHAT_DTYPES = {"fp32": "float32", "bf16": "bfloat16"}
NANOCHAT_STEP = re.compile(
    r"^step (?P<step>\d+)/(?P<total>\d+) \(.*?\) \| loss: (?P<loss>[-\d.naif]+) \|.*?"
    r"\| dt: (?P<dt>[\d.]+)ms \| tok/sec: (?P<tps>[\d,]+)")


@dataclass
class Run:
    """One training command's outcome: tokens/s per step (from 0) and the wait to step 0."""

    tool: str
    steps: dict[int, float] = field(default_factory=dict)
    first_step_s: float | None = None
    error: str = ""

    def median(self, first: int = FIRST, last: int = LAST) -> float | None:
        """Median tokens/s over steps ``first``..``last``; None when any of them is missing."""
        rates = [self.steps.get(i) for i in range(first, last + 1)]
        return None if None in rates else statistics.median(rates)


def parse_nanochat_line(line: str) -> tuple[int, float] | None:
    """(step from 0, tokens/s) of one nanochat ``base_train`` step line, else None."""
    m = NANOCHAT_STEP.match(line.strip())
    return (int(m["step"]), float(m["tps"].replace(",", ""))) if m else None


def parse_backlm_line(line: str) -> tuple[int, float] | None:
    """(step from 0, tokens/s) of one backlm ``metrics.jsonl`` record, else None.

    backlm counts steps from 1 (step 0 holds the validation before training), so its step
    ``n`` is nanochat's step ``n - 1``.
    """
    try:
        rec = json.loads(line)
    except ValueError:
        return None
    if not isinstance(rec, dict) or "tokens_per_sec" not in rec or rec.get("step", 0) < 1:
        return None
    return int(rec["step"]) - 1, float(rec["tokens_per_sec"])


def ratio(backlm: float | None, nanochat: float | None) -> str:
    """backlm / nanochat as ``1.23×``, or ``-`` when either is missing."""
    return f"{backlm / nanochat:.2f}×" if backlm and nanochat else "-"


def _rate(x: float | None) -> str:
    return f"{x:,.0f}" if x else "-"


def _secs(x: float | None) -> str:
    return f"{x:.1f} s" if x is not None else "-"


def table(cpu: str, rows: list[tuple[str, Run | None, Run | None]],
          first_steps: list[tuple[str, list[Run], list[Run]]], na: list[str]) -> str:
    """The markdown table: a tokens/s row per (shape, precision, round), the first-step waits,
    then the precisions that do not apply on this CPU."""
    out = [f"CPU: {cpu}", "", "| | nanochat | backlm | ratio |", "|---|---|---|---|"]
    for label, nano, back in rows:
        n, b = nano.median() if nano else None, back.median() if back else None
        out.append(f"| {label} | {_rate(n)} | {_rate(b)} | {ratio(b, n)} |")
    for label, nanos, backs in first_steps:
        n = [r.first_step_s for r in nanos if r.first_step_s is not None]
        b = [r.first_step_s for r in backs if r.first_step_s is not None]
        out.append(f"| {label}: command → first step | {' / '.join(_secs(x) for x in n) or '-'} "
                   f"| {' / '.join(_secs(x) for x in b) or '-'} | — |")
    out += [f"| {label} | n/a: no native bf16 | n/a: no native bf16 | — |" for label in na]
    return "\n".join(out)


# --- running the tools ------------------------------------------------------------------------

def _stream(cmd: list[str], cwd: Path, env: dict, log: Path, timeout: float,
            on_line=None) -> tuple[int, float | None]:
    """Run ``cmd``, copying its output to ``log``; ``on_line(line)`` → True marks the first
    step, whose arrival (seconds after the launch) is returned with the exit code."""
    start, first = time.time(), None
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, bufsize=1)
        assert proc.stdout is not None
        for line in proc.stdout:
            f.write(line)
            if first is None and on_line and on_line(line):
                first = time.time() - start
            if time.time() - start > timeout:
                proc.kill()
                break
        code = proc.wait()
    return code, first


def prepare(args, work: Path) -> tuple[dict, dict]:
    """Both tools' environments, over the same shards; the two tokenizers trained."""
    home, base = work / "backlm_home", work / "nanochat_base"
    back_env = dict(os.environ, BACKLM_HOME=str(home), BACKLM_EXPERIMENTS=str(work / "exps"),
                    PYTHONPATH=str(REPO), WANDB_MODE="disabled")
    subprocess.run([sys.executable, "-m", "backlm.cli", "data", "prepare",
                    "--vocab-size", str(SHAPE["vocab"])], env=back_env, check=True,
                   stdout=subprocess.DEVNULL)
    data = home / "data" / "pydocs"
    shards = sorted(data.glob("train_*.parquet")) + sorted(data.glob("val_*.parquet"))
    target = base / "base_data_climbmix"
    target.mkdir(parents=True, exist_ok=True)
    for i, shard in enumerate(shards):
        link = target / f"shard_{i:05d}.parquet"
        if not link.exists():
            link.symlink_to(shard)
    nano_env = dict(os.environ, NANOCHAT_BASE_DIR=str(base), PYTHONUNBUFFERED="1",
                    TORCHINDUCTOR_CACHE_DIR=str(work / "inductor"), WANDB_MODE="disabled",
                    PYTHONPATH=os.pathsep.join([str(args.nanochat), *args.pythonpath]))
    if not (base / "tokenizer" / "tokenizer.pkl").exists():
        code, _ = _stream([args.python, "-m", "scripts.tok_train", "--vocab-size",
                           str(SHAPE["vocab"])], args.nanochat, nano_env,
                          work / "tok_train.log", 3600)
        if code:
            sys.exit(f"nanochat's tokenizer training failed: see {work / 'tok_train.log'}")
    return back_env, nano_env


def run_nanochat(args, env: dict, work: Path, depth: int, dtype: str, tag: str) -> Run:
    """``python -m scripts.base_train`` at the benchmark shape; tokens/s from its step lines."""
    cmd = [args.python, "-m", "scripts.base_train", "--depth", str(depth),
           "--head-dim", str(SHAPE["head_dim"]), "--max-seq-len", str(SHAPE["seq_len"]),
           "--device-batch-size", str(SHAPE["batch"]),
           "--total-batch-size", str(SHAPE["batch"] * SHAPE["seq_len"]),
           "--num-iterations", str(args.steps), "--eval-every", "-1",
           "--core-metric-every", "-1", "--sample-every", "-1", "--window-pattern", "L",
           "--device-type", "cpu", "--run", "dummy", "--model-tag", tag]
    run, log = Run("nanochat"), work / f"nanochat-{tag}.log"
    env = dict(env, NANOCHAT_DTYPE=NANOCHAT_DTYPES[dtype])
    code, run.first_step_s = _stream(cmd, args.nanochat, env, log, args.timeout,
                                     lambda line: parse_nanochat_line(line) is not None)
    for line in log.read_text().splitlines():
        if (parsed := parse_nanochat_line(line)) is not None:
            run.steps[parsed[0]] = parsed[1]
    shutil.rmtree(Path(env["NANOCHAT_BASE_DIR"]) / "base_checkpoints", ignore_errors=True)
    run.error = f"exit {code}, see {log}" if code else ""
    return run


def run_backlm(args, env: dict, work: Path, depth: int, dtype: str, tag: str) -> Run:
    """``backlm train`` at the benchmark shape; tokens/s from its metrics.jsonl records."""
    sets = [f"model.depth={depth}", f"model.head_dim={SHAPE['head_dim']}",
            f"model.seq_len={SHAPE['seq_len']}", f"model.vocab_size={SHAPE['vocab']}",
            f"train.device_batch_size={SHAPE['batch']}",
            f"train.total_batch_tokens={SHAPE['batch'] * SHAPE['seq_len']}",
            f"train.eval_every={10 * args.steps}", f"train.save_every={10 * args.steps}",
            "train.eval_at_start=false",  # as nanochat's --eval-every -1: training starts at once
            f"train.dtype={dtype}", "train.device=cpu", "data.dataset=pydocs"]
    cmd = [sys.executable, "-m", "backlm.cli", "train", "--direction", "forward", "--id", tag,
           "--max-steps", str(args.steps), "--wandb", "off"]
    for s in sets:
        cmd += ["--set", s]
    run, log = Run("backlm"), work / f"backlm-{tag}.log"
    code, _ = _stream(cmd, work, env, log, args.timeout)
    exp = Path(env["BACKLM_EXPERIMENTS"]) / tag
    metrics = exp / "metrics.jsonl"
    for line in metrics.read_text().splitlines() if metrics.exists() else []:
        if (parsed := parse_backlm_line(line)) is not None:
            run.steps[parsed[0]] = parsed[1]
    meta = exp / "metadata.json"
    if meta.exists():  # seconds from the process's start to the end of the first step
        run.first_step_s = (json.loads(meta.read_text()).get("startup") or {}).get(
            "first_step_end_s")
    shutil.rmtree(exp, ignore_errors=True)
    run.error = f"exit {code}, see {log}" if code else ""
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nanochat", type=Path, required=True, help="a nanochat checkout")
    parser.add_argument("--depths", type=int, nargs="+", default=[4, 6])
    parser.add_argument("--dtypes", nargs="+", choices=["fp32", "bf16"], default=["fp32", "bf16"])
    parser.add_argument("--rounds", type=int, default=2, help="alternations per shape")
    parser.add_argument("--steps", type=int, default=LAST + 1, help=f"steps per run (≥ {LAST + 1})")
    parser.add_argument("--work", type=Path, help="keep the homes and logs here (default: a "
                        "temporary folder, removed at the end)")
    parser.add_argument("--python", default=sys.executable,
                        help="interpreter for nanochat (its deps: torch, rustbpe, tiktoken, ...)")
    parser.add_argument("--pythonpath", nargs="*", default=[],
                        help="extra folders for nanochat's imports (e.g. a pip --target dir)")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per command")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    from backlm.hardware import cpu_has_native_bf16, cpu_model

    args.nanochat = args.nanochat.resolve()
    if not (args.nanochat / "scripts" / "base_train.py").is_file():
        sys.exit(f"{args.nanochat} is not a nanochat checkout (no scripts/base_train.py)")
    if args.steps < LAST + 1:
        sys.exit(f"--steps must be at least {LAST + 1}: the median covers steps {FIRST}-{LAST}")
    work = args.work or Path(tempfile.mkdtemp(prefix="vs_nanochat-"))
    work = work.resolve()
    if work.is_relative_to(REPO):
        sys.exit("--work must be outside the repository")
    work.mkdir(parents=True, exist_ok=True)
    print(f"work folder: {work}", flush=True)
    try:
        back_env, nano_env = prepare(args, work)
        rows, first_steps, na = [], [], []
        for depth in args.depths:
            for dtype in args.dtypes:
                label = f"d{depth} {dtype}"
                if dtype == "bf16" and not cpu_has_native_bf16():
                    na.append(label)
                    continue
                nanos, backs = [], []
                for r in range(1, args.rounds + 1):
                    tag = f"d{depth}-{dtype}-r{r}"
                    # alternate which goes first, so a drifting machine load hits both
                    order = [run_nanochat, run_backlm] if r % 2 else [run_backlm, run_nanochat]
                    out = {}
                    for fn in order:
                        res = fn(args, nano_env if fn is run_nanochat else back_env, work,
                                 depth, dtype, tag)
                        out[res.tool] = res
                        print(f"{label} round {r} {res.tool}: median {_rate(res.median())} "
                              f"tok/s, first step {_secs(res.first_step_s)} {res.error}",
                              flush=True)
                    nanos.append(out["nanochat"])
                    backs.append(out["backlm"])
                    rows.append((f"{label}, round {r}", out["nanochat"], out["backlm"]))
                first_steps.append((label, nanos, backs))
        print()
        print(table(cpu_model(), rows, first_steps, na))
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
