"""Optimizers and learning-rate schedule (DESIGN.md §5).

Muon (momentum, then Newton–Schulz orthogonalisation of the update) for hidden matrices; AdamW
for the embedding, the head and any scalars, with nanochat's ``(model_dim / 768) ** -0.5``
scaling of the AdamW learning rates. Everything is single-process: under DDP the gradients are
already all-reduced when ``step()`` runs, so every rank applies the same update.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from backlm.config import OptimConfig

NS_COEFFS = (3.4445, -4.7750, 2.0315)  # quintic Newton–Schulz, Keller Jordan's tuned values


def orthogonalize(g: Tensor, steps: int = 5) -> Tensor:
    """Approximately replace ``g`` (``(..., m, n)``) by the nearest semi-orthogonal matrix.

    Quintic Newton–Schulz in bf16 on GPU (its tensor cores make it nearly free there) and
    fp32 on CPU (where bf16 matmuls are emulated and slower). Leading dims are a batch.
    """
    x = g.to(torch.bfloat16 if g.is_cuda else torch.float32)
    tall = x.size(-2) > x.size(-1)
    if tall:  # work on the wide orientation: the Gram matrix is then the small one
        x = x.mT
    x = x / (torch.linalg.vector_norm(x, dim=(-2, -1), keepdim=True) + 1e-7)
    if x.ndim == 2:
        x = x.unsqueeze(0)
    m, n = x.shape[-2:]
    gram_form = x.dtype == torch.float32 and 2 * n > 3 * m
    x = _newton_schulz_gram(x, steps) if gram_form else _newton_schulz(x, steps)
    x = x.view(*g.shape[:-2], *x.shape[-2:]) if g.ndim > 2 else x.squeeze(0)
    return x.mT if tall else x


def _newton_schulz(x: Tensor, steps: int) -> Tensor:
    a, b, c = NS_COEFFS
    for _ in range(steps):
        gram = x @ x.mT
        # b·A + c·A² and a·X + B·X as fused baddbmm: no separate elementwise passes
        poly = torch.baddbmm(gram, gram, gram, beta=b, alpha=c)
        x = torch.baddbmm(x, poly, x, beta=a)
    return x


def _newton_schulz_gram(x: Tensor, steps: int) -> Tensor:
    """The same iteration run on the ``m × m`` Gram matrix, for wide ``m × n`` matrices.

    Each step is ``X ← Q(A)·X`` with ``A = X·Xᵀ``; the ``Q``s are polynomials in the first
    Gram matrix, so they commute with it and ``A ← Q²·A``. Only the last step touches the
    wide matrix: 4m²n + 34m³ FLOPs instead of 20m²n + 10m³ (a win once n > 1.5·m). Exact in
    exact arithmetic; in fp32 it matches the direct form to ~1e-6 (bf16 would drift).
    """
    a, b, c = NS_COEFFS
    gram = x @ x.mT
    acc = None
    for i in range(steps):
        q = torch.baddbmm(gram, gram, gram, beta=b, alpha=c)
        q.diagonal(dim1=-2, dim2=-1).add_(a)
        acc = q if acc is None else q @ acc
        if i < steps - 1:
            gram = q @ (q @ gram)
    return acc @ x


class BaseOptimizer:
    """What backlm uses of ``torch.optim.Optimizer``: param groups with defaults, per-parameter
    state, ``zero_grad``, and torch's ``state_dict`` format (checkpoints written by either load
    in both). torch's own base class is not used: its first use imports ``torch._dynamo``, about
    2 s of every command's start on a 2-core CPU (BENCHMARKS.md, "Command → first step").
    """

    def __init__(self, params, defaults: dict[str, Any]):
        self.defaults = defaults
        self.state: dict[Tensor, dict[str, Any]] = {}
        groups = list(params)
        if not groups:
            raise ValueError("optimizer got an empty parameter list")
        if not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        self.param_groups: list[dict[str, Any]] = []
        seen: set[int] = set()
        for given in groups:
            group = {**defaults, **given}
            ps = group["params"]
            group["params"] = [ps] if isinstance(ps, Tensor) else list(ps)
            for p in group["params"]:
                if id(p) in seen:
                    raise ValueError("a parameter appears in more than one group")
                seen.add(id(p))
            self.param_groups.append(group)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear every gradient (``None``, or zeros in place)."""
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if set_to_none:
                    p.grad = None
                else:
                    p.grad.detach_().zero_()

    def state_dict(self) -> dict[str, Any]:
        """``{"state": {index: {...}}, "param_groups": [{..., "params": [index, ...]}]}``,
        parameters numbered in group order, as torch numbers them."""
        index: dict[int, int] = {}
        groups = []
        for group in self.param_groups:
            packed = {k: v for k, v in group.items() if k != "params"}
            packed["params"] = [index.setdefault(id(p), len(index)) for p in group["params"]]
            groups.append(packed)
        return {"state": {index[id(p)]: s for p, s in self.state.items()}, "param_groups": groups}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` (or the same torch optimizer) returned."""
        saved = state_dict["param_groups"]
        if len(saved) != len(self.param_groups) or any(
                len(s["params"]) != len(g["params"]) for s, g in zip(saved, self.param_groups, strict=True)):
            raise ValueError("optimizer state does not match this model's parameter groups")
        params = {i: p for s, g in zip(saved, self.param_groups, strict=True)
                  for i, p in zip(s["params"], g["params"], strict=True)}
        self.state = {}
        for i, values in state_dict["state"].items():
            p = params[int(i)]
            self.state[p] = {k: self._cast(p, k, v) for k, v in values.items()}
        for s, g in zip(saved, self.param_groups, strict=True):
            g.update({k: v for k, v in s.items() if k != "params"})

    @staticmethod
    def _cast(p: Tensor, key: str, value: Any) -> Any:
        if not isinstance(value, Tensor):
            return value
        if key == "step":  # the fused kernels keep their step counts as fp32 beside the params
            return value.to(dtype=torch.float32, device=p.device)
        return value.to(dtype=p.dtype, device=p.device) if p.is_floating_point() else value


class AdamW(BaseOptimizer):
    """AdamW through PyTorch's fused kernel (``torch._fused_adamw_``): the same op, arguments
    and state as ``torch.optim.AdamW(..., fused=True)``, so the updates are bit-identical to it
    (tests/train/test_optim.py) and its checkpoints load here."""

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.01):
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self) -> None:
        """One update of every parameter that has a gradient."""
        for group in self.param_groups:
            by_kind: dict[tuple, list[list[Tensor]]] = {}
            for p in group["params"]:
                if p.grad is None:
                    continue
                st = self.state.get(p)
                if st is None:
                    st = self.state[p] = {
                        "step": torch.zeros((), dtype=torch.float32, device=p.device),
                        "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
                        "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format)}
                lists = by_kind.setdefault((p.device, p.dtype), [[], [], [], [], []])
                for dest, t in zip(lists, (p, p.grad, st["exp_avg"], st["exp_avg_sq"], st["step"]),
                                   strict=True):
                    dest.append(t)
            beta1, beta2 = group["betas"]
            for ps, grads, avgs, sqs, steps in by_kind.values():
                torch._foreach_add_(steps, 1)
                torch._fused_adamw_(ps, grads, avgs, sqs, [], steps, amsgrad=False, lr=group["lr"],
                                    beta1=beta1, beta2=beta2, weight_decay=group["weight_decay"],
                                    eps=group["eps"], maximize=False, grad_scale=None, found_inf=None)


class Muon(BaseOptimizer):
    """MomentUm Orthogonalized by Newton–Schulz, for parameters with ≥ 2 dimensions.

    Leading dimensions are treated as a batch of matrices (a ``(3, C, C)`` qkv weight is three
    matrices). Matrices of the same shape, up to transposition, are orthogonalised in one
    batched call. The update is scaled by ``max(1, rows / cols) ** 0.5``; weight decay is
    decoupled (``p *= 1 - lr · wd``).
    """

    def __init__(self, params, lr: float = 0.02, momentum: float = 0.95, nesterov: bool = True,
                 ns_steps: int = 5, weight_decay: float = 0.0):
        defaults = dict(lr=lr, momentum=momentum, nesterov=nesterov, ns_steps=ns_steps,
                        weight_decay=weight_decay)
        super().__init__(params, defaults)
        for group in self.param_groups:
            for p in group["params"]:
                if p.ndim < 2:
                    raise ValueError(f"Muon takes matrices, got a parameter of shape {tuple(p.shape)}")

    @torch.no_grad()
    def step(self, closure=None):
        """One update of every parameter that has a gradient."""
        loss = closure() if closure is not None else None
        # bucket by (oriented) matrix shape so each bucket is one batched orthogonalisation
        buckets: dict[tuple, list[tuple[Tensor, dict[str, Any]]]] = {}
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    m, n = p.shape[-2:]
                    key = (min(m, n), max(m, n), p.dtype, p.device, group["ns_steps"])
                    buckets.setdefault(key, []).append((p, group))
        for (rows, cols, dtype, device, steps), items in buckets.items():
            sizes = [p[0].numel() // (rows * cols) for p in items]
            stacked = torch.empty(sum(sizes), rows, cols, dtype=dtype, device=device)
            for (p, group), slot in zip(items, stacked.split(sizes), strict=True):
                st = self.state.setdefault(p, {})
                buf = st.get("momentum_buffer")
                if buf is None:
                    buf = st["momentum_buffer"] = torch.zeros_like(p.grad)
                buf.lerp_(p.grad, 1 - group["momentum"])
                g, b = _wide(p.grad, rows), _wide(buf, rows)
                if group["nesterov"]:  # written straight into the batch: no extra copy
                    torch.lerp(g, b, group["momentum"], out=slot)
                else:
                    slot.copy_(b)
            ortho = orthogonalize(stacked, steps)
            for (p, group), o in zip(items, ortho.split(sizes), strict=True):
                m, n = p.shape[-2:]
                if group["weight_decay"]:
                    p.mul_(1 - group["lr"] * group["weight_decay"])
                upd = (o.mT if m > n else o).to(p.dtype)
                p.view(-1, m, n).add_(upd, alpha=-group["lr"] * max(1.0, m / n) ** 0.5)
        return loss


def _wide(t: Tensor, rows: int) -> Tensor:
    # (..., m, n) as a batch of (rows, cols) matrices, transposed when tall
    t = t.reshape(-1, *t.shape[-2:])
    return t if t.size(-2) == rows else t.mT


class Optimizers:
    """Muon and AdamW behind one ``step`` / ``zero_grad`` / ``state_dict`` interface.

    Every param group carries ``initial_lr`` (its base rate) and ``kind`` (``matrix``,
    ``embedding``, ``unembedding`` or ``scalar``).
    """

    def __init__(self, muon: Muon | None, adamw: AdamW):
        self.muon, self.adamw = muon, adamw

    @property
    def optimizers(self) -> list[BaseOptimizer]:
        """The underlying optimizers."""
        return [o for o in (self.muon, self.adamw) if o is not None]

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        """All param groups of both optimizers."""
        return [g for o in self.optimizers for g in o.param_groups]

    def step(self) -> None:
        """Apply one update with the gradients in ``.grad``."""
        for opt in self.optimizers:
            opt.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear every gradient."""
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        """Both optimizers' states (momentum buffers, Adam moments, step counts, lrs)."""
        return {"muon": self.muon.state_dict() if self.muon else None, "adamw": self.adamw.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned, for an exact resume."""
        if (state.get("muon") is None) != (self.muon is None):
            raise ValueError("optimizer state does not match this model (Muon groups differ)")
        if self.muon is not None:
            self.muon.load_state_dict(state["muon"])
        self.adamw.load_state_dict(state["adamw"])


def _unwrap(model: nn.Module) -> nn.Module:
    # DDP keeps the model in .module, torch.compile in ._orig_mod
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def build_optimizer(model: nn.Module, ocfg: OptimConfig) -> Optimizers:
    """Muon for ``model.param_groups()["matrix"]``, AdamW for the rest.

    AdamW rates (embedding, unembedding, scalar) are scaled by ``(model_dim / 768) ** -0.5``
    as in nanochat, so the defaults tuned at width 768 transfer to other widths. Every rate is
    multiplied by ``init_lr_frac`` (a fine-tuning branch starts gentler than pretraining).
    """
    inner = _unwrap(model)
    groups = inner.param_groups()
    width = inner.cfg.model_dim
    scale = (width / 768) ** -0.5 * ocfg.init_lr_frac
    adam_groups = [
        dict(params=groups[kind], lr=lr * scale, initial_lr=lr * scale, kind=kind)
        for kind, lr in (("embedding", ocfg.embedding_lr), ("unembedding", ocfg.unembedding_lr),
                         ("scalar", ocfg.scalar_lr))
        if groups.get(kind)
    ]
    adamw = AdamW(adam_groups, betas=tuple(ocfg.adam_betas), eps=1e-10, weight_decay=ocfg.weight_decay)
    muon = None
    if groups.get("matrix"):
        matrix_lr = ocfg.matrix_lr * ocfg.init_lr_frac
        muon = Muon([dict(params=groups["matrix"], initial_lr=matrix_lr, kind="matrix")],
                    lr=matrix_lr, momentum=ocfg.muon_momentum, weight_decay=ocfg.weight_decay,
                    ns_steps=ocfg.ns_steps)
    seen = {id(p) for g in (muon.param_groups if muon else []) + adamw.param_groups for p in g["params"]}
    missing = [n for n, p in inner.named_parameters() if p.requires_grad and id(p) not in seen]
    if missing:
        raise ValueError(f"parameters in no optimizer group: {missing}")
    return Optimizers(muon, adamw)


def lr_multiplier(step: int, max_steps: int, ocfg: OptimConfig) -> float:
    """Schedule factor for 0-based ``step``: linear warmup, constant, linear warmdown.

    Warmup gives ``(step + 1) / warmup_steps`` (so the first step already moves); warmdown
    runs over the last ``warmdown_frac · max_steps`` steps and reaches ``final_lr_frac`` at
    ``step == max_steps``. Where the two overlap the smaller factor wins.
    """
    mult = 1.0
    if ocfg.warmup_steps > 0 and step < ocfg.warmup_steps:
        mult = (step + 1) / ocfg.warmup_steps
    warmdown = round(ocfg.warmdown_frac * max_steps)
    if warmdown > 0 and step > max_steps - warmdown:
        progress = max(0.0, (max_steps - step) / warmdown)
        mult = min(mult, progress + (1 - progress) * ocfg.final_lr_frac)
    return mult


def muon_momentum(step: int, ocfg: OptimConfig) -> float:
    """Muon momentum, ramped linearly from ``muon_momentum_start`` over the warmup steps."""
    if ocfg.muon_momentum_warmup_steps <= 0:
        return ocfg.muon_momentum
    frac = min(step / ocfg.muon_momentum_warmup_steps, 1.0)
    return (1 - frac) * ocfg.muon_momentum_start + frac * ocfg.muon_momentum


def set_lr(optimizers: Optimizers, multiplier: float, momentum: float | None = None) -> None:
    """Set every group's lr to ``initial_lr · multiplier`` (and Muon momentum if given)."""
    for group in optimizers.param_groups:
        group["lr"] = group["initial_lr"] * multiplier
    if momentum is not None and optimizers.muon is not None:
        for group in optimizers.muon.param_groups:
            group["momentum"] = momentum


def apply_schedule(optimizers: Optimizers, step: int, max_steps: int, ocfg: OptimConfig) -> float:
    """Set lr and Muon momentum for ``step``; returns the lr multiplier (for logging)."""
    mult = lr_multiplier(step, max_steps, ocfg)
    set_lr(optimizers, mult, muon_momentum(step, ocfg))
    return mult
