"""Causal self-attention: blocked attention with saved probabilities for CPU training in fp32
(its softmax in the fused C kernels when built) and in bf16 while ``BF16_BLOCKED`` is set (only
with the C kernels: bf16 batched matmuls, softmax and its backward in the bf16 kernels,
probabilities kept in bf16), SDPA everywhere else."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from backlm.model import native

# Query rows per block of the CPU attention below. 64, 96 and 128 are within a few percent of
# each other and 1.2-1.4× faster than SDPA (benchmarks/attention.py, BENCHMARKS.md); smaller
# blocks skip more of the masked triangle but make the matmuls less efficient.
ATTENTION_BLOCK = 64
# bf16 training through the blocked attention (with the C kernels on), in blocks of
# BF16_ATTENTION_BLOCK query rows. PyTorch's bf16 batched matmuls copy strided operands on every
# call, and the blocks' q/k/v slices are strided: with 64-row blocks those copies made the
# blocked attention 2-3× slower than SDPA. One block of up to 512 rows takes whole contiguous
# tensors (no copies) and runs the full T×T products: 1.3-1.4× faster than SDPA's flash
# attention at seq 512 in paired runs at d4/d6 on a shared Zen4 (one d6 run had SDPA ahead;
# benchmarks/bf16_step.py re-measures both).
BF16_BLOCKED = True
BF16_ATTENTION_BLOCK = 512
# Past this many bytes of saved probabilities per layer, training attention falls back to SDPA,
# which keeps no T×T state.
ATTENTION_SAVED_BYTES = 256 * 2**20


def _query_blocks(T: int, block: int) -> list[tuple[int, int]]:
    """``(start, end)`` of each query block; block ``i`` sees keys ``[0, end)``."""
    return [(s0, min(T, s0 + block)) for s0 in range(0, T, block)]


class _CausalAttention(torch.autograd.Function):
    """Causal attention for CPU training: query blocks of ``ATTENTION_BLOCK`` rows.

    PyTorch's CPU flash attention runs its matmuls in small tiles: forward + backward reach
    under a fifth of the machine's matmul peak (benchmarks/attention.py). Here query block
    ``i`` attends to keys ``[0, end_i)`` with a few large batched matmuls, which skips most of
    the masked upper triangle, and keeps the block's probabilities for backward instead of
    recomputing them.
    """

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        B, H, T, D = q.shape
        n, scale = B * H, D**-0.5
        k, v = k.reshape(n, T, D), v.reshape(n, T, D)  # views when contiguous (the C path's q/k/v)
        # bf16 keeps its probabilities in bf16: the value matmul takes them in bf16 anyway, and
        # an fp32 copy would cost a pass and twice the memory
        bf16 = native.usable_bf16(k)
        fused = bf16 or native.usable(k)
        softmax = native.lib.causal_softmax_bf16 if bf16 else native.lib.causal_softmax if fused else None
        # the C softmax applies the 1/√D itself; otherwise it rides on q's copy
        qs = q.reshape(n, T, D) if fused else (q * scale).reshape(n, T, D)
        block = _block(q.dtype)
        out = torch.empty_like(qs) if block < T else None  # one block: the product is the output
        probs = []
        for s0, e in _query_blocks(T, block):
            p = torch.bmm(qs[:, s0:e], k[:, :e].transpose(1, 2))
            if fused:
                softmax(p.data_ptr(), n, e - s0, e, s0, scale, torch.get_num_threads())
            else:
                future = torch.ones(e - s0, e - s0, dtype=torch.bool, device=q.device).triu_(1)
                p[:, :, s0:e].masked_fill_(future, float("-inf"))
                torch.softmax(p, -1, out=p)
            if out is None:
                out = torch.bmm(p, v)
            else:
                out[:, s0:e] = torch.bmm(p, v[:, :e])
            probs.append(p)
        ctx.save_for_backward(qs, k, v, out, *probs)
        ctx.shape, ctx.block, ctx.native, ctx.bf16 = q.shape, block, fused, bf16
        return out.view(B, H, T, D)

    @staticmethod
    def backward(ctx, g: Tensor):
        qs, k, v, out, *probs = ctx.saved_tensors
        n, T, D = qs.shape
        scale = D**-0.5
        g = g.reshape(n, T, D).contiguous()
        # dS = P ∘ (dP − rowsum(dO ∘ O)): the softmax backward, with dP = dO·Vᵀ
        if ctx.bf16:  # rowdot in fp32; k and v gradients summed over query blocks in fp32
            rowdot = torch.empty(n, T, device=g.device)
            native.lib.rowdot_bf16(g.data_ptr(), out.data_ptr(), rowdot.data_ptr(), n * T, D,
                                   torch.get_num_threads())
            if len(probs) == 1:
                return _one_block_bf16_backward(ctx, g, qs, k, v, probs[0], rowdot)
            gk, gv = (torch.zeros(n, T, D, device=g.device) for _ in range(2))
            softmax_bwd = native.lib.softmax_bwd_bf16
        else:
            rowdot = torch.linalg.vecdot(g, out).unsqueeze(-1)
            gk, gv = torch.zeros_like(k), torch.zeros_like(v)
            softmax_bwd = native.lib.softmax_bwd if ctx.native else None
        gq = torch.empty_like(qs)
        for (s0, e), p in zip(_query_blocks(T, ctx.block), probs, strict=True):
            gi = g[:, s0:e]
            gv[:, :e] += torch.bmm(p.transpose(1, 2), gi)
            ds = torch.bmm(gi, v[:, :e].transpose(1, 2))
            if ctx.native:  # ds also takes the 1/√D here, so q was saved unscaled
                softmax_bwd(ds.data_ptr(), p.data_ptr(), rowdot.data_ptr(), n, e - s0, e, s0, T,
                            scale, torch.get_num_threads())
            else:
                ds.sub_(rowdot[:, s0:e]).mul_(p)
            gq[:, s0:e] = torch.bmm(ds, k[:, :e])
            gk[:, :e] += torch.bmm(ds.transpose(1, 2), qs[:, s0:e])
        if not ctx.native:
            gq.mul_(scale)
        if ctx.bf16:
            gk, gv = gk.to(qs.dtype), gv.to(qs.dtype)
        return gq.view(ctx.shape), gk.view(ctx.shape), gv.view(ctx.shape)


def _one_block_bf16_backward(ctx, g, qs, k, v, p, rowdot):
    """Backward of bf16 attention computed as one block: whole contiguous operands, every
    gradient one bf16 batched matmul (fp32 accumulation inside), no partial sums to add."""
    n, T, D = qs.shape
    gv = torch.bmm(p.transpose(1, 2), g)
    ds = torch.bmm(g, v.transpose(1, 2))
    native.lib.softmax_bwd_bf16(ds.data_ptr(), p.data_ptr(), rowdot.data_ptr(), n, T, T, 0, T,
                                D**-0.5, torch.get_num_threads())
    gq, gk = torch.bmm(ds, k), torch.bmm(ds.transpose(1, 2), qs)
    return gq.view(ctx.shape), gk.view(ctx.shape), gv.view(ctx.shape)


def _block(dtype: torch.dtype) -> int:
    return ATTENTION_BLOCK if dtype == torch.float32 else BF16_ATTENTION_BLOCK


def _saved_probability_bytes(q: Tensor) -> int:
    B, H, T, _ = q.shape
    kept = sum((e - s0) * e for s0, e in _query_blocks(T, _block(q.dtype)))
    return B * H * kept * q.element_size()


def causal_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Causal self-attention of ``(B, H, T, D)`` tensors.

    fp32 CPU training takes :class:`_CausalAttention` (forward + backward 1.2-1.4× faster
    than SDPA on 2 cores) while its saved state stays under ``ATTENTION_SAVED_BYTES``, and so
    does bf16 CPU training with the C kernels on while ``BF16_BLOCKED`` is set; everything else
    (GPU, other dtypes, inference, ``torch.compile``) uses SDPA.
    """
    train = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
    blocked = q.dtype == torch.float32 or (q.dtype == torch.bfloat16 and BF16_BLOCKED
                                          and native.isa() is not None)
    # under torch.compile, inductor gets SDPA, which it knows how to lower
    if (train and q.device.type == "cpu" and blocked
            and not torch.compiler.is_compiling()
            and _saved_probability_bytes(q) <= ATTENTION_SAVED_BYTES):
        with torch.autocast("cpu", enabled=False):
            return _CausalAttention.apply(q, k, v)
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)
