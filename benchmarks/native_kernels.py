"""backlm's fused C kernels against the PyTorch ops they replace, op by op, side by side.

Usage::

    python benchmarks/native_kernels.py [--batch 8] [--seq-len 512] [--depth 4] [--head-dim 64]
        [--vocab 8192] [--reps 10]

Times forward + backward of each function in ``backlm.model.kernels`` at the training benchmark's
shapes (one layer's worth; the loss over the whole batch), with the C kernels on and off,
alternating round by round so machine load hits both alike, and prints the best round of
each with the speed-up. Each function still runs its matmuls through PyTorch: the difference
is the elementwise work between them.
"""

from __future__ import annotations

import argparse
import os
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
    args = parser.parse_args()

    import torch
    from rich.console import Console
    from rich.table import Table

    from backlm.model import attention, kernels, native

    if not native.native_kernels():
        raise SystemExit("backlm's C kernels are not built (or BACKLM_NATIVE=0): nothing to compare")
    torch.set_num_threads(args.threads)
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

    def summed(outs):
        # a scalar that depends on every output, so backward touches them all
        outs = outs if isinstance(outs, tuple) else (outs,)
        return sum(o.float().mean() for o in outs)

    cases = {
        "RMS norm (B, T, C)": lambda: summed(kernels.norm(xn)),
        "q/k/v projection + QK norm + rotary": lambda: summed(kernels.qkv_rotary_norm(x, w_qkv, cos, sin, B, H)),
        "causal attention (blocked)": lambda: summed(attention.causal_attention(q, k, v)),
        "ReLU² MLP": lambda: summed(kernels.mlp(x, fc, proj)),
        f"softcapped loss over {B * T} × {args.vocab} logits": lambda: kernels.softcap_loss(x, head, targets, 15.0),
    }
    from backlm.hardware import cpu_has_native_bf16, cpu_model

    if cpu_has_native_bf16():
        # what a bf16 autocast run hands the loss: bf16 matmuls, fp32 logits per chunk. Without
        # native bf16 its emulated matmuls take ~20 s a round here, and drown the difference.
        cases["the same loss, bf16 inputs"] = lambda: kernels.softcap_loss(x16, head16, targets, 15.0)
    best = {(name, on): float("inf") for name in cases for on in (True, False)}
    for _ in range(args.reps):
        for name, fn in cases.items():
            for on in (True, False):
                native.set_native(on)
                t = time.perf_counter()
                fn().backward()
                best[name, on] = min(best[name, on], time.perf_counter() - t)
    native.set_native(True)

    table = Table(title=f"{cpu_model()} (native bf16: {'yes' if cpu_has_native_bf16() else 'no'}): "
                        f"forward + backward, best of {args.reps} alternating rounds, {args.threads} "
                        f"threads, C kernels: {native.native_kernels()}")
    for col in ("function", "PyTorch ops ms", "C kernels ms", "saved ms", "speed-up"):
        table.add_column(col, justify="right")
    for name in cases:
        slow, fast = best[name, False], best[name, True]
        table.add_row(name, f"{slow * 1e3:.1f}", f"{fast * 1e3:.1f}", f"{(slow - fast) * 1e3:.1f}",
                      f"{slow / fast:.2f}×")
    Console().print(table)


if __name__ == "__main__":
    main()
