"""Hand-written autograd functions for the GPT's memory-bound parts.

On a CPU the matmuls run near the machine's peak and the rest is bound by memory bandwidth, so
RMS norm, the fused q/k/v projection with QK norm and rotary, the ReLU² MLP and the softcapped
loss have hand-written backward passes that make as few passes over memory as possible; the
loss never materialises the ``(B·T, vocab)`` logits. Tests check them against plain autograd.

For fp32 on CPU the elementwise work between the matmuls runs in fused C kernels
(``backlm/model/_native.c``, built at install when a C compiler with OpenMP is present): one
pass per op where PyTorch's ops take several; a training step is 1.11-1.16× faster
(BENCHMARKS.md). bf16 CPU tensors (bf16 autocast training) take the bf16 twins of the same
kernels, which read and write bf16 and compute in fp32 registers; the loss reads the chunk's
bf16 logits directly and hands its gradient back in bf16. Without them, or with
``BACKLM_NATIVE=0``, the same functions use PyTorch ops; tests/model/test_kernels.py and
tests/model/test_native_bf16.py check that both paths agree.
"""

from __future__ import annotations

import torch
from torch import Tensor

from backlm.model import IGNORE_INDEX, native

# Autograd would keep a temporary per elementwise op and run one pass over memory for each in
# backward; these Functions fold what they can into in-place ops and matmul epilogues. Each
# runs with autocast off: callers pass tensors already cast to the compute dtype.


def rotary_tables(seq_len: int, head_dim: int, base: float, device=None) -> tuple[Tensor, Tensor]:
    """``cos`` and ``sin`` of shape ``(seq_len, head_dim // 2)`` in fp32."""
    inv_freq = base ** -(torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim)
    angles = torch.outer(torch.arange(seq_len, dtype=torch.float32, device=device), inv_freq)
    return angles.cos(), angles.sin()


def _rotate(x: Tensor, cos: Tensor, sin: Tensor, out: Tensor, sign: float = 1.0) -> None:
    """``out = rotate(x)`` by the angles (``sign=-1``: the inverse rotation), halves-paired."""
    x1, x2 = x.chunk(2, dim=-1)
    o1, o2 = out.chunk(2, dim=-1)
    if torch.compiler.is_compiling():
        # dynamo refuses out= into these strided views (a graph break in every layer);
        # inductor fuses the plain expressions into one kernel anyway
        o1.copy_(x1 * cos + x2 * sin * sign)
        o2.copy_(x2 * cos - x1 * sin * sign)
        return
    torch.mul(x1, cos, out=o1)
    o1.addcmul_(x2, sin, value=sign)
    torch.mul(x2, cos, out=o2)
    o2.addcmul_(x1, sin, value=-sign)


def _rms_scale(x: Tensor) -> Tensor:
    # 1 / rms over the last dim in fp32, keepdim; eps as F.rms_norm's default
    ms = torch.linalg.vector_norm(x, dim=-1, keepdim=True, dtype=torch.float32).square_()
    return ms.mul_(1.0 / x.size(-1)).add_(torch.finfo(x.dtype).eps).rsqrt_()


def _rms_backward(g: Tensor, y: Tensor, r: Tensor) -> Tensor:
    # y = x·r with r = rms(x)^-1  ⇒  dx = r · (g − y · mean(g·y))
    s = torch.linalg.vecdot(g, y, dim=-1).unsqueeze(-1).mul_(1.0 / y.size(-1))
    return torch.addcmul(g, y, s.to(g.dtype), value=-1.0).mul_(r.to(g.dtype))


class _Norm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        if native.usable(x):
            y, r = torch.empty_like(x), torch.empty(*x.shape[:-1], 1, device=x.device)
            native.lib.rms_fwd(x.data_ptr(), y.data_ptr(), r.data_ptr(), y.numel() // y.size(-1),
                            y.size(-1), torch.finfo(x.dtype).eps, torch.get_num_threads())
        elif native.usable_bf16(x):
            y, r = torch.empty_like(x), torch.empty(*x.shape[:-1], 1, device=x.device)
            native.lib.rms_fwd_bf16(x.data_ptr(), y.data_ptr(), r.data_ptr(),
                                    y.numel() // y.size(-1), y.size(-1),
                                    torch.finfo(x.dtype).eps, torch.get_num_threads())
        else:
            r = _rms_scale(x)
            y = x * r.to(x.dtype)
        ctx.save_for_backward(y, r)
        return y

    @staticmethod
    def backward(ctx, g: Tensor) -> Tensor:
        y, r = ctx.saved_tensors
        g = g.contiguous()
        if native.usable(y, g):
            dx = torch.empty_like(g)
            native.lib.rms_bwd(g.data_ptr(), y.data_ptr(), r.data_ptr(), dx.data_ptr(),
                            y.numel() // y.size(-1), y.size(-1), torch.get_num_threads())
            return dx
        if native.usable_bf16(y, g):
            dx = torch.empty_like(g)
            native.lib.rms_bwd_bf16(g.data_ptr(), y.data_ptr(), r.data_ptr(), dx.data_ptr(),
                                    y.numel() // y.size(-1), y.size(-1), torch.get_num_threads())
            return dx
        return _rms_backward(g, y, r)


class _NormCast(torch.autograd.Function):
    """RMS norm of fp32 ``x`` written in bf16 by one C pass, backward from the bf16 gradient to
    fp32 (saves the bf16 output, which the next matmul keeps anyway)."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        y = torch.empty(x.shape, dtype=torch.bfloat16, device=x.device)
        r = torch.empty(*x.shape[:-1], 1, device=x.device)
        native.lib.rms_fwd_cast_bf16(x.data_ptr(), y.data_ptr(), r.data_ptr(),
                                     y.numel() // y.size(-1), y.size(-1),
                                     torch.finfo(x.dtype).eps, torch.get_num_threads())
        ctx.save_for_backward(y, r)
        return y

    @staticmethod
    def backward(ctx, g: Tensor) -> Tensor:
        y, r = ctx.saved_tensors
        g = g.to(y.dtype).contiguous()
        dx = torch.empty(g.shape, dtype=torch.float32, device=g.device)
        native.lib.rms_bwd_cast_bf16(g.data_ptr(), y.data_ptr(), r.data_ptr(), dx.data_ptr(),
                                     y.numel() // y.size(-1), y.size(-1), torch.get_num_threads())
        return dx


FUSED_NORM_CAST = True  # off: bf16 autocast's norms run in fp32, then a cast


def norm(x: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """RMS norm over the last dimension, without learnable parameters, computed in ``x``'s
    dtype and output in ``dtype`` (default the same; fp32 → bf16 is one C pass on CPU)."""
    if dtype is None or dtype == x.dtype:
        return _Norm.apply(x)
    if (FUSED_NORM_CAST and dtype == torch.bfloat16 and native.isa() is not None
            and native.usable(x)):
        with torch.autocast(x.device.type, enabled=False):
            return _NormCast.apply(x)
    return _Norm.apply(x).to(dtype)


class _QKV(torch.autograd.Function):
    """``x @ w.T`` split into q, k, v ``(B, H, T, D)``; q and k RMS-normed, then rotated.

    Rotation preserves each head vector's norm, so normalising before rotating equals
    nanochat's rotate-then-normalise, and the backward pass needs only the outputs (which
    attention keeps anyway). Gradients go back into one ``(B, T, 3, H, D)`` buffer so the
    weight gradient is a single matmul. With the C kernels q, k and v come out contiguous
    (one pass that also saves attention its copies); otherwise they are transposed views.
    """

    @staticmethod
    def forward(ctx, x: Tensor, w: Tensor, cos: Tensor, sin: Tensor, batch: int, heads: int):
        T, D = x.size(0) // batch, w.size(0) // (3 * heads)
        qkv = torch.mm(x, w.t()).view(batch, T, 3, heads, D)
        cos, sin = cos.contiguous(), sin.contiguous()
        ctx.native = native.usable(qkv, cos, sin) and cos.shape == (T, D // 2) == sin.shape
        # bf16: the kernels take the (bf16-valued) tables in fp32, a (T, D/2) copy
        ctx.bf16 = (not ctx.native and native.usable_bf16(qkv) and cos.shape == (T, D // 2)
                    == sin.shape and D <= 1024)
        if ctx.bf16:
            cos, sin = cos.float(), sin.float()
        if ctx.native or ctx.bf16:
            out = torch.empty(2, batch, heads, T, D, dtype=x.dtype, device=x.device)
            v = torch.empty(batch, heads, T, D, dtype=x.dtype, device=x.device)
            r = torch.empty(batch * T, 2 * heads, device=x.device)
            fwd = native.lib.qk_fwd_bf16 if ctx.bf16 else native.lib.qk_fwd
            fwd(qkv.data_ptr(), out.data_ptr(), v.data_ptr(), r.data_ptr(), cos.data_ptr(),
                sin.data_ptr(), batch, T, heads, D, torch.finfo(x.dtype).eps,
                torch.get_num_threads())
            q, k = out[0], out[1]
        else:
            qk = qkv[:, :, :2]
            r = _rms_scale(qk)
            out = torch.empty(batch, T, 2, heads, D, dtype=x.dtype, device=x.device)
            # broadcast over (B, T, 2, H, D/2)
            _rotate(qk * r.to(qk.dtype), cos[:, None, None], sin[:, None, None], out)
            q, k, v = (t.transpose(1, 2) for t in (out[:, :, 0], out[:, :, 1], qkv[:, :, 2]))
        ctx.save_for_backward(x, w, out, r, cos, sin)
        ctx.batch, ctx.heads = batch, heads
        return q, k, v

    @staticmethod
    def backward(ctx, gq: Tensor, gk: Tensor, gv: Tensor):
        x, w, out, r, cos, sin = ctx.saved_tensors
        B, H = ctx.batch, ctx.heads
        T, D = x.size(0) // B, w.size(0) // (3 * H)
        g = torch.empty(B, T, 3, H, D, dtype=x.dtype, device=x.device)
        if ctx.native or ctx.bf16:
            grads = (gq, gk, gv)
            if any(t.stride(-1) != 1 or t.stride() != gq.stride() for t in grads):
                grads = tuple(t.contiguous() for t in grads)
            bwd = native.lib.qk_bwd_bf16 if ctx.bf16 else native.lib.qk_bwd
            bwd(*(t.data_ptr() for t in grads), *grads[0].stride()[:3], out.data_ptr(),
                r.data_ptr(), cos.data_ptr(), sin.data_ptr(), g.data_ptr(), B, T, H, D,
                torch.get_num_threads())
        else:
            for i, gi in enumerate((gq, gk)):
                # y = R(x·r): the rms backward commutes with the rotation, since R is orthogonal
                gi = _rms_backward(gi.transpose(1, 2), out[:, :, i], r[:, :, i])
                _rotate(gi, cos[:, None], sin[:, None], g[:, :, i], sign=-1.0)
            g[:, :, 2] = gv.transpose(1, 2)
        g2 = g.view(x.size(0), -1)
        gx = torch.mm(g2, w) if ctx.needs_input_grad[0] else None
        gw = torch.mm(g2.t(), x) if ctx.needs_input_grad[1] else None
        return gx, gw, None, None, None, None


def qkv_rotary_norm(x: Tensor, w: Tensor, cos: Tensor, sin: Tensor, batch: int, heads: int):
    """q, k, v ``(B, H, T, D)`` from tokens ``x`` ``(B·T, C)`` and the flat qkv weight."""
    with torch.autocast(x.device.type, enabled=False):
        return _QKV.apply(x, w, cos, sin, batch, heads)


class _MLP(torch.autograd.Function):
    """``relu(x @ fc.T)² @ proj.T`` with one elementwise pass in backward.

    d(relu(u)²)/du = 2·relu(u): the gradient is ``grad · h`` in place, and the factor 2 is
    applied to the two small matmul outputs rather than to the wide hidden tensor.
    """

    @staticmethod
    def forward(ctx, x: Tensor, fc: Tensor, proj: Tensor) -> Tensor:
        h = torch.mm(x, fc.t())
        if native.usable(h):
            a = torch.empty_like(h)
            native.lib.relu_sq(h.data_ptr(), a.data_ptr(), h.numel(), torch.get_num_threads())
        elif native.usable_bf16(h):
            a = torch.empty_like(h)
            native.lib.relu_sq_bf16(h.data_ptr(), a.data_ptr(), h.numel(), torch.get_num_threads())
        else:
            h.relu_()
            a = h.square()
        ctx.save_for_backward(x, fc, proj, h, a)
        return torch.mm(a, proj.t())

    @staticmethod
    def backward(ctx, gy: Tensor):
        x, fc, proj, h, a = ctx.saved_tensors
        gu = torch.mm(gy, proj).mul_(h)
        gx = torch.mm(gu, fc).mul_(2.0) if ctx.needs_input_grad[0] else None
        gfc = torch.mm(gu.t(), x).mul_(2.0) if ctx.needs_input_grad[1] else None
        gproj = torch.mm(gy.t(), a) if ctx.needs_input_grad[2] else None
        return gx, gfc, gproj


def mlp(x: Tensor, fc: Tensor, proj: Tensor) -> Tensor:
    """ReLU² MLP on tokens ``x`` ``(N, C)``."""
    with torch.autocast(x.device.type, enabled=False):
        return _MLP.apply(x, fc, proj)


# logits elements alive at once in the loss: two 16 MB chunk buffers stay in a server CPU's
# L3 while the chunk matmuls stay large enough to run near peak; GPUs want fewer launches
HEAD_CHUNK_ELEMENTS = {"cpu": 2**22, "cuda": 2**26}
# bf16 logit gradients kept whole for the head's gradient matmuls (≤ 64 MB): chunk by chunk,
# each chunk's bf16 weight gradient had to be widened and added into the fp32 sum (two passes)
HEAD_GRAD_SLAB_ELEMENTS = 2**25


def head_loss(
    x: Tensor, w: Tensor, y: Tensor, cap: float, row_scale: Tensor | None
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Per-token loss of ``softcap(x @ w.T)`` against ``y``, chunk by chunk.

    With ``row_scale`` (one weight per row, 0 at ignored rows) also returns the gradients of
    ``sum(row_scale · loss)`` with respect to ``x`` and ``w``; they are cheap to get here
    because the softmax is already in hand. Logits are fp32 whatever the input dtype.
    """
    n, vocab = x.size(0), w.size(0)
    valid = y != IGNORE_INDEX
    safe_y = torch.where(valid, y, 0).unsqueeze(1)
    losses = torch.empty(n, dtype=torch.float32, device=x.device)
    with_grad = row_scale is not None
    grad_x = torch.empty_like(x) if with_grad else None
    # the first chunk's addmm_ overwrites it (beta=0), so no zero-fill pass
    grad_w = torch.empty(w.shape, dtype=torch.float32, device=w.device) if with_grad else None
    rows = max(1, min(HEAD_CHUNK_ELEMENTS.get(x.device.type, 2**24) // vocab, n))
    # two reusable chunk buffers: z holds logits -> tanh -> tanh², e holds exp -> gradient
    z_buf = torch.empty(rows, vocab, dtype=torch.float32, device=x.device)
    e_buf = torch.empty_like(z_buf)
    fp32 = x.dtype == torch.float32
    # one fused pass per row in C: softcap, exp, sum, loss and gradient (see _native_body.h).
    # The chunk's logits are fp32 in every precision, so bf16 runs take the kernel too.
    fused = 0 < cap <= 40 and native.usable(z_buf)
    # bf16 logits straight into the kernel (it applies the 1/cap), which hands the gradient
    # back in bf16 for the head's matmuls: no fp32 copy of the logits, no cast of the gradient
    fused16 = fused and native.usable_bf16(x, w)
    slab = fused16 and with_grad and n * vocab <= HEAD_GRAD_SLAB_ELEMENTS
    if fused16:
        zb_buf = torch.empty(rows, vocab, dtype=x.dtype, device=x.device)
        gb_buf = torch.empty(n if slab else rows, vocab, dtype=x.dtype) if with_grad else None
    if fused:
        safe_y = safe_y.to(torch.int64).contiguous()
        if n and not 0 <= int(safe_y.min()) <= int(safe_y.max()) < vocab:
            # the C kernel indexes rows with these; PyTorch's gather would raise the same way
            raise IndexError(f"target id out of range for a vocabulary of {vocab}")
        row_scale = row_scale.float().contiguous() if with_grad else None
    for r0 in range(0, n, rows):
        r1 = min(r0 + rows, n)
        xc, yc, z, e = x[r0:r1], safe_y[r0:r1], z_buf[: r1 - r0], e_buf[: r1 - r0]
        if fused16:
            zb, chunk_loss = zb_buf[: r1 - r0], losses[r0:r1]
            torch.mm(xc, w.t(), out=zb)
            gb = (gb_buf[r0:r1] if slab else gb_buf[: r1 - r0]) if with_grad else None
            native.lib.softcap_ce_bf16(zb.data_ptr(), z.data_ptr(), e.data_ptr(),
                                       gb.data_ptr() if with_grad else 0, yc.data_ptr(),
                                       row_scale[r0:r1].data_ptr() if with_grad else 0,
                                       chunk_loss.data_ptr(), r1 - r0, vocab, cap,
                                       torch.get_num_threads())
            chunk_loss.masked_fill_(~valid[r0:r1], 0.0)
            if with_grad and not slab:
                _head_grads(gb, w, xc, grad_x[r0:r1], grad_w, r0 > 0)
            continue
        if fp32:  # the 1/cap of the softcap rides on the matmul (beta=0 ignores old z)
            z.addmm_(xc, w.t(), beta=0.0, alpha=1.0 / cap if cap > 0 else 1.0)
        else:
            z.copy_(xc @ w.t()).mul_(1.0 / cap if cap > 0 else 1.0)
        if fused:
            chunk_loss = losses[r0:r1]
            native.lib.softcap_ce(z.data_ptr(), e.data_ptr(), yc.data_ptr(),
                               row_scale[r0:r1].data_ptr() if with_grad else 0,
                               chunk_loss.data_ptr(), r1 - r0, vocab, cap, torch.get_num_threads())
            chunk_loss.masked_fill_(~valid[r0:r1], 0.0)
            if with_grad:
                _head_grads(e, w, xc, grad_x[r0:r1], grad_w, r0 > 0)
            continue
        if cap > 0:
            z.tanh_()
            torch.mul(z, cap, out=e)
        else:
            e.copy_(z)
        target_logit = e.gather(1, yc).squeeze(1)
        if cap <= 0 or cap > 40:
            # |logit| ≤ cap keeps exp() below overflow for cap ≤ 40; otherwise shift by the max
            shift = e.amax(dim=1, keepdim=True)
            e.sub_(shift)
            target_logit = target_logit - shift.squeeze(1)
        total = e.exp_().sum(dim=1)
        losses[r0:r1] = torch.where(valid[r0:r1], total.log() - target_logit, 0.0)
        if not with_grad:
            continue
        # d loss / d logit = softmax − onehot, times d softcap / d logit = 1 − tanh²
        rs = row_scale[r0:r1]
        e.mul_((rs / total).unsqueeze(1))
        e.scatter_add_(1, yc, -rs.unsqueeze(1))
        if cap > 0:
            e.addcmul_(e, z.mul_(z), value=-1.0)
        _head_grads(e, w, xc, grad_x[r0:r1], grad_w, r0 > 0)
    if slab and n:
        torch.mm(gb_buf, w, out=grad_x)
        grad_w.copy_(gb_buf.t() @ x)
    return losses, grad_x, grad_w


def _head_grads(e: Tensor, w: Tensor, xc: Tensor, grad_x: Tensor, grad_w: Tensor, accumulate: bool) -> None:
    """A chunk's share of the head's gradients from its logit gradient ``e`` (fp32, or already
    in ``xc``'s dtype)."""
    if xc.dtype == torch.float32:
        torch.mm(e, w, out=grad_x)
        grad_w.addmm_(e.t(), xc, beta=float(accumulate))
        return
    g = e.to(xc.dtype)  # low-precision matmuls, fp32 accumulation of the head's gradient
    if grad_x.is_contiguous() and g.dtype == w.dtype == grad_x.dtype:
        torch.mm(g, w, out=grad_x)
    else:
        grad_x.copy_(g @ w)
    gw = g.t() @ xc
    if accumulate:
        grad_w.add_(gw)
    else:
        grad_w.copy_(gw)


class _SoftcapLoss(torch.autograd.Function):
    """Mean (or sum) softcapped cross-entropy whose gradients are computed in forward."""

    @staticmethod
    def forward(ctx, x: Tensor, w: Tensor, y: Tensor, cap: float, mean: bool) -> Tensor:
        valid = (y != IGNORE_INDEX).to(torch.float32)
        # dividing by a tensor count keeps this free of host syncs on GPU
        row_scale = valid / valid.sum().clamp(min=1) if mean else valid
        # an fp32 head under autocast: cast here, its fp32-summed gradient returned as is
        losses, grad_x, grad_w = head_loss(x, w.to(x.dtype), y, cap, row_scale)
        ctx.save_for_backward(grad_x, grad_w.to(w.dtype))
        return (losses * row_scale).sum()

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        grad_x, grad_w = ctx.saved_tensors
        # loss.backward() passes 1: on CPU the check is free and saves two passes over memory
        if grad_out.device.type != "cpu" or float(grad_out) != 1.0:
            grad_x, grad_w = grad_x * grad_out.to(grad_x.dtype), grad_w * grad_out.to(grad_w.dtype)
        return grad_x, grad_w, None, None, None


def softcap_loss(x: Tensor, w: Tensor, y: Tensor, cap: float, mean: bool = True) -> Tensor:
    """Training loss of ``softcap(x @ w.T)`` vs ``y`` (``IGNORE_INDEX`` skipped), fused; the
    matmuls in ``x``'s dtype, ``w`` (e.g. the fp32 head) gets its gradient in its own dtype."""
    with torch.autocast(x.device.type, enabled=False):
        return _SoftcapLoss.apply(x, w, y, cap, mean)
