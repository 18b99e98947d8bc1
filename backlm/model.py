"""GPT for every direction (DESIGN.md §5), nanochat style.

Token embedding (untied from the head), rotary positions, parameter-free RMS norm, QK norm,
causal SDPA attention, ReLU² MLP, untied ``lm_head`` and a tanh logit softcap. The model never
knows the direction: that lives entirely in the token order the data loader produces.

On a CPU the matmuls run near the machine's peak and the rest is bound by memory bandwidth,
so the elementwise parts have hand-written backward passes (bottom of this module) that make
as few passes over memory as possible; the loss never materialises the ``(B·T, vocab)``
logits.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from backlm.config import ModelConfig
from backlm.direction import IGNORE_INDEX


def compute_dtype(x: Tensor) -> torch.dtype | None:
    """The autocast dtype active for ``x``'s device, or None outside autocast."""
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return None


def cast(dtype: torch.dtype | None, *tensors: Tensor) -> tuple[Tensor, ...]:
    """Cast for the hand-written ops, which run with autocast off (as autocast would cast)."""
    return tensors if dtype is None else tuple(t.to(dtype) for t in tensors)


class KVCache:
    """Per-layer keys and values for incremental decoding, preallocated to ``max_len``.

    ``pos`` is the number of positions already stored; it advances once the last layer has
    inserted, so every layer of one forward pass sees the same offset.
    """

    def __init__(self, n_layers: int, batch: int, n_heads: int, head_dim: int, max_len: int):
        self.n_layers, self.max_len = n_layers, max_len
        self.shape = (n_layers, batch, n_heads, max_len, head_dim)
        self.k: Tensor | None = None
        self.v: Tensor | None = None
        self.pos = 0

    def insert(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store ``k``/``v`` of shape ``(B, H, T, D)`` at ``pos``; return all keys/values so far."""
        if self.k is None or self.k.dtype != k.dtype:
            # allocated lazily so the cache follows whatever dtype autocast produces
            self.k = torch.zeros(self.shape, dtype=k.dtype, device=k.device)
            self.v = torch.zeros(self.shape, dtype=v.dtype, device=v.device)
        t0, t1 = self.pos, self.pos + k.size(2)
        if t1 > self.max_len:
            raise ValueError(f"KV cache full: {t1} positions > max_len {self.max_len}")
        self.k[layer, :, :, t0:t1] = k
        self.v[layer, :, :, t0:t1] = v
        if layer == self.n_layers - 1:
            self.pos = t1
        return self.k[layer, :, :, :t1], self.v[layer, :, :, :t1]


class Attention(nn.Module):
    """Causal self-attention; q, k and v live in one ``(3, inner, C)`` weight.

    One matmul for q, k and v is faster on CPU than three, and Muon still orthogonalises each
    of the three slices separately (it treats leading dimensions as a batch).
    """

    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.layer, self.n_heads = layer, cfg.n_heads
        inner = cfg.n_heads * cfg.head_dim
        self.qkv = nn.Parameter(torch.empty(3, inner, cfg.model_dim))
        self.proj = nn.Parameter(torch.empty(cfg.model_dim, inner))

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, cache: KVCache | None = None) -> Tensor:
        B, T, C = x.shape
        x2, w = cast(compute_dtype(x), x.reshape(B * T, C), self.qkv.flatten(0, 1))
        q, k, v = qkv_rotary_norm(x2, w, cos.to(w.dtype), sin.to(w.dtype), B, self.n_heads)
        if cache is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            prefix = cache.pos
            k, v = cache.insert(self.layer, k, v)
            if prefix == 0:
                y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            elif T == 1:
                y = F.scaled_dot_product_attention(q, k, v)
            else:  # a chunk after a prefix: query i sees the prefix and keys up to itself
                mask = torch.ones(T, prefix + T, dtype=torch.bool, device=x.device).tril(prefix)
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return F.linear(y.transpose(1, 2).reshape(B, T, -1), self.proj)


class MLP(nn.Module):
    """Two matrices with ReLU² between them, hidden width ``4 · model_dim``."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.fc = nn.Parameter(torch.empty(4 * cfg.model_dim, cfg.model_dim))
        self.proj = nn.Parameter(torch.empty(cfg.model_dim, 4 * cfg.model_dim))

    def forward(self, x: Tensor) -> Tensor:
        B, T, C = x.shape
        args = cast(compute_dtype(x), x.reshape(B * T, C), self.fc, self.proj)
        return mlp(*args).view(B, T, C)


class Block(nn.Module):
    """Pre-norm residual block: attention then MLP."""

    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.attn = Attention(cfg, layer)
        self.mlp = MLP(cfg)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, cache: KVCache | None = None) -> Tensor:
        x = x + self.attn(norm(x), cos, sin, cache)
        return x + self.mlp(norm(x))


class GPT(nn.Module):
    """Decoder-only transformer sized from :class:`ModelConfig`."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.model_dim % 2 or cfg.head_dim % 2:
            raise ValueError("model_dim and head_dim must be even for rotary embeddings")
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.model_dim)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.depth))
        self.lm_head = nn.Linear(cfg.model_dim, cfg.vocab_size, bias=False)
        # rotary tables are derived state: not in state_dict, so checkpoints hold weights only
        cos, sin = rotary_tables(cfg.seq_len, cfg.head_dim, cfg.rope_base)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """nanochat init: uniform hidden matrices, zero output projections, small head."""
        bound = 3**0.5 * self.cfg.model_dim**-0.5  # uniform with std = 1/sqrt(model_dim)
        nn.init.normal_(self.wte.weight, std=1.0)
        nn.init.normal_(self.lm_head.weight, std=0.001)
        for block in self.blocks:
            nn.init.uniform_(block.attn.qkv, -bound, bound)
            nn.init.uniform_(block.mlp.fc, -bound, bound)
            # zero outputs make every block start as the identity, so depth does not blow up
            nn.init.zeros_(block.attn.proj)
            nn.init.zeros_(block.mlp.proj)

    # --- accounting ------------------------------------------------------------------------

    def num_params(self) -> int:
        """All trainable parameters (embedding included)."""
        return sum(p.numel() for p in self.parameters())

    def flops_per_token(self) -> int:
        """Training FLOPs per token (fwd + bwd), nanochat's estimate.

        ``6 · (params − embedding params) + 12 · layers · heads · head_dim · seq_len``; the
        attention term counts the full (not causal-halved) score and value matmuls.
        """
        cfg = self.cfg
        matmul_params = self.num_params() - self.wte.weight.numel()
        return 6 * matmul_params + 12 * cfg.depth * cfg.n_heads * cfg.head_dim * cfg.seq_len

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """Parameters by optimizer role: ``matrix`` (hidden, for Muon); ``embedding``,
        ``unembedding`` and ``scalar`` (for AdamW)."""
        groups: dict[str, list[nn.Parameter]] = {
            "matrix": [], "embedding": [self.wte.weight], "unembedding": [self.lm_head.weight],
            "scalar": [],
        }
        for p in self.blocks.parameters():
            groups["matrix" if p.ndim >= 2 else "scalar"].append(p)
        return groups

    # --- forward ---------------------------------------------------------------------------

    def _rotary(self, start: int, length: int) -> tuple[Tensor, Tensor]:
        if start + length > self.cos.size(0):
            # sequences longer than seq_len (generation) get tables grown on demand
            new_len = max(start + length, 2 * self.cos.size(0))
            with torch.inference_mode(False):  # tables made in generate must serve training too
                self.cos, self.sin = rotary_tables(
                    new_len, self.cfg.head_dim, self.cfg.rope_base, self.cos.device
                )
        return self.cos[start:start + length], self.sin[start:start + length]

    def hidden(self, idx: Tensor, cache: KVCache | None = None) -> Tensor:
        """Final normed hidden states ``(B, T, C)`` for token ids ``idx`` ``(B, T)``."""
        cos, sin = self._rotary(cache.pos if cache is not None else 0, idx.size(1))
        x = norm(self.wte(idx))
        for block in self.blocks:
            x = block(x, cos, sin, cache)
        return norm(x)

    def logits(self, h: Tensor) -> Tensor:
        """Softcapped fp32 logits from hidden states."""
        logits = self.lm_head(h).float()
        cap = self.cfg.softcap
        return cap * torch.tanh(logits / cap) if cap > 0 else logits

    def forward(self, idx: Tensor, targets: Tensor | None = None, loss_reduction: str = "mean") -> Tensor:
        """Logits ``(B, T, V)`` when ``targets`` is None, else the loss.

        ``loss_reduction="mean"`` averages over targets that are not ``IGNORE_INDEX``;
        ``"sum"`` sums them; ``"none"`` gives ``(B, T)`` with 0 at ignored targets.
        """
        h = self.hidden(idx)
        if targets is None:
            return self.logits(h)
        if loss_reduction not in ("mean", "sum", "none"):
            raise ValueError(f"loss_reduction must be mean, sum or none, got {loss_reduction!r}")
        y = targets.flatten()
        x, w = cast(compute_dtype(h) or self.lm_head.weight.dtype, h.flatten(0, 1), self.lm_head.weight)
        grad_needed = torch.is_grad_enabled() and (x.requires_grad or w.requires_grad)
        if grad_needed and loss_reduction == "none":
            # per-token gradients need the full graph; rare (e.g. weighted losses)
            logits = self.logits(h).flatten(0, 1)
            return F.cross_entropy(logits, y, ignore_index=IGNORE_INDEX, reduction="none").view_as(targets)
        if grad_needed:
            return softcap_loss(x, w, y, self.cfg.softcap, loss_reduction == "mean")
        with torch.autocast(x.device.type, enabled=False):
            per_token, _, _ = head_loss(x, w, y, self.cfg.softcap, None)
        if loss_reduction == "none":
            return per_token.view_as(targets)
        total = per_token.sum()
        return total / (y != IGNORE_INDEX).sum().clamp(min=1) if loss_reduction == "mean" else total

    # --- generation ------------------------------------------------------------------------

    @torch.inference_mode()
    def generate(
        self,
        tokens: list[int],
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        seed: int | None = None,
    ) -> Iterator[int]:
        """Yield up to ``max_new_tokens`` sampled token ids after ``tokens``, one at a time.

        Prefills a :class:`KVCache` with the prompt, then feeds one token per step.
        ``temperature`` 0 is greedy; ``seed`` makes sampling reproducible.
        """
        if not tokens:
            raise ValueError("generate needs at least one prompt token (e.g. BOS)")
        device = self.lm_head.weight.device
        rng = None
        if seed is not None:
            rng = torch.Generator(device=device).manual_seed(seed)
        cfg = self.cfg
        cache = KVCache(cfg.depth, 1, cfg.n_heads, cfg.head_dim, len(tokens) + max_new_tokens)
        ids = torch.tensor([tokens], dtype=torch.long, device=device)
        for i in range(max_new_tokens):
            logits = self.logits(self.hidden(ids, cache)[:, -1])
            nxt = sample_token(logits, temperature, top_k, rng)
            yield nxt
            if i + 1 < max_new_tokens:
                ids = torch.tensor([[nxt]], dtype=torch.long, device=device)


def sample_token(logits: Tensor, temperature: float, top_k: int | None, rng: torch.Generator | None) -> int:
    """Sample one id from ``(1, V)`` logits; temperature 0 takes the argmax."""
    if temperature <= 0:
        return int(logits.argmax(dim=-1))
    logits = logits / temperature
    if top_k is not None and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    return int(torch.multinomial(probs, 1, generator=rng))


# --- hand-written kernels ----------------------------------------------------------------
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
        r = _rms_scale(x)
        y = x * r.to(x.dtype)
        ctx.save_for_backward(y, r)
        return y

    @staticmethod
    def backward(ctx, g: Tensor) -> Tensor:
        y, r = ctx.saved_tensors
        return _rms_backward(g, y, r)


def norm(x: Tensor) -> Tensor:
    """RMS norm over the last dimension, without learnable parameters."""
    return _Norm.apply(x)


class _QKV(torch.autograd.Function):
    """``x @ w.T`` split into q, k, v ``(B, H, T, D)``; q and k RMS-normed, then rotated.

    Rotation preserves each head vector's norm, so normalising before rotating equals
    nanochat's rotate-then-normalise, and the backward pass needs only the outputs (which
    attention keeps anyway). Gradients go back into one ``(B, T, 3, H, D)`` buffer so the
    weight gradient is a single matmul. q, k, v are transposed views: SDPA takes them as is.
    """

    @staticmethod
    def forward(ctx, x: Tensor, w: Tensor, cos: Tensor, sin: Tensor, batch: int, heads: int):
        T, D = x.size(0) // batch, w.size(0) // (3 * heads)
        qkv = torch.mm(x, w.t()).view(batch, T, 3, heads, D)
        qk = qkv[:, :, :2]
        r = _rms_scale(qk)
        cos, sin = cos[:, None, None], sin[:, None, None]  # broadcast over (B, T, 2, H, D/2)
        out = torch.empty(qk.shape, dtype=x.dtype, device=x.device)
        _rotate(qk * r.to(qk.dtype), cos, sin, out)
        ctx.save_for_backward(x, w, out, r, cos, sin)
        return out[:, :, 0].transpose(1, 2), out[:, :, 1].transpose(1, 2), qkv[:, :, 2].transpose(1, 2)

    @staticmethod
    def backward(ctx, gq: Tensor, gk: Tensor, gv: Tensor):
        x, w, out, r, cos, sin = ctx.saved_tensors
        B, T, _, H, D = out.shape
        g = torch.empty(B, T, 3, H, D, dtype=x.dtype, device=x.device)
        for i, gi in enumerate((gq, gk)):
            # y = R(x·r): the rms backward commutes with the rotation, since R is orthogonal
            gi = _rms_backward(gi.transpose(1, 2), out[:, :, i], r[:, :, i])
            _rotate(gi, cos[:, 0], sin[:, 0], g[:, :, i], sign=-1.0)
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
        h = torch.mm(x, fc.t()).relu_()
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
    grad_w = torch.zeros(w.shape, dtype=torch.float32, device=w.device) if with_grad else None
    rows = max(1, min(HEAD_CHUNK_ELEMENTS.get(x.device.type, 2**24) // vocab, n))
    # two reusable chunk buffers: z holds logits -> tanh -> tanh², e holds exp -> gradient
    z_buf = torch.empty(rows, vocab, dtype=torch.float32, device=x.device)
    e_buf = torch.empty_like(z_buf)
    fp32 = x.dtype == torch.float32
    for r0 in range(0, n, rows):
        r1 = min(r0 + rows, n)
        xc, yc, z, e = x[r0:r1], safe_y[r0:r1], z_buf[: r1 - r0], e_buf[: r1 - r0]
        if fp32:  # the 1/cap of the softcap rides on the matmul (beta=0 ignores old z)
            z.addmm_(xc, w.t(), beta=0.0, alpha=1.0 / cap if cap > 0 else 1.0)
        else:
            z.copy_(xc @ w.t()).mul_(1.0 / cap if cap > 0 else 1.0)
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
        if fp32:
            torch.mm(e, w, out=grad_x[r0:r1])
            grad_w.addmm_(e.t(), xc)
        else:  # low-precision matmuls, fp32 accumulation of the head's gradient
            g = e.to(x.dtype)
            grad_x[r0:r1] = g @ w
            grad_w.add_(g.t() @ xc)
    return losses, grad_x, grad_w


class _SoftcapLoss(torch.autograd.Function):
    """Mean (or sum) softcapped cross-entropy whose gradients are computed in forward."""

    @staticmethod
    def forward(ctx, x: Tensor, w: Tensor, y: Tensor, cap: float, mean: bool) -> Tensor:
        valid = (y != IGNORE_INDEX).to(torch.float32)
        # dividing by a tensor count keeps this free of host syncs on GPU
        row_scale = valid / valid.sum().clamp(min=1) if mean else valid
        losses, grad_x, grad_w = head_loss(x, w, y, cap, row_scale)
        ctx.save_for_backward(grad_x, grad_w.to(w.dtype))
        return (losses * row_scale).sum()

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        grad_x, grad_w = ctx.saved_tensors
        return grad_x * grad_out.to(grad_x.dtype), grad_w * grad_out.to(grad_w.dtype), None, None, None


def softcap_loss(x: Tensor, w: Tensor, y: Tensor, cap: float, mean: bool = True) -> Tensor:
    """Training loss of ``softcap(x @ w.T)`` vs ``y`` (``IGNORE_INDEX`` skipped), fused."""
    with torch.autocast(x.device.type, enabled=False):
        return _SoftcapLoss.apply(x, w, y, cap, mean)
