"""CPU training attention: PyTorch's SDPA against backlm's blocked kernel, side by side.

Usage::

    python benchmarks/attention.py [--batch 8] [--heads 4] [--seq-len 512] [--head-dim 64]
        [--blocks 64,128,192] [--reps 8]

Times forward and backward of causal attention on q, k, v laid out as the model hands them
over (transposed views of one ``(B, T, 3, H, D)`` buffer, or contiguous tensors when backlm's C
kernels are built and produce them), for SDPA and for
``backlm.model.attention.causal_attention`` at each query-block size (and, when backlm's C kernels are
built, the first size with PyTorch's softmax instead of theirs), interleaved round by round so
machine load hits every variant alike; reports the best round of each and checks that
outputs and gradients agree with SDPA. FLOP/s counts the causal half of the 4·B·H·T²·D
forward (and twice that backward) matmul FLOPs.
"""

from __future__ import annotations

import argparse
import os
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--blocks", default="64,128,192")
    parser.add_argument("--reps", type=int, default=8)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    args = parser.parse_args()

    import torch
    import torch.nn.functional as F
    from rich.console import Console
    from rich.table import Table

    from backlm.model import attention, native

    torch.set_num_threads(args.threads)
    B, H, T, D = args.batch, args.heads, args.seq_len, args.head_dim
    g = torch.Generator().manual_seed(0)
    buf = torch.randn(B, T, 3, H, D, generator=g)
    grad_out = torch.randn(B, H, T, D, generator=g)

    def sdpa(q, k, v):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)

    def blocked(size, use_native=True):
        def run(q, k, v):
            attention.ATTENTION_BLOCK = size
            native.set_native(use_native)
            return attention.causal_attention(q, k, v)
        return run

    variants = {"SDPA": sdpa}
    variants.update({f"blocked {b}": blocked(int(b)) for b in args.blocks.split(",")})
    contiguous = set()
    if native.native_kernels():
        # with the C kernels q, k, v arrive contiguous; without them, as transposed views
        contiguous = {fn for name, fn in variants.items() if name != "SDPA"}
        first = int(args.blocks.split(",")[0])
        variants[f"blocked {first}, PyTorch ops"] = blocked(first, use_native=False)
    attention.ATTENTION_SAVED_BYTES = 2**62  # measure the kernel whatever its memory

    def once(fn):
        leaf = buf.clone().requires_grad_(True)
        q, k, v = (leaf[:, :, i].transpose(1, 2) for i in range(3))
        if fn in contiguous:  # the C q/k/v kernel hands attention contiguous tensors
            q, k, v = (t.detach().contiguous().requires_grad_(True) for t in (q, k, v))
        t0 = time.perf_counter()
        out = fn(q, k, v)
        t1 = time.perf_counter()
        out.backward(grad_out)
        elapsed = time.perf_counter() - t1
        grad = leaf.grad if fn not in contiguous else torch.stack(
            [t.grad.transpose(1, 2) for t in (q, k, v)], 2)  # as (B, T, 3, H, D)
        return t1 - t0, elapsed, out.detach(), grad

    _, _, ref_out, ref_grad = once(sdpa)
    best = {name: [float("inf"), float("inf")] for name in variants}
    errors = {}
    for _ in range(args.reps):
        for name, fn in variants.items():
            fwd, bwd, out, grad = once(fn)
            best[name] = [min(best[name][0], fwd), min(best[name][1], bwd)]
            errors[name] = max(float((out - ref_out).abs().max()), float((grad - ref_grad).abs().max()))

    causal_fwd = 2 * B * H * T * T * D  # two matmuls, half of each score matrix
    table = Table(title=f"causal attention B={B} H={H} T={T} D={D} (blocked N: N query rows per block), "
                        f"{args.threads} threads, best of {args.reps} interleaved rounds")
    for col in ("variant", "forward ms", "backward ms", "total ms", "vs SDPA", "GFLOP/s", "max |diff|"):
        table.add_column(col, justify="right")
    base = sum(best["SDPA"])
    for name, (fwd, bwd) in best.items():
        total = fwd + bwd
        table.add_row(name, f"{fwd * 1e3:.1f}", f"{bwd * 1e3:.1f}", f"{total * 1e3:.1f}",
                      f"{base / total:.2f}×", f"{3 * causal_fwd / total / 1e9:.0f}", f"{errors[name]:.1e}")
    Console().print(table)


if __name__ == "__main__":
    main()
