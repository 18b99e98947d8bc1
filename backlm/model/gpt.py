"""GPT for every direction (DESIGN.md §5), nanochat style.

Token embedding (untied from the head), rotary positions, parameter-free RMS norm, QK norm,
causal attention, ReLU² MLP, untied ``lm_head`` and a tanh logit softcap. The model never
knows the direction: that lives entirely in the token order the data loader produces.

The memory-bound parts (norm, fused q/k/v with rotary, MLP, the softcapped loss) run through
the hand-written autograd functions of :mod:`backlm.model.kernels`, as does CPU training attention.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from backlm.config import ModelConfig
from backlm.model import IGNORE_INDEX
from backlm.model.attention import causal_attention
from backlm.model.decode import KVCache, SamplingParams, Step, decode, stream
from backlm.model.kernels import (
    head_loss,
    mlp,
    norm,
    qkv_rotary_norm,
    rotary_tables,
    softcap_loss,
)


def compute_dtype(x: Tensor) -> torch.dtype | None:
    """The autocast dtype active for ``x``'s device, or None outside autocast."""
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return None


def cast(dtype: torch.dtype | None, *tensors: Tensor) -> tuple[Tensor, ...]:
    """Cast for the hand-written ops, which run with autocast off (as autocast would cast)."""
    return tensors if dtype is None else tuple(t.to(dtype) for t in tensors)


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

    def project(self, x: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """q, k, v ``(B, H, T, D)`` of ``x`` ``(B, T, C)``: rotary and QK norm applied."""
        B, T, C = x.shape
        x2, w = cast(compute_dtype(x), x.reshape(B * T, C), self.qkv.flatten(0, 1))
        return qkv_rotary_norm(x2, w, cos.to(w.dtype), sin.to(w.dtype), B, self.n_heads)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, cache: KVCache | None = None) -> Tensor:
        B, T, _ = x.shape
        q, k, v = self.project(x, cos, sin)
        if cache is None:
            y = causal_attention(q, k, v)
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
        # under autocast the norms write the compute dtype (one pass instead of norm + cast)
        dtype = compute_dtype(x)
        x = x + self.attn(norm(x, dtype), cos, sin, cache)
        return x + self.mlp(norm(x, dtype))


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

    def hidden(self, idx: Tensor, cache: KVCache | None = None,
               dtype: torch.dtype | None = None) -> Tensor:
        """Final normed hidden states ``(B, T, C)`` for token ids ``idx`` ``(B, T)``, in
        ``dtype`` (default: the residual stream's)."""
        cos, sin = self._rotary(cache.pos if cache is not None else 0, idx.size(1))
        x = norm(self.wte(idx))
        for block in self.blocks:
            x = block(x, cos, sin, cache)
        return norm(x, dtype)

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
        if targets is None:
            return self.logits(self.hidden(idx))
        if loss_reduction not in ("mean", "sum", "none"):
            raise ValueError(f"loss_reduction must be mean, sum or none, got {loss_reduction!r}")
        # the loss's matmuls take the final norm's output in the compute dtype
        h = self.hidden(idx, dtype=compute_dtype(self.lm_head.weight))
        y = targets.flatten()
        x, w = cast(compute_dtype(h) or self.lm_head.weight.dtype, h.flatten(0, 1), self.lm_head.weight)
        grad_needed = torch.is_grad_enabled() and (x.requires_grad or w.requires_grad)
        if grad_needed and loss_reduction == "none":
            # per-token gradients need the full graph; rare (e.g. weighted losses)
            logits = self.logits(h).flatten(0, 1)
            return F.cross_entropy(logits, y, ignore_index=IGNORE_INDEX, reduction="none").view_as(targets)
        if grad_needed:  # the fp32 head itself: the loss casts it and returns an fp32 gradient
            return softcap_loss(x, self.lm_head.weight, y, self.cfg.softcap, loss_reduction == "mean")
        with torch.autocast(x.device.type, enabled=False):
            per_token, _, _ = head_loss(x, w, y, self.cfg.softcap, None)
        if loss_reduction == "none":
            return per_token.view_as(targets)
        total = per_token.sum()
        return total / (y != IGNORE_INDEX).sum().clamp(min=1) if loss_reduction == "mean" else total

    # --- generation ------------------------------------------------------------------------

    def generate(
        self,
        tokens: list[int],
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        seed: int | None = None,
        top_p: float | None = None,
    ) -> Iterator[int]:
        """Yield up to ``max_new_tokens`` sampled token ids after ``tokens``, one at a time.

        The generation engine at batch 1 (:func:`backlm.model.decode.stream`: one fused C call
        per token for an fp32 model on CPU). ``temperature`` 0 is greedy; ``seed`` makes
        sampling reproducible.
        """
        return stream(self, tokens, max_new_tokens, SamplingParams(temperature, top_k, top_p), seed)

    def decode(self, tokens: list[int], max_new_tokens: int, **options: Any) -> Iterator[Step]:
        """The generation engine's :func:`backlm.model.decode.decode` on this model: batched
        rows, per-token log-probabilities, the prompt scored (``options`` are its keywords)."""
        return decode(self, tokens, max_new_tokens, **options)
