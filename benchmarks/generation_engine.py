"""The shared generation engine against the samplers it replaced, side by side in one run:
RL's group sampling (one RL optimizer step, and the sampling alone) and 5CAT's gate-D rollouts.

Usage::

    python benchmarks/generation_engine.py [--rounds 7] [--steps 3] [--group 8] [--prompts 4]

The model is cpu-tiny's shape (depth 4, width 256, head dim 64, vocab 8192, fp32) with its
initial weights, and a BPE vocabulary of 8192 trained on the standard library's sources (about
a second): an untrained model rarely writes the stop tag, so every sample runs to
``rl.max_new_tokens`` — the most sampling an RL step can do. "old" is a frozen copy of the code
before the engine (``sample_group`` as it was in ``backlm/train/rl.py``, gate D's rollout loop as
it was in ``backlm/fivecat/gates.py``); "new" is the package as it is. An RL step is the real
the loop's one training step (``backlm.train.loop._train_step``) with the RL phase and
``rl.sample_group`` swapped. Each round runs old and new
(alternating which goes first) from the same weights; the table shows medians over rounds.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


# --- the code before the engine, frozen -----------------------------------------------------

def old_sample_group(model, prompt, group, max_new, temperature, stop, seed):
    """``sample_group`` as it was: the prompt prefilled once per sample (``group`` rows)."""
    import torch

    from backlm.model.decode import KVCache

    device = model.lm_head.weight.device
    cfg = model.cfg
    gen = torch.Generator(device=device).manual_seed(seed)
    cache = KVCache(cfg.depth, group, cfg.n_heads, cfg.head_dim, len(prompt) + max_new)
    ids = torch.tensor([prompt] * group, dtype=torch.long, device=device)
    out: list[list[int]] = [[] for _ in range(group)]
    done = [False] * group
    with torch.no_grad():
        for _ in range(max_new):
            logits = model.logits(model.hidden(ids, cache)[:, -1]).float()
            if temperature <= 0:
                nxt = logits.argmax(dim=-1)
            else:
                probs = torch.softmax(logits / temperature, dim=-1)
                nxt = torch.multinomial(probs, 1, generator=gen).squeeze(1)
            for i, token in enumerate(nxt.tolist()):
                if not done[i]:
                    out[i].append(token)
                    done[i] = token == stop
            if all(done):
                break
            ids = nxt.view(group, 1)
    return out


def old_rollout(model, x, top, prefix, horizon):
    """Gate D's rollout loop as it was (one CPU thread, as gates.one_cpu_thread sets)."""
    import torch

    from backlm.fivecat.gates import one_cpu_thread, rollout_cuts
    from backlm.model.decode import KVCache

    cfg, (n, length) = model.cfg, x.shape
    cache = KVCache(cfg.depth, n, cfg.n_heads, cfg.head_dim, length)
    with torch.no_grad():
        model.hidden(x, cache)
        hits = tf_hits = total = 0
        with one_cpu_thread(x.device):
            for cut in rollout_cuts(prefix, length, horizon):
                cache.pos = cut - 1
                ids, made = x[:, cut - 1:cut], []
                for _ in range(horizon):
                    ids = model.logits(model.hidden(ids, cache)).argmax(-1)
                    made.append(ids)
                ref = x[:, cut:cut + horizon]
                hits += int((torch.cat(made, dim=1) == ref).sum())
                tf_hits += int((top[:, cut - 1:cut - 1 + horizon] == ref).sum())
                total += ref.numel()
    return hits / max(total, 1), tf_hits / max(total, 1)


# --- set-up ---------------------------------------------------------------------------------

def cpu_line() -> str:
    """The CPU model, its vector flags that matter here, cores, threads and the C kernels."""
    import torch

    from backlm.hardware import cpu_model
    from backlm.model import native

    flags = set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    wanted = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16")
    return (f"CPU: {cpu_model()} · {os.cpu_count()} cores · flags: "
            f"{' '.join(f for f in wanted if f in flags) or 'none of ' + ' '.join(wanted)} · "
            f"torch {torch.__version__}, {torch.get_num_threads()} threads · native kernels "
            f"{native.native_kernels()} · load average {os.getloadavg()[0]:.1f}")


def tokenizer():
    import sysconfig

    from backlm.tokenizer import Tokenizer

    root = Path(sysconfig.get_paths()["stdlib"])
    return Tokenizer.train([p.read_text(errors="ignore") for p in sorted(root.glob("*.py"))],
                           8192)


def rl_trainer(tok, args):
    """What the loop's one training step reads with the RL phase, for a fresh cpu-tiny model
    (seed 0) on one CPU rank."""
    import contextlib

    import torch

    from backlm.config import ModelConfig, RunConfig
    from backlm.direction import Direction
    from backlm.distributed import DistInfo
    from backlm.model.gpt import GPT
    from backlm.train.optim import build_optimizer
    from backlm.train.rl import PromptStream, RLPhase

    cfg = RunConfig()
    cfg.phase, cfg.data.direction = "rl", Direction.FORWARD
    cfg.model = ModelConfig(depth=4, head_dim=64, seq_len=256, vocab_size=tok.vocab_size)
    cfg.rl.group_size, cfg.rl.prompts_per_step = args.group, args.prompts
    cfg.rl.max_new_tokens = args.max_new
    torch.manual_seed(0)
    model = GPT(cfg.model)
    tr = SimpleNamespace(
        cfg=cfg, info=SimpleNamespace(model=model, tokenizer=tok), model=model, forward=model,
        opt=build_optimizer(model, cfg.optim), dist=DistInfo(), accum=args.prompts,
        device=torch.device("cpu"), autocast=contextlib.nullcontext, mfu=lambda _: 0.0,
        loaders=[PromptStream(cfg.train.seed, i, cfg.data.direction)
                 for i in range(args.prompts)],
        phase=RLPhase(cfg))
    return tr


class _State:
    def __init__(self) -> None:
        self.step, self.tokens = 0, 0

    def batch_seen(self, *_):
        pass


class _Callbacks:
    def on_step_start(self, *_):
        pass

    def on_after_backward(self, *_):
        pass


def rl_steps(tok, args, sampler) -> list[float]:
    """Seconds per RL optimizer step, ``args.steps`` steps from fresh weights."""
    from backlm.train import loop, rl

    tr, state, cbs = rl_trainer(tok, args), _State(), _Callbacks()
    kept, rl.sample_group = rl.sample_group, sampler
    try:
        times = []
        for _ in range(args.steps):
            t = time.perf_counter()
            loop._train_step(tr, state, cbs)
            times.append(time.perf_counter() - t)
            state.step += 1
        return times
    finally:
        rl.sample_group = kept


def sampling_alone(tok, args, sampler) -> tuple[float, list[list[list[int]]]]:
    """Seconds to sample one group for each of ``args.prompts`` prompts, and the samples."""
    import torch

    from backlm.direction import Direction
    from backlm.train import rl

    tr = rl_trainer(tok, args)
    out, t = [], time.perf_counter()
    for stream in tr.loaders:
        problem, order, seed = stream.next_prompt()
        prompt, stop = rl.prompt_for(tok, problem, Direction.FORWARD, order)
        with torch.no_grad():
            out.append(sampler(tr.model, prompt, args.group, args.max_new, 1.0, stop, seed))
    return time.perf_counter() - t, out


def greedy_eval(model, tok, args, sampler) -> tuple[float, list[list[int]]]:
    """Seconds for the held-out greedy answers of ``args.eval_prompts`` problems, one at a
    time as ``rl.evaluate_reward`` writes them (batch 1), and the answers."""
    from backlm.data import arith
    from backlm.direction import Direction
    from backlm.train import rl

    out, t = [], time.perf_counter()
    for problem in arith.problems(args.eval_prompts, rl.EVAL_SEED):
        prompt, stop = rl.prompt_for(tok, problem, Direction.FORWARD, Direction.FORWARD)
        out.append(sampler(model, prompt, 1, args.max_new, 0.0, stop, 0)[0])
    return time.perf_counter() - t, out


def gate_d(args):
    """Rows, teacher-forced argmax and the model for gate D at 5CAT's default shape."""
    import torch

    from backlm.config import ModelConfig
    from backlm.model.gpt import GPT

    torch.manual_seed(0)
    model = GPT(ModelConfig(depth=4, head_dim=64, seq_len=256, vocab_size=8192)).eval()
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 8192, (args.fivecat_rows, 128), generator=g)
    with torch.no_grad():
        top = model(x)[:, :-1].argmax(-1)
    return model, x, top


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=3, help="RL steps per variant per round")
    parser.add_argument("--group", type=int, default=8, help="rl.group_size")
    parser.add_argument("--prompts", type=int, default=4, help="rl.prompts_per_step")
    parser.add_argument("--max-new", type=int, default=32, help="rl.max_new_tokens")
    parser.add_argument("--eval-prompts", type=int, default=8, help="held-out greedy prompts")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--fivecat-rows", type=int, default=24, help="gate D rows (documents)")
    args = parser.parse_args()

    import torch

    from backlm.fivecat.gates import rollout_vs_teacher
    from backlm.train import rl

    if args.threads:
        torch.set_num_threads(args.threads)
    print(cpu_line(), flush=True)
    tok = tokenizer()
    policy = rl_trainer(tok, args).model.eval()
    new_sampler = rl.sample_group
    samplers = {"old": old_sample_group, "new": new_sampler}
    model, x, top = gate_d(args)
    rollouts = {"old": lambda: old_rollout(model, x, top, 2, 4),
                "new": lambda: rollout_vs_teacher(model, x, top, 2, 4, torch.no_grad)}
    res = {k: {"step": [], "sample": [], "eval": [], "rollout": []} for k in samplers}
    same_rollout = rollouts["old"]() == rollouts["new"]()  # also a warm-up
    same_samples = sampling_alone(tok, args, samplers["old"])[1] == sampling_alone(
        tok, args, samplers["new"])[1]
    same_eval = (greedy_eval(policy, tok, args, samplers["old"])[1]
                 == greedy_eval(policy, tok, args, samplers["new"])[1])
    for r in range(args.rounds):
        for name in (("old", "new") if r % 2 == 0 else ("new", "old")):
            res[name]["step"].append(statistics.median(rl_steps(tok, args, samplers[name])))
            res[name]["sample"].append(sampling_alone(tok, args, samplers[name])[0])
            res[name]["eval"].append(greedy_eval(policy, tok, args, samplers[name])[0])
            t = time.perf_counter()
            rollouts[name]()
            res[name]["rollout"].append(time.perf_counter() - t)
        print(f"round {r + 1}/{args.rounds} done", flush=True)

    def med(name, key):
        return statistics.median(res[name][key])

    rows = [("RL step (the one training step, RL phase)", "step"),
            (f"RL sampling: {args.prompts} prompts × {args.group} samples", "sample"),
            (f"RL held-out greedy answers: {args.eval_prompts} prompts", "eval"),
            (f"5CAT gate D rollouts ({args.fivecat_rows} rows × 128)", "rollout")]
    print(f"\nmedians over {args.rounds} rounds (old and new alternate) · group {args.group}, "
          f"{args.prompts} prompts, {args.max_new} new tokens, cpu-tiny shape fp32\n")
    print(f"| {'measure':<42} | {'old ms':>8} | {'new ms':>8} | {'new/old':>7} |")
    print(f"|{'-' * 44}|{'-' * 10}|{'-' * 10}|{'-' * 9}|")
    for label, key in rows:
        old, new = med("old", key) * 1e3, med("new", key) * 1e3
        print(f"| {label:<42} | {old:>8.1f} | {new:>8.1f} | {new / old:>7.2f} |")
    print(f"\ngate D figures identical old vs new: {same_rollout}; RL samples identical for the "
          f"same seeds: {same_samples}; greedy answers identical: {same_eval}")
    print(cpu_line())


if __name__ == "__main__":
    main()
