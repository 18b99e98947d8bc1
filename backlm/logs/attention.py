"""Attention statistics for the research log: per layer and head, the entropy of each query's
attention and the mean distance to the keys it attends to (schema in :mod:`backlm.logs.hdf5`).

Both are measured in model order, the order the model reads: a distance of 3 means three
tokens back in its own reading, so a forward and a backward model compare directly. The
probabilities are recomputed from each layer's q and k (the training kernels never form them)
on the few rows of the per-token slice, by forward pre-hooks armed for one no-grad forward.
"""

from __future__ import annotations

from typing import Any

from backlm.logs.probe import HookProbe

# Query positions per pass: bounds the (rows, heads, block, T) score tensor at long contexts.
QUERY_BLOCK = 256


def head_stats(q: Any, k: Any, block: int = QUERY_BLOCK) -> tuple[Any, Any]:
    """Mean attention entropy (nats) and mean attended distance per head, ``(H,)`` each.

    ``q`` and ``k`` are ``(B, H, T, D)`` after rotary and QK norm; attention is causal with
    SDPA's scale 1/√D, as in training. Means are over every query position of every row.
    """
    import torch

    q, k = q.float(), k.float()
    B, H, T, D = q.shape
    entropy = torch.zeros(H, dtype=torch.float64, device=q.device)
    distance = torch.zeros_like(entropy)
    keys = torch.arange(T, device=q.device)
    for s in range(0, T, block):
        e = min(T, s + block)
        scores = torch.matmul(q[:, :, s:e], k[:, :, :e].transpose(-1, -2)) * D**-0.5
        gap = (keys[s:e, None] - keys[None, :e]).float()  # query − key: ≥ 0 where allowed
        scores.masked_fill_(gap < 0, float("-inf"))
        p = torch.softmax(scores, dim=-1)
        entropy += torch.special.entr(p).sum(dim=(0, 2, 3), dtype=torch.float64)
        distance += (p * gap.clamp(min=0)).sum(dim=(0, 2, 3), dtype=torch.float64)
    n = B * T
    return entropy / n, distance / n


class AttentionProbe(HookProbe):
    """Pre-hooks on every attention module that record :func:`head_stats` while armed."""

    def _reset(self) -> None:
        self._stats: list[Any] = [None] * len(self.modules)

    def _register(self, i: int, module: Any) -> Any:
        return module.register_forward_pre_hook(self._hook(i))

    def disarm(self) -> dict[str, Any] | None:
        """Remove the hooks; ``{"entropy", "distance"}`` as float32 ``(layers, heads)`` arrays,
        or None when a layer saw no forward since :meth:`arm`."""
        import numpy as np

        self._remove()
        stats, self._stats = self._stats, []
        if not stats or any(s is None for s in stats):
            return None
        return {name: np.asarray([s[j].cpu().numpy() for s in stats], dtype="float32")
                for j, name in enumerate(("entropy", "distance"))}

    def _hook(self, i: int):
        import torch

        def hook(module: Any, args: tuple) -> None:
            x, cos, sin = args[:3]
            cache = args[3] if len(args) > 3 else None
            if cache is not None or self._stats[i] is not None:
                return  # decoding, or a second forward: the slice's first one is measured
            with torch.no_grad():
                q, k, _ = module.project(x.detach(), cos, sin)
                self._stats[i] = head_stats(q, k)

        return hook


def measure(model: Any, x: Any, autocast: Any) -> dict[str, Any] | None:
    """Attention statistics of ``model`` on token ids ``x`` ``(rows, T)``: one no-grad forward
    through the layers (the head is not run)."""
    import torch

    probe = AttentionProbe([b.attn for b in model.blocks])
    probe.arm()
    try:
        with torch.no_grad(), autocast:
            model.hidden(x)
    finally:
        out = probe.disarm()
    return out
