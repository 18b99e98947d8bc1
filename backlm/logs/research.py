"""Training-dynamics records for the research log: per-token slices, gradient, activation and
attention statistics (schema in :mod:`backlm.logs.hdf5`).

Everything here runs on rank 0 only, at the cadences of :class:`backlm.config.LogConfig`; on
other steps the callback does nothing but two modulo checks, so the loop runs at full speed.
"""

from __future__ import annotations

import math
from typing import Any

from backlm.callbacks import Callback, LoopState
from backlm.logs.hdf5 import Hdf5Logger
from backlm.logs.probe import HookProbe


def to_numpy(tensor: Any, dtype: str) -> Any:
    """A tensor as a numpy array of ``dtype`` (bf16 goes through float32: numpy has no bf16)."""
    t = tensor.detach()
    if t.is_floating_point():
        t = t.float()
    return t.cpu().numpy().astype(dtype, copy=False)


def per_token_slice(model: Any, x: Any, y: Any, autocast: Any, chunk: int = 1024) -> dict:
    """Per-token losses, argmax predictions, ids and per-position mean loss of ``x``/``y``.

    One no-grad forward; the softcapped head runs over ``chunk`` positions at a time so a
    large vocabulary never materialises the slice's full logits.
    """
    import torch
    import torch.nn.functional as F

    from backlm.model import IGNORE_INDEX

    losses, preds = [], []
    with torch.no_grad(), autocast:
        h = model.hidden(x).flatten(0, 1)
        for hc, yc in zip(h.split(chunk), y.flatten().split(chunk), strict=True):
            logits = model.logits(hc).float()
            losses.append(F.cross_entropy(logits, yc, ignore_index=IGNORE_INDEX,
                                          reduction="none"))
            preds.append(logits.argmax(-1))
    valid = y != IGNORE_INDEX
    loss = torch.cat(losses).view_as(y).float().masked_fill(~valid, math.nan)
    return {"loss": to_numpy(loss, "float16"), "pred": to_numpy(torch.cat(preds).view_as(y), "int32"),
            "input": to_numpy(x, "int32"), "target": to_numpy(y, "int32"),
            "position_loss": to_numpy(torch.nanmean(loss, dim=0), "float32")}


def grad_stats(named_params: list[tuple[str, Any]]) -> dict[str, dict[str, float]]:
    """norm, mean, std, max_abs of each parameter's ``.grad`` (NaN where there is none)."""
    import torch

    rows = []
    for _, p in named_params:
        if p.grad is None:
            rows.append(torch.full((4,), math.nan, device=p.device))
            continue
        g = p.grad.detach().float()
        rows.append(torch.stack([g.norm(), g.mean(), g.std(correction=0), g.abs().max()]))
    table = torch.stack(rows).cpu().tolist()  # one device→host copy for every parameter
    return {name: dict(zip(("norm", "mean", "std", "max_abs"), row, strict=True))
            for (name, _), row in zip(named_params, table, strict=True)}


class ActivationProbe(HookProbe):
    """Forward hooks on transformer blocks that accumulate output statistics while armed."""

    def _reset(self) -> None:
        self._acc: list[Any] = [None] * len(self.modules)
        self._count = [0] * len(self.modules)

    def _register(self, i: int, module: Any) -> Any:
        return module.register_forward_hook(self._hook(i))

    def disarm(self) -> dict[str, dict[str, float]]:
        """Remove the hooks; return mean, std, rms, max_abs per block (``blocks.i``)."""
        import torch

        self._remove()
        out = {}
        for i, acc in enumerate(self._acc):
            if acc is None:
                out[f"blocks.{i}"] = dict.fromkeys(("mean", "std", "rms", "max_abs"), math.nan)
                continue
            s, sq, mx = torch.stack(acc).double().cpu().tolist()
            n = max(self._count[i], 1)
            mean, ms = s / n, sq / n
            out[f"blocks.{i}"] = {"mean": mean, "std": math.sqrt(max(ms - mean * mean, 0.0)),
                                  "rms": math.sqrt(ms), "max_abs": mx}
        return out

    def _hook(self, i: int):
        import torch

        def hook(module: Any, inputs: Any, output: Any) -> None:
            o = output.detach().float()
            s = [o.sum(dtype=torch.float64), o.pow(2).sum(dtype=torch.float64),
                 o.abs().max().double()]
            acc = self._acc[i]
            self._acc[i] = s if acc is None else [acc[0] + s[0], acc[1] + s[1],
                                                  torch.maximum(acc[2], s[2])]
            self._count[i] += o.numel()

        return hook


class ResearchCallback(Callback):
    """Feeds per-token slices and gradient, activation and attention statistics to the writer."""

    def __init__(self, state: LoopState, h5: Hdf5Logger) -> None:
        from backlm.logs.attention import AttentionProbe

        run = state.run
        log = run.cfg.log
        self.h5 = h5
        self.per_token_every, self.rows = log.per_token_every, log.per_token_rows
        self.stats_every, self.attention_every = log.stats_every, log.attention_every
        self.attention = AttentionProbe([b.attn for b in run.model.blocks])
        self.params = [(n, p) for n, p in run.model.named_parameters() if p.requires_grad]
        self.probe = ActivationProbe(list(run.model.blocks))
        # Hooks added and removed between steps would make torch.compile recompile every time.
        self.activations = not run.cfg.train.compile
        if not self.activations and self.stats_every:
            state.say("research log: activation statistics are off under train.compile")

    def _due(self, every: int, step: int) -> bool:
        return every > 0 and step % every == 0

    def on_step_start(self, state: LoopState, step: int) -> None:
        if self.activations and self._due(self.stats_every, step):
            self.probe.arm()

    def on_after_backward(self, state: LoopState, step: int) -> None:
        if self.probe.armed:
            self.h5.add_stats("activations", step, self.probe.disarm())
        if self._due(self.stats_every, step):
            self.h5.add_stats("gradients", step, grad_stats(self.params))
        if state.last_batch is None:
            return
        x, y = state.last_batch
        model, autocast = state.run.model, state.run.autocast()
        slice_due = self._due(self.per_token_every, step)
        attention_due = self._due(self.attention_every, step) and self.rows > 0
        if attention_due and slice_due:
            self.attention.arm()  # the slice's forward feeds the attention hooks too
        if slice_due:
            self.h5.add_per_token(step, per_token_slice(model, x[:self.rows], y[:self.rows],
                                                        autocast))
        if attention_due:
            from backlm.logs.attention import measure

            stats = self.attention.disarm() if slice_due else measure(model, x[:self.rows],
                                                                      autocast)
            if stats is not None:
                self.h5.add_arrays("attention", step, stats)

    def on_train_end(self, state: LoopState, status: str) -> None:
        if self.probe.armed:
            self.probe.disarm()
        if self.attention.armed:
            self.attention.disarm()
