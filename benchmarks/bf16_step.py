"""The bf16 training step's own ceiling: its matmuls alone, at their real shapes, vs the step.

Usage::

    python benchmarks/bf16_step.py [--depths 4 6] [--rounds 3] [--head-dim 64] [--seq-len 512]
        [--batch 8] [--vocab 8192]

For each depth the script times, in alternated rounds (matmuls, step with the C kernels,
step with PyTorch ops, a bf16 peak sample, then again):

* **matmuls only**: every GEMM of one bf16 forward + backward at the model's shapes (q/k/v,
  attention output, MLP in and out, the head; each with its two backward GEMMs; attention as
  the full ``T × T`` batched matmuls that ``flops_per_token`` counts), with preallocated
  operands in the layouts the step uses. Model FLOPs over this time over the bf16 peak is the
  **matmul-only MFU**: the ceiling that no fusion of the rest of the step can pass;
* the Muon optimizer's Newton–Schulz matmuls (fp32 as used on CPU, and bf16 for comparison):
  optimizer work that the MFU does not count as model FLOPs;
* attention forward + backward on its own: SDPA (what bf16 training uses) and backlm's
  causal blocked attention, so the choice between them is measured at the real shape;
* the whole bf16 training step (forward + backward + optimizer) with backlm's C kernels on,
  on but as before this round's changes (SDPA attention, the autocast norms' separate cast,
  the head's gradients chunk by chunk), and off.

MFU = model FLOPs (``flops_per_token``) per second over the measured bf16 matmul peak (large
square matmuls, best sample). The machine may be shared: rounds alternate and the table gives
best and median.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def linear_gemms(torch, n: int, k: int, m: int, name: str):
    """Forward ``x @ w.T`` and backward ``g @ w``, ``g.T @ x`` of one linear layer."""
    bf = torch.bfloat16
    x, w, g = torch.randn(n, k).to(bf), torch.randn(m, k).to(bf), torch.randn(n, m).to(bf)
    y, gx, gw = torch.empty(n, m, dtype=bf), torch.empty(n, k, dtype=bf), torch.empty(m, k, dtype=bf)
    return [(f"{name} fwd [{n},{k}]·[{k},{m}]", 2 * n * k * m, lambda: torch.mm(x, w.t(), out=y)),
            (f"{name} bwd dx", 2 * n * k * m, lambda: torch.mm(g, w, out=gx)),
            (f"{name} bwd dw", 2 * n * k * m, lambda: torch.mm(g.t(), x, out=gw))]


def step_gemms(torch, cfg, batch: int):
    """(name, FLOPs, callable) for every GEMM of one forward + backward, per layer kinds × depth."""
    bf = torch.bfloat16
    N, C, T, D = batch * cfg.seq_len, cfg.model_dim, cfg.seq_len, cfg.head_dim
    nb = batch * cfg.n_heads
    inner = cfg.n_heads * D
    layer = (linear_gemms(torch, N, C, 3 * inner, "qkv") + linear_gemms(torch, N, inner, C, "attn proj")
             + linear_gemms(torch, N, C, 4 * C, "mlp fc") + linear_gemms(torch, N, 4 * C, C, "mlp proj"))
    q, k, v, go = (torch.randn(nb, T, D).to(bf) for _ in range(4))
    p, ds = torch.randn(nb, T, T).to(bf), torch.randn(nb, T, T).to(bf)
    s, o = torch.empty(nb, T, T, dtype=bf), torch.empty(nb, T, D, dtype=bf)
    f = 2 * nb * T * T * D
    layer += [("attn q·kᵀ (full T×T)", f, lambda: torch.bmm(q, k.transpose(1, 2), out=s)),
              ("attn p·v", f, lambda: torch.bmm(p, v, out=o)),
              ("attn bwd dv = pᵀ·do", f, lambda: torch.bmm(p.transpose(1, 2), go, out=o)),
              ("attn bwd dp = do·vᵀ", f, lambda: torch.bmm(go, v.transpose(1, 2), out=s)),
              ("attn bwd dq = ds·k", f, lambda: torch.bmm(ds, k, out=o)),
              ("attn bwd dk = dsᵀ·q", f, lambda: torch.bmm(ds.transpose(1, 2), q, out=o))]
    gemms = [(name, flops * cfg.depth, fn, cfg.depth) for name, flops, fn in layer]
    gemms += [(name, flops, fn, 1) for name, flops, fn in linear_gemms(torch, N, C, cfg.vocab_size, "head")]
    return gemms


def time_once(fn, reps: int) -> float:
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    return time.perf_counter() - t


def muon_shapes(cfg) -> list[tuple[int, int, int]]:
    """(batch, rows, cols) of the matrices Muon orthogonalises in one step."""
    C, inner = cfg.model_dim, cfg.n_heads * cfg.head_dim
    return [(3 * cfg.depth, inner, C), (cfg.depth, C, inner), (cfg.depth, 4 * C, C), (cfg.depth, C, 4 * C)]


def attention_fns(torch, cfg, batch: int):
    """Forward + backward of bf16 causal attention: SDPA and backlm's blocked attention."""
    import torch.nn.functional as F

    from backlm.model import attention

    shape = (batch, cfg.n_heads, cfg.seq_len, cfg.head_dim)
    q, k, v = (torch.randn(shape).to(torch.bfloat16).requires_grad_() for _ in range(3))
    g = torch.randn(shape).to(torch.bfloat16)

    def sdpa():
        F.scaled_dot_product_attention(q, k, v, is_causal=True).backward(g)

    def blocked(block: int):
        def run():
            old, attention.BF16_ATTENTION_BLOCK = attention.BF16_ATTENTION_BLOCK, block
            try:
                attention._CausalAttention.apply(q, k, v).backward(g)
            finally:
                attention.BF16_ATTENTION_BLOCK = old
        return run

    fns = {"SDPA (flash, causal)": sdpa}
    for block in sorted({128, 256, cfg.seq_len}):
        fns[f"backlm blocked, block {block}"] = blocked(block)
    return fns


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depths", type=int, nargs="+", default=[4, 6])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    args = parser.parse_args()

    import torch
    from rich.console import Console
    from rich.table import Table
    from train_throughput import PeakProbe, Run, _cpu_flags, bigram_batches

    from backlm.config import ModelConfig, OptimConfig
    from backlm.hardware import cpu_model, measure_matmul_peak
    from backlm.model import native
    from backlm.train.optim import orthogonalize

    torch.set_num_threads(args.threads)
    console = Console(width=max(Console().width, 150))  # no wrapped rows in a log file
    console.print(f"{cpu_model()}, {args.threads} threads; C kernels: {native.isa() or 'off/absent'}")
    console.print(f"CPU flags: {_cpu_flags()}")
    peak = measure_matmul_peak("bf16", (2048, 3072), seconds=2.0) / 1e9
    probe = PeakProbe(torch, dtype=torch.bfloat16)
    bf16_native = native.isa() is not None
    for depth in args.depths:
        cfg = ModelConfig(depth=depth, head_dim=args.head_dim, vocab_size=args.vocab,
                          seq_len=args.seq_len)
        tokens = args.batch * cfg.seq_len
        batches = bigram_batches(torch, args.vocab, args.batch, cfg.seq_len, 2, 0)
        runs = {"step, C kernels on": Run(torch, cfg, OptimConfig(), batches, "bf16", 0, native=True)}
        if bf16_native:
            runs["step, C kernels on, as before (SDPA, norm + cast, chunked head grads)"] = Before(
                Run(torch, cfg, OptimConfig(), batches, "bf16", 0, native=True))
            runs["step, PyTorch ops"] = Run(torch, cfg, OptimConfig(), batches, "bf16", 0, native=False)
        flops_step = runs["step, C kernels on"].model.flops_per_token() * tokens
        gemms = step_gemms(torch, cfg, args.batch)
        attn = attention_fns(torch, cfg, args.batch)
        muon = []
        for dtype in (torch.float32, torch.bfloat16):
            mats = [torch.randn(s).to(dtype) for s in muon_shapes(cfg)]
            muon.append((f"Muon Newton–Schulz ({'fp32' if dtype == torch.float32 else 'bf16'})",
                         lambda mats=mats: [orthogonalize(m) if m.dtype == torch.float32
                                            else _ns_bf16(m) for m in mats]))
        for run in runs.values():
            run.step()
        for _, _, fn, _ in gemms:
            fn()
        per_gemm = {name: [] for name, *_ in gemms}
        timings: dict[str, list[float]] = {"matmuls only": [], **{n: [] for n in runs},
                                           **{n: [] for n, _ in muon}, **{n: [] for n in attn}}
        for _ in range(args.rounds):
            total = 0.0
            for name, _, fn, reps in gemms:
                sec = time_once(fn, reps)
                per_gemm[name].append(sec)
                total += sec
            timings["matmuls only"].append(total)
            for name, run in runs.items():
                t = time.perf_counter()
                run.step()
                timings[name].append(time.perf_counter() - t)
                probe.sample()
            for name, fn in muon + list(attn.items()):
                timings[name].append(time_once(fn, 1))
        peak = max(peak, probe.best)
        title = (f"bf16 depth {depth} (width {cfg.model_dim}, {cfg.n_heads} heads × {cfg.head_dim}, "
                 f"seq {cfg.seq_len}, batch {args.batch}, vocab {cfg.vocab_size}): "
                 f"{flops_step / 1e9:.1f} GFLOP/step; bf16 peak {peak:.0f} GFLOP/s")
        table = Table(title=title)
        for col in ("part", "s best", "s median", "model MFU (best)", "model MFU (median)",
                    "C kernels on is ×faster (median of per-round ratios, range)"):
            table.add_column(col, justify="right")
        on = timings["step, C kernels on"]
        for name, ts in timings.items():
            best, med = min(ts), statistics.median(ts)
            mfu = name == "matmuls only" or name.startswith("step")
            # ratios within a round: both saw the same load, so they hold up on a busy machine
            ratios = [a / b for a, b in zip(ts, on, strict=True)]
            vs = (f"{statistics.median(ratios):.2f}× ({min(ratios):.2f}-{max(ratios):.2f})"
                  if name.startswith("step") and ts is not on else "")
            table.add_row(name, f"{best:.3f}", f"{med:.3f}",
                          f"{flops_step / best / 1e9 / peak:.1%}" if mfu else "",
                          f"{flops_step / med / 1e9 / peak:.1%}" if mfu else "", vs)
        console.print(table)
        detail = Table(title=f"depth {depth}: each GEMM (×layers), best of {args.rounds}")
        for col in ("GEMM", "ms best", "GFLOP/s", "of peak"):
            detail.add_column(col, justify="right")
        for name, flops, _, _ in gemms:
            sec = min(per_gemm[name])
            detail.add_row(name, f"{sec * 1e3:.1f}", f"{flops / sec / 1e9:.0f}",
                           f"{flops / sec / 1e9 / peak:.0%}")
        console.print(detail)
    console.print("command: python " + " ".join(sys.argv))


class Before:
    """A run stepped with the bf16 attention on SDPA, the autocast norms' separate cast and the
    head's gradients chunk by chunk: as before the one-block bf16 attention, the fused
    fp32 → bf16 norm and the loss's whole-batch head gradients (the fp32 head's gradient
    still skips the bf16 round trip: that is wiring in gpt.py, not a switch)."""

    def __init__(self, run):
        self.run, self.model = run, run.model

    def step(self) -> float:
        from backlm.model import attention, kernels

        saved = attention.BF16_BLOCKED, kernels.FUSED_NORM_CAST, kernels.HEAD_GRAD_SLAB_ELEMENTS
        attention.BF16_BLOCKED = kernels.FUSED_NORM_CAST = False
        kernels.HEAD_GRAD_SLAB_ELEMENTS = 0
        try:
            return self.run.step()
        finally:
            (attention.BF16_BLOCKED, kernels.FUSED_NORM_CAST,
             kernels.HEAD_GRAD_SLAB_ELEMENTS) = saved


def _ns_bf16(m):
    """Direct-form quintic Newton–Schulz in bf16 (as Muon does on GPU), for timing."""
    from backlm.train.optim import _newton_schulz

    x = m.mT if m.size(-2) > m.size(-1) else m
    x = x / (x.norm(dim=(-2, -1), keepdim=True) + 1e-7)
    return _newton_schulz(x, 5)


if __name__ == "__main__":
    main()
