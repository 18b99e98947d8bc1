"""lm-evaluation-harness on an exported forward model, against ``backlm eval`` on the same items.

Usage::

    python benchmarks/lm_eval_hf.py EXP [--experiments-dir DIR] [--step STEP] [--workdir DIR]
        [--batch-size 4]

1. ``backlm export EXP --format hf WORK/model``: the transformers folder (remote code, a real
   tokenizer.json).
2. The local task's items (benchmarks/lm_eval/arc_local.jsonl, the ARC layout) are written as
   parquet to ``WORK/home/data/tasks/arc-easy/`` and ``backlm eval EXP --tasks arc-easy
   --directions forward`` scores them with ``BACKLM_HOME=WORK/home`` (forward: the sum of the
   choice's log-probabilities after ``<|bos|>`` + prompt, backlm/evaluation/scoring.py).
3. ``lm_eval --model hf --model_args pretrained=WORK/model,trust_remote_code=True,
   dtype=float32,add_bos_token=True --tasks backlm_arc_local --include_path WORK/tasks
   --log_samples`` runs offline (HF_HUB_OFFLINE=1, HF_DATASETS_OFFLINE=1) on CPU.
4. Per item: the harness's log-likelihood of every choice against backlm's, and acc /
   acc_norm (backlm divides by the choice's UTF-8 bytes, the harness by its characters, the
   leading space included in both: the items are ASCII). Printed, and written to ``WORK/compare.json``; the exit code is 1 when
   an accuracy differs or a log-likelihood differs by more than ``--tolerance`` (1e-3).

This is for forward models only: the harness scores a continuation after a context in the
model's order, which for a backward model conditions on the future (README: "lm-evaluation-
harness and backward models").
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
TASK_DIR = HERE / "lm_eval"
TASK = "backlm_arc_local"
ITEMS = TASK_DIR / "arc_local.jsonl"


def run(argv: list[str], env: dict[str, str]) -> str:
    """Run a command; its output, or exit with it when it fails."""
    print("$", " ".join(argv), flush=True)
    done = subprocess.run(argv, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done.stdout


def write_task(work: Path) -> Path:
    """The task YAML with the items' absolute path, in its own include folder."""
    folder = work / "tasks"
    folder.mkdir(parents=True, exist_ok=True)
    text = (TASK_DIR / f"{TASK}.yaml").read_text(encoding="utf-8")
    text = text.replace("benchmarks/lm_eval/arc_local.jsonl", str(ITEMS))
    (folder / f"{TASK}.yaml").write_text(text, encoding="utf-8")
    shutil.copy(TASK_DIR / "utils.py", folder / "utils.py")
    return folder


def write_backlm_task(home: Path) -> None:
    """The same items where ``backlm eval`` reads arc-easy."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [json.loads(line) for line in ITEMS.read_text(encoding="utf-8").splitlines() if line]
    folder = home / "data" / "tasks" / "arc-easy"
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), folder / "test-00000-of-00001.parquet")


def backlm_records(exp_ref: str, root: Path, env: dict[str, str], step: str | None
                   ) -> dict[str, dict]:
    """``backlm eval``'s per-item records of arc-easy in forward order, by item id."""
    from backlm.experiment import find

    argv = [sys.executable, "-m", "backlm.cli", "eval", exp_ref, "--tasks", "arc-easy",
            "--directions", "forward", "--experiments-dir", str(root), "--device", "cpu"]
    run(argv + (["--step", step] if step else []), env)
    exp = find(exp_ref, root)
    data = json.loads(exp.evaluation_path(exp.phase, "forward", "arc-easy").read_text())
    return {r["id"]: r for r in data["records"]}


def harness_samples(model: Path, work: Path, env: dict[str, str], batch: int) -> tuple[dict, dict]:
    """The harness's metrics and its per-item samples (by item id)."""
    out = work / "lm_eval"
    args = (f"pretrained={model},trust_remote_code=True,dtype=float32,add_bos_token=True")
    run([sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args", args, "--tasks", TASK, "--include_path",
         str(write_task(work)), "--device", "cpu", "--batch_size", str(batch), "--log_samples",
         "--output_path", str(out)], env)
    results = json.loads(max(out.rglob("results_*.json")).read_text())
    samples = [json.loads(line) for path in out.rglob(f"samples_{TASK}_*.jsonl")
               for line in path.read_text().splitlines() if line]
    return results["results"][TASK], {s["doc"]["id"]: s for s in samples}


def compare(ours: dict[str, dict], theirs: dict[str, dict], metrics: dict) -> dict:
    """Per-item log-likelihood gaps and both sides' accuracies."""
    ids = sorted(theirs)
    if sorted(ours) != ids:
        raise SystemExit(f"the two runs scored different items: {sorted(ours)} vs {ids}")
    gaps, acc, acc_norm = [], [0, 0], [0, 0]
    for i in ids:
        lls = [float(r[0]) for r in theirs[i]["filtered_resps"]]
        gaps += [abs(a - b) for a, b in zip(ours[i]["logprobs"], lls, strict=True)]
        acc[0] += ours[i]["correct"]
        acc[1] += theirs[i]["acc"]
        acc_norm[0] += ours[i]["correct_norm"]
        acc_norm[1] += theirs[i]["acc_norm"]
    n = len(ids)
    return {"items": n, "choices": len(gaps), "max_abs_ll_diff": max(gaps),
            "mean_abs_ll_diff": sum(gaps) / len(gaps),
            "backlm": {"acc": acc[0] / n, "acc_norm": acc_norm[0] / n},
            "lm_eval": {"acc": acc[1] / n, "acc_norm": acc_norm[1] / n,
                        "reported_acc": metrics.get("acc,none"),
                        "reported_acc_norm": metrics.get("acc_norm,none")},
            "per_item_acc_equal": all(bool(ours[i]["correct"]) == bool(theirs[i]["acc"])
                                      and bool(ours[i]["correct_norm"]) == bool(theirs[i]["acc_norm"])
                                      for i in ids)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("experiment")
    p.add_argument("--experiments-dir", type=Path, default=None)
    p.add_argument("--step", default=None)
    p.add_argument("--workdir", type=Path, default=None)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--tolerance", type=float, default=1e-3)
    a = p.parse_args(argv)
    from backlm.paths import experiments_root

    root = (a.experiments_dir or experiments_root()).absolute()
    work = (a.workdir or Path(tempfile.mkdtemp(prefix="lm_eval_hf-"))).absolute()
    model = work / "model"
    shutil.rmtree(model, ignore_errors=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_CACHE": str(work / "hf_datasets"),
           "HF_MODULES_CACHE": str(work / "hf_modules"), "TOKENIZERS_PARALLELISM": "false",
           # the subprocesses run this checkout's backlm, as this script does
           "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE.parent),
                                                       os.environ.get("PYTHONPATH")]))}
    run([sys.executable, "-m", "backlm.cli", "export", a.experiment, "--format", "hf", str(model),
         "--experiments-dir", str(root)] + (["--step", a.step] if a.step else []), env)
    direction = json.loads((model / "config.json").read_text())["backlm_direction"]
    if direction != "forward":
        sys.exit(f"{a.experiment} is a {direction} model: the harness's conditional scoring "
                 "only means something for forward models; use `backlm eval` (joint scoring)")
    write_backlm_task(work / "home")
    ours = backlm_records(a.experiment, root, {**env, "BACKLM_HOME": str(work / "home")}, a.step)
    metrics, theirs = harness_samples(model, work, env, a.batch_size)
    out = compare(ours, theirs, metrics)
    (work / "compare.json").write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))
    ok = (out["per_item_acc_equal"] and out["max_abs_ll_diff"] <= a.tolerance
          and out["backlm"]["acc"] == out["lm_eval"]["reported_acc"]
          and out["backlm"]["acc_norm"] == out["lm_eval"]["reported_acc_norm"])
    print("equal" if ok else "DIFFERENT", f"(workdir {work})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
