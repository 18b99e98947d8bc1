"""The phase tree a new user builds on 2 CPU cores, measured end to end.

Usage::

    python benchmarks/phases.py [--workdir DIR] [--skip-forward] [--rl-steps N] [--report-only]

Runs, as a user would (``python -m backlm.cli``), in ``--workdir`` (experiments there; data
in ``$BACKLM_HOME``, the embedded corpus and chat set are built on first use):

1. backward: ``train --config cpu-tiny`` → ``branch mid`` → two ``branch sft`` siblings with
   ``--init-lr-frac`` 0.2 and 0.05 → ``branch rl`` from the first sibling;
2. forward: the chain ``train --phase base,sft,rl --config cpu-tiny``;
3. ``ls --tree``; every child's parent_link.json checked (the recorded sha256 equals the
   named checkpoint's weights file);
4. transcripts: the backward SFT model given an assistant answer writes the user turn (shown
   in reading order), the forward SFT model answers a question (greedy);
5. RL: the training reward (mean of the first and last 10 steps) and the held-out greedy
   reward (step 0 and the end) in both directions.

Prints the CPU model, each phase's wall time, and the figures BENCHMARKS.md quotes.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def backlm(workdir: Path, *args: str) -> float:
    """Run one backlm command; its wall time."""
    t = time.perf_counter()
    cmd = [sys.executable, "-m", "backlm.cli", *args, "--experiments-dir", str(workdir)]
    print("$ backlm " + " ".join(args), flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        print(proc.stdout[-3000:], proc.stderr[-3000:])
        raise SystemExit(f"failed: {' '.join(args)}")
    return time.perf_counter() - t


def check_links(workdir: Path) -> None:
    from backlm.experiment.checkpoint import MODEL_FILE, sha256_file
    from backlm.experiment.folder import all_experiments

    for exp in all_experiments(workdir):
        link = exp.parent_link()
        if link is None:
            continue
        weights = Path(link["checkpoint"]) / MODEL_FILE
        ok = sha256_file(weights) == link["weights_sha256"]
        print(f"  {exp.id}: parent {link['parent_id']} step {link['step']} "
              f"({Path(link['checkpoint']).name}), sha256 {link['weights_sha256'][:16]}… "
              f"{'matches' if ok else 'DIFFERS'}; chain {' → '.join(link['chain_ids'])}")
        if not ok:
            raise SystemExit("a parent link does not match its checkpoint")


def transcript(workdir: Path, exp_id: str, order: str, text: str) -> None:
    """Greedy turn from an SFT model (:class:`backlm.serve.conversation.Chat`, as ``backlm chat``
    writes it): forward answers ``text``; backward writes the question whose answer it is."""
    from backlm.experiment.loading import load_model
    from backlm.serve.conversation import Chat, Sampling

    loaded = load_model(exp_id, workdir, device="cpu")
    chat = Chat(loaded.model, loaded.tokenizer, loaded.direction, loaded.phase)
    for _ in chat.send(text, Sampling(temperature=0.0, max_tokens=64)):
        pass
    user, assistant = (m["content"] for m in chat.messages)
    note = "" if order == "forward" else "; the model writes the user turn, shown in reading order"
    print(f"  [{exp_id}, {order}{note}]\n    user:      {user}\n    assistant: {assistant}")


def rl_figures(workdir: Path, exp_id: str) -> None:
    """Training reward in 20-step windows (mean ± standard error) and the held-out greedy
    reward at each evaluation."""
    import statistics

    rows = [json.loads(line) for line in (workdir / exp_id / "metrics.jsonl").open()]
    train = [r["reward_mean"] for r in rows if "reward_mean" in r]
    windows = []
    for i in range(0, len(train), 20):
        chunk = train[i:i + 20]
        err = statistics.stdev(chunk) / len(chunk) ** 0.5 if len(chunk) > 1 else 0.0
        windows.append(f"{chunk and statistics.mean(chunk):.3f}±{err:.3f}")
    val = ", ".join(f"{r['step']}: {r['val_reward']:.3f}" for r in rows if "val_reward" in r)
    cfg = (workdir / exp_id / "config.yaml").read_text()
    lr = next((line.split(":")[1].strip() for line in cfg.splitlines()
               if "init_lr_frac" in line), "?")
    print(f"  {exp_id} (init_lr_frac {lr}, {len(train)} steps): training reward per 20 steps "
          f"{' → '.join(windows)}; held-out greedy reward by step {val}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, default=Path("phases-demo"))
    ap.add_argument("--skip-forward", action="store_true")
    ap.add_argument("--rl-steps", type=int, default=None,
                    help="RL steps (default: the phase's, backlm/configs/phases.yaml)")
    ap.add_argument("--report-only", action="store_true",
                    help="print the tree, links, transcripts and rewards of a finished workdir")
    args = ap.parse_args()
    w = args.workdir
    w.mkdir(parents=True, exist_ok=True)
    print(f"CPU: {cpu_model()}")
    rl = ["--max-steps", str(args.rl_steps)] if args.rl_steps else []
    if not args.report_only:
        run_all(w, rl, args.skip_forward)
    report(w, args.skip_forward)


def run_all(w: Path, rl: list[str], skip_forward: bool) -> None:
    times = {}
    times["base (backward)"] = backlm(w, "train", "-d", "backward", "--config", "cpu-tiny",
                                      "--id", "bw-base", "--wandb", "off")
    times["mid"] = backlm(w, "branch", "mid", "--parent", "bw-base", "--id", "bw-mid")
    times["sft a (0.2)"] = backlm(w, "branch", "sft", "--parent", "bw-mid", "--id", "bw-sft-a",
                                  "--init-lr-frac", "0.2")
    times["sft b (0.05)"] = backlm(w, "branch", "sft", "--parent", "bw-mid", "--id", "bw-sft-b",
                                   "--init-lr-frac", "0.05")
    times["rl (backward)"] = backlm(w, "branch", "rl", "--parent", "bw-sft-a", "--id", "bw-rl",
                                    *rl)
    if not skip_forward:
        times["chain base,sft,rl (forward)"] = backlm(
            w, "train", "--phase", "base,sft,rl", "-d", "forward", "--config", "cpu-tiny",
            "--id", "fw", "--wandb", "off")
    print("\nwall time per command:")
    for name, sec in times.items():
        print(f"  {name:30s} {sec / 60:5.1f} min")


def report(w: Path, skip_forward: bool) -> None:
    print("\n$ backlm ls --tree")
    subprocess.run([sys.executable, "-m", "backlm.cli", "ls", "--tree", "--experiments-dir",
                    str(w)])
    print("\nparent links:")
    check_links(w)
    print("\ntranscripts (greedy):")
    transcript(w, "bw-sft-a", "backward", "The answer is 12.")
    transcript(w, "bw-sft-a", "backward",
               "`dumps(obj, *, skipkeys=False, ensure_ascii=True, indent=None)`")
    if not skip_forward:
        transcript(w, "fw-sft", "forward", "What is 7 plus 5?")
        transcript(w, "fw-sft", "forward", "What does the function `json.dumps` do?")
    print("\nRL reward:")
    from backlm.experiment.folder import all_experiments

    for exp in all_experiments(w):
        if exp.metadata().get("phase") == "rl":
            rl_figures(w, exp.id)


if __name__ == "__main__":
    main()
