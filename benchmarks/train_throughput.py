"""Training throughput on CPU: tokens/s and MFU, fp32 against bf16 autocast.

Usage::

    python benchmarks/train_throughput.py [--depth 4] [--head-dim 64] [--seq-len 512]
        [--batch 8] [--vocab 8192] [--steps 10] [--dtype fp32|bf16|both] [--native on|off|both]
        [--compile] [--profile]

One process: (1) one full training step straight away, to time start → first step of the
bare model (`benchmarks/first_step.py` times the whole `backlm train` command);
(2) this machine's matmul peak (large square fp32 matmuls, bf16 too when asked); (3) timed
training steps (forward + backward + Muon/AdamW step) for each variant from the same seed, on
a fixed pool of batches drawn from a random sparse bigram chain, so the loss really falls
and fp32 and bf16 end losses can be compared. MFU = model FLOPs (``flops_per_token``, which
counts forward + backward) per second over the measured peak of the variant's own dtype (fp32
or bf16 matmuls). Each dtype runs twice when backlm's fused C kernels are built: with them
(what training uses) and with PyTorch ops only (``--native``); the variants take turns step
by step so that the machine's drift hits all of them. ``--profile`` profiles the first
variant's step (``--dtype bf16 --native on``: a bf16 step with the C kernels) and splits its
time into GEMMs, SDPA, copies/casts, fills, backlm's fused functions and the rest.

Targets: fp32 MFU ≥ 60 %; bf16 MFU ≥ 70 % of the bf16 peak; bf16 ≥ 1.4× fp32 tokens/s on
CPUs with native bf16 (AMX or AVX512-BF16); < 15 s from command to first step. The machine may be shared, so timings
are medians and bests of several steps, the peak is also sampled between steps, and MFU
compares the best step with the best peak (the least disturbed moments of each); the median
step against the same peak is printed beside it as the conservative figure.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time


def bigram_batches(torch, vocab: int, batch: int, seq_len: int, count: int, seed: int):
    """``count`` (inputs, targets) pairs from a chain where each token has 4 successors."""
    g = torch.Generator().manual_seed(seed)
    succ = torch.randint(0, vocab, (vocab, 4), generator=g)
    out = []
    for _ in range(count):
        ids = torch.empty(batch, seq_len + 1, dtype=torch.long)
        ids[:, 0] = torch.randint(0, vocab, (batch,), generator=g)
        choice = torch.randint(0, 4, (batch, seq_len), generator=g)
        for t in range(seq_len):
            ids[:, t + 1] = succ[ids[:, t], choice[:, t]]
        out.append((ids[:, :-1].contiguous(), ids[:, 1:].contiguous()))
    return out


class Run:
    """A model + optimizer from a fixed seed, stepping through the batch pool."""

    def __init__(self, torch, mcfg, ocfg, batches, dtype: str, seed: int, compile: bool = False,
                 native: bool = True):
        from backlm.model.gpt import GPT
        from backlm.model.native import set_native
        from backlm.train.optim import build_optimizer

        torch.manual_seed(seed)
        self.torch, self.batches, self.dtype, self.i = torch, batches, dtype, 0
        self.native, self.set_native = native, set_native
        self.model = GPT(mcfg)
        self.forward = torch.compile(self.model) if compile else self.model
        self.opt = build_optimizer(self.model, ocfg)

    def step(self) -> float:
        """One optimizer step; returns the loss."""
        torch = self.torch
        self.set_native(self.native)
        x, y = self.batches[self.i % len(self.batches)]
        self.i += 1
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.dtype == "bf16"):
            loss = self.forward(x, y)
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return float(loss.detach())


class PeakProbe:
    """Samples a matmul peak (fp32 or bf16) between training steps.

    The machine may be shared: a peak measured at one moment and steps timed at another can
    see different load. Sampling both throughout and taking the best of each compares like
    with like (both are the least-disturbed moments of the run).
    """

    def __init__(self, torch, n: int = 3072, dtype=None):
        self.torch, self.n = torch, n
        dtype = dtype or torch.float32
        self.a, self.b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
        self.c = torch.empty(n, n, dtype=dtype)
        self.best = 0.0

    def sample(self) -> float:
        """One timed matmul; returns the best GFLOP/s seen so far."""
        t = time.perf_counter()
        self.torch.mm(self.a, self.b, out=self.c)
        self.best = max(self.best, 2 * self.n**3 / (time.perf_counter() - t) / 1e9)
        return self.best


def time_steps(runs: dict[str, Run], warmup: dict[str, int], steps: int,
               probes: list[PeakProbe]) -> dict[str, tuple[list[float], float]]:
    """Per-step seconds of ``steps`` steps after each run's warmup, and each final loss.

    The runs take turns step by step, so a change in the machine's load hits all of them.
    """
    for name, run in runs.items():
        for _ in range(warmup[name]):
            run.step()
    times: dict[str, list[float]] = {name: [] for name in runs}
    losses = dict.fromkeys(runs, float("nan"))
    for _ in range(steps):
        for name, run in runs.items():
            t = time.perf_counter()
            losses[name] = run.step()
            times[name].append(time.perf_counter() - t)
            for probe in probes:
                probe.sample()
    return {name: (times[name], losses[name]) for name in runs}


GEMM_OPS = {"aten::mm", "aten::addmm", "aten::addmm_", "aten::bmm", "aten::baddbmm", "aten::baddbmm_"}
COPY_OPS = {"aten::copy_", "aten::_to_copy", "aten::to", "aten::clone", "aten::contiguous"}
FILL_OPS = {"aten::fill_", "aten::zero_", "aten::zeros", "aten::zeros_like"}
# backlm's autograd Functions: their own time is the fused C kernels (or their PyTorch ops)
FUSED = {"_Norm", "_QKV", "_MLP", "_SoftcapLoss", "_CausalAttention"}


def profile_step(run: Run, flops_step: float, peak: float) -> None:
    """Profile one step of ``run``: top ops, then the time split into GEMMs and the rest.

    The split bounds what elementwise work costs: with the non-GEMM time at zero and the GEMMs
    as fast as now, MFU would be ``flops_step / gemm_time / peak``.
    """
    from rich.console import Console
    from rich.table import Table
    from torch.profiler import profile

    with profile(record_shapes=True) as prof:
        run.step()
    events = prof.key_averages(group_by_input_shape=True)
    print(events.table(sort_by="self_cpu_time_total", row_limit=25, max_name_column_width=40,
                       max_shapes_column_width=60))
    total = sum(e.self_cpu_time_total for e in events) / 1e6
    gemm = sum(e.self_cpu_time_total for e in events if e.key in GEMM_OPS) / 1e6
    flash = sum(e.self_cpu_time_total for e in events if "flash_attention" in e.key) / 1e6
    copies = sum(e.self_cpu_time_total for e in events if e.key in COPY_OPS) / 1e6
    fills = sum(e.self_cpu_time_total for e in events if e.key in FILL_OPS) / 1e6
    fused = sum(e.self_cpu_time_total for e in events
                if e.key.removesuffix("Backward") in FUSED) / 1e6
    rest = total - gemm - flash - copies - fills - fused
    table = Table(title=f"profiled {run.dtype} step, C kernels {'on' if run.native else 'off'} "
                        "(profiler overhead included): where the time goes")
    for col in ("part", "seconds", "share", "MFU if only this part took time"):
        table.add_column(col, justify="right")
    for name, sec in (("GEMMs (model, attention blocks, Muon)", gemm), ("SDPA flash attention", flash),
                      ("copies and dtype casts (aten::copy_ ...)", copies),
                      ("fills (zeros)", fills),
                      ("backlm's fused functions' own time (C kernels)", fused),
                      ("everything else (elementwise, optimizer, reductions)", rest),
                      ("whole step", total)):
        if sec > 0:
            table.add_row(name, f"{sec:.3f}", f"{sec / total:.0%}", f"{flops_step / sec / 1e9 / peak:.0%}")
    Console(width=max(Console().width, 150)).print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per dtype")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--dtype", choices=["fp32", "bf16", "both"], default="both")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the model (the first step then includes compiling)")
    parser.add_argument("--profile", action="store_true",
                        help="print an op profile of the first variant's step and its time split")
    parser.add_argument("--native", choices=["on", "off", "both"], default="both",
                        help="with backlm's fused C kernels, with PyTorch ops only, or both side "
                             "by side (default; 'on' alone when the kernels are not built)")
    args = parser.parse_args()

    import torch

    from backlm.config import ModelConfig, OptimConfig
    from backlm.hardware import measure_matmul_peak, process_start
    from backlm.model.native import native_kernels

    torch.set_num_threads(args.threads)
    mcfg = ModelConfig(depth=args.depth, head_dim=args.head_dim, vocab_size=args.vocab, seq_len=args.seq_len)
    ocfg = OptimConfig()
    isa = native_kernels()
    # variant name -> (dtype, fused C kernels on)
    variants: dict[str, tuple[str, bool]] = {}
    for dtype in ("fp32", "bf16"):
        if args.dtype not in (dtype, "both"):
            continue
        if isa and args.native in ("on", "both"):
            variants[dtype] = (dtype, True)
        if not isa or args.native in ("off", "both"):
            variants[f"{dtype} (torch ops)" if isa else dtype] = (dtype, False)
    names = list(variants)
    batches = bigram_batches(torch, args.vocab, args.batch, args.seq_len, 4, args.seed)

    # (1) what a user waits for: interpreter + imports + model + first step
    def make(name: str) -> Run:
        dtype, native = variants[name]
        return Run(torch, mcfg, ocfg, batches, dtype, args.seed, args.compile, native)

    runs = {names[0]: make(names[0])}
    runs[names[0]].step()
    first_step_s = time.time() - process_start()  # backlm's own clock for `backlm train` too
    runs.update({name: make(name) for name in names[1:]})

    # (2) the machine's peak
    # the same measurement as the progress bar's MFU, over larger sizes and longer; GFLOP/s
    peak = {"fp32": measure_matmul_peak("fp32", (2048, 3072, 4096), seconds=3.0) / 1e9}
    bf16_runs = any(dtype == "bf16" for dtype, _ in variants.values())
    if bf16_runs:
        peak["bf16"] = measure_matmul_peak("bf16", (2048, 3072), seconds=2.0) / 1e9

    # (3) timed training steps, same seed and batches for every variant, taking turns
    tokens = args.batch * args.seq_len
    model = runs[names[0]].model
    flops_tok = model.flops_per_token()
    probes = {"fp32": PeakProbe(torch)}
    if bf16_runs:
        probes["bf16"] = PeakProbe(torch, dtype=torch.bfloat16)
    # the first variant's first step already ran
    warmup = {name: max(args.warmup - (name == names[0]), 0) for name in names}
    results = {name: dict(median=statistics.median(times), best=min(times), loss=loss,
                          dtype=variants[name][0])
               for name, (times, loss) in time_steps(runs, warmup, args.steps,
                                                     list(probes.values())).items()}
    for dtype, probe in probes.items():
        peak[dtype] = max(peak[dtype], probe.best)

    report(args, mcfg, model, flops_tok, tokens, peak, results, first_step_s, names, isa)
    if args.profile:
        first = runs[names[0]]
        profile_step(first, flops_tok * tokens, peak[first.dtype])


def report(args, mcfg, model, flops_tok, tokens, peak, results, first_step_s, names, isa) -> None:
    """Print the rich tables: setup, per-variant throughput, and the targets."""
    from rich.console import Console
    from rich.table import Table

    from backlm.hardware import cpu_has_native_bf16, cpu_model

    console = Console(width=max(Console().width, 150))  # no wrapped rows in a log file
    console.print(
        f"GPT depth {mcfg.depth}, width {mcfg.model_dim}, {mcfg.n_heads} heads × {mcfg.head_dim}, "
        f"vocab {mcfg.vocab_size}, seq {mcfg.seq_len}, batch {args.batch} ({tokens} tokens/step); "
        f"{model.num_params() / 1e6:.2f} M params, {flops_tok / 1e6:.1f} MFLOP/token (fwd+bwd); "
        f"{cpu_model()}, {args.threads} threads; native bf16: "
        f"{'yes' if cpu_has_native_bf16() else 'no'}; "
        f"fused C kernels: {isa or 'not built'}"
    )
    peaks = ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in peak.items())
    console.print(f"matmul peak (best of large square mm, sampled throughout): {peaks}")
    noisy = [name for name in names if results[name]["median"] > 1.25 * results[name]["best"]]
    if noisy:
        console.print(f"[yellow]step times vary > 25 % ({', '.join(noisy)}): the machine is busy; "
                      "MFU uses the best step against the best peak[/]")
    compiled = ", torch.compile" if args.compile else ""
    table = Table(title=f"training step: forward + backward + optimizer, {args.steps} timed steps{compiled}")
    for col in ("variant", "step s (median)", "tokens/s (median)", "tokens/s (best)",
                "GFLOP/s (best)", "MFU: best step (own dtype's peak)", "MFU: median step",
                f"loss after {args.warmup + args.steps} steps"):
        table.add_column(col, justify="right")
    for name in names:
        r = results[name]
        gflops = flops_tok * tokens / r["best"] / 1e9
        own_peak = peak[r["dtype"]]
        median_mfu = flops_tok * tokens / r["median"] / 1e9 / own_peak
        table.add_row(name, f"{r['median']:.3f}", f"{tokens / r['median']:,.0f}", f"{tokens / r['best']:,.0f}",
                      f"{gflops:.1f}", f"{gflops / own_peak:.1%}", f"{median_mfu:.1%}",
                      f"{r['loss']:.4f}")
    console.print(table)
    targets = Table(title="targets")
    for col in ("target", "measured", "met"):
        targets.add_column(col)
    if "fp32" in results:
        mfu = flops_tok * tokens / results["fp32"]["best"] / 1e9 / peak["fp32"]
        targets.add_row("fp32 MFU ≥ 60 % (best step vs best peak)", f"{mfu:.1%}", _mark(mfu >= 0.6))
    if "fp32 (torch ops)" in results and "fp32" in results:
        speedup = results["fp32 (torch ops)"]["median"] / results["fp32"]["median"]
        targets.add_row("fused C kernels vs PyTorch ops (fp32 median step)", f"{speedup:.2f}×", "")
    if "bf16" in results and cpu_has_native_bf16():
        mfu = flops_tok * tokens / results["bf16"]["best"] / 1e9 / peak["bf16"]
        targets.add_row("bf16 MFU ≥ 70 % of the bf16 peak (best step vs best peak)", f"{mfu:.1%}",
                        _mark(mfu >= 0.7))
    if "bf16 (torch ops)" in results and "bf16" in results:
        speedup = results["bf16 (torch ops)"]["median"] / results["bf16"]["median"]
        targets.add_row("fused C kernels vs PyTorch ops (bf16 median step)", f"{speedup:.2f}×", "")
    if "fp32" in results and "bf16" in results:
        ratio = results["fp32"]["median"] / results["bf16"]["median"]
        note = "" if cpu_has_native_bf16() else " (no native bf16 here: not applicable)"
        targets.add_row("bf16 ≥ 1.4× fp32 tokens/s", f"{ratio:.2f}×{note}", _mark(ratio >= 1.4))
        dl = results["bf16"]["loss"] - results["fp32"]["loss"]
        targets.add_row("bf16 loss ≈ fp32 loss", f"{dl:+.4f}", _mark(abs(dl) < 0.05))
    # the bare model here; benchmarks/first_step.py times the whole `backlm train` command
    targets.add_row("< 15 s start → first step (bare model)", f"{first_step_s:.1f} s", _mark(first_step_s < 15))
    console.print(targets)
    if "bf16" in results:
        console.print("the bf16 step's own ceiling (its matmuls alone at these shapes) and the "
                      "step before/after this round's bf16 changes: python benchmarks/bf16_step.py")
    console.print(f"CPU flags: {_cpu_flags()}")
    console.print("command: python " + " ".join(sys.argv))


def _cpu_flags() -> str:
    """The SIMD flags of /proc/cpuinfo that matter to the kernels and matmuls."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return "unknown"
    keep = [f for f in flags if f.startswith(("avx", "amx", "fma"))]
    return " ".join(keep) or "none of avx/amx/fma"

def _mark(ok: bool) -> str:
    return "[green]yes[/]" if ok else "[red]no[/]"


if __name__ == "__main__":
    main()
