"""backlm's fused C kernels against the PyTorch ops they replace, op by op, side by side.

Usage::

    python benchmarks/native_kernels.py [--batch 8] [--seq-len 512] [--depth 4] [--head-dim 64]
        [--vocab 8192] [--reps 10]

Times forward + backward of each function in ``backlm.model.kernels`` at the training benchmark's
shapes (one layer's worth; the loss over the whole batch), with the C kernels on and off,
alternating round by round so machine load hits both alike, and prints the median and best
round of each with the speed-up. Each function still runs its matmuls through PyTorch: the
difference is the elementwise work between them. On a CPU with native bf16 every function
also runs on bf16 tensors (what bf16 autocast training hands them): the bf16 C kernels
against the PyTorch bf16 ops (SDPA for attention). ``--isa`` picks the kernels' copy
(``generic`` is the portable fallback).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--isa", default=None,
                        help="the kernels' copy: avx512bf16, avx512, avx2 or generic (default: "
                             "the best this CPU runs)")
    parser.add_argument("--only", choices=["fp32", "bf16", "both"], default="both")
    args = parser.parse_args()

    import torch
    from rich.console import Console
    from rich.table import Table

    from backlm.model import attention, kernels, native

    if not native.native_kernels():
        raise SystemExit("backlm's C kernels are not built (or BACKLM_NATIVE=0): nothing to compare")
    torch.set_num_threads(args.threads)
    if args.isa:
        native.set_isa(args.isa)
    B, T, D = args.batch, args.seq_len, args.head_dim
    C = 64 * args.depth
    H = C // D
    g = torch.Generator().manual_seed(0)

    def randn(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).requires_grad_(True)

    cos, sin = kernels.rotary_tables(T, D, 10000.0)
    x, xn = randn(B * T, C), randn(B, T, C)
    w_qkv, fc, proj = randn(3 * C, C, scale=C**-0.5), randn(4 * C, C, scale=C**-0.5), randn(C, 4 * C, scale=0.02)
    head = randn(args.vocab, C, scale=0.02)
    targets = torch.randint(0, args.vocab, (B * T,), generator=g)
    q, k, v = (randn(B, H, T, D) for _ in range(3))
    x16, head16 = (t.detach().bfloat16().requires_grad_(True) for t in (x, head))
    xn16, w16, fc16, proj16 = (t.detach().bfloat16().requires_grad_(True)
                               for t in (xn, w_qkv, fc, proj))
    q16, k16, v16 = (t.detach().bfloat16().requires_grad_(True) for t in (q, k, v))
    cos16, sin16 = cos.bfloat16(), sin.bfloat16()

    def summed(outs):
        # a scalar that depends on every output, so backward touches them all
        outs = outs if isinstance(outs, tuple) else (outs,)
        return sum(o.float().mean() for o in outs)

    cases = {} if args.only == "bf16" else {
        "RMS norm (B, T, C)": lambda: summed(kernels.norm(xn)),
        "q/k/v projection + QK norm + rotary": lambda: summed(kernels.qkv_rotary_norm(x, w_qkv, cos, sin, B, H)),
        "causal attention (blocked)": lambda: summed(attention.causal_attention(q, k, v)),
        "ReLU² MLP": lambda: summed(kernels.mlp(x, fc, proj)),
        f"softcapped loss over {B * T} × {args.vocab} logits": lambda: kernels.softcap_loss(x, head, targets, 15.0),
    }
    from backlm.hardware import cpu_has_native_bf16, cpu_model

    if cpu_has_native_bf16() and args.only != "fp32":
        # what a bf16 autocast run hands each function. Without native bf16 the emulated
        # matmuls take ~20 s a round here, and drown the difference.
        cases.update({
            "bf16 RMS norm (B, T, C)": lambda: summed(kernels.norm(xn16)),
            "autocast RMS norm, fp32 in → bf16 out (off: fp32 norm + cast)":
                lambda: summed(kernels.norm(xn, torch.bfloat16)),
            "bf16 q/k/v projection + QK norm + rotary":
                lambda: summed(kernels.qkv_rotary_norm(x16, w16, cos16, sin16, B, H)),
            f"bf16 causal attention, blocks of {attention.BF16_ATTENTION_BLOCK} (off: SDPA)":
                lambda: summed(attention.causal_attention(q16, k16, v16)),
            "bf16 ReLU² MLP": lambda: summed(kernels.mlp(x16, fc16, proj16)),
            "bf16 softcapped loss": lambda: kernels.softcap_loss(x16, head16, targets, 15.0),
        })
    times = {(name, on): [] for name in cases for on in (True, False)}
    for _ in range(args.reps):
        for name, fn in cases.items():
            for on in (True, False):
                native.set_native(on)
                t = time.perf_counter()
                fn().backward()
                times[name, on].append(time.perf_counter() - t)
    native.set_native(True)

    table = Table(title=f"{cpu_model()} (native bf16: {'yes' if cpu_has_native_bf16() else 'no'}): "
                        f"forward + backward, {args.reps} alternating rounds, {args.threads} "
                        f"threads, C kernels: {native.isa()}")
    for col in ("function", "PyTorch ops ms (median)", "C kernels ms (median)",
                "speed-up (median)", "PyTorch ops ms (best)", "C kernels ms (best)",
                "speed-up (best)"):
        table.add_column(col, justify="right")
    for name in cases:
        slow, fast = times[name, False], times[name, True]
        ms, mf = statistics.median(slow), statistics.median(fast)
        bs, bf = min(slow), min(fast)
        table.add_row(name, f"{ms * 1e3:.1f}", f"{mf * 1e3:.1f}", f"{ms / mf:.2f}×",
                      f"{bs * 1e3:.1f}", f"{bf * 1e3:.1f}", f"{bs / bf:.2f}×")
    console = Console(width=max(Console().width, 150))  # no wrapped rows in a log file
    console.print(table)
    console.print(f"CPU flags: {cpu_flags()}")
    console.print("command: python " + " ".join(sys.argv))


def cpu_flags() -> str:
    """The SIMD flags of /proc/cpuinfo that matter to the kernels."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return "unknown"
    return " ".join(f for f in flags if f.startswith(("avx", "amx", "fma"))) or "no avx/amx/fma"


if __name__ == "__main__":
    main()
