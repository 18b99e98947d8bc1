"""Smart training: best-checkpoint tracking, early stopping and convergence signals.

Conventions follow Lightning's ``EarlyStopping``: ``monitor`` names a validation metric,
``mode`` says whether lower or higher is better, ``patience`` counts evaluations without an
improvement of at least ``min_delta``, ``stopping_threshold`` stops once the metric is good
enough, ``divergence_threshold`` once it is hopeless, and an infinite value stops the run. A
missing value (NaN: the mean of nothing, :mod:`backlm.missing`) is skipped: never a best,
never a wait; a diverged model is caught by its training loss, checked every step.

The best evaluation always gets a checkpoint and ``checkpoints/best.json``; with
``restore_best`` the run ends by loading those weights, so the experiment's final model is the
best one (and :func:`backlm.experiment.loading.resolve_step` picks it by default).
"""

from __future__ import annotations

import math
from typing import Any

from backlm.callbacks import Callback, LoopState
from backlm.errors import UserError
from backlm.missing import is_missing

STOP_REASONS = ("max steps", "early stop", "target reached", "diverged", "interrupted",
                "direction inverted")


class BestTracker(Callback):
    """Keeps ``best.json`` and, when enabled, stops the run early."""

    def __init__(self, state: LoopState) -> None:
        es = state.run.cfg.early_stop
        if es.mode not in ("min", "max"):
            raise UserError(f"early_stop.mode must be min or max, got {es.mode!r}")
        if es.patience < 1:
            raise UserError("early_stop.patience must be at least 1 evaluation")
        self.es = es
        self.sign = 1.0 if es.mode == "min" else -1.0
        self.best: float | None = None
        self.best_step: int | None = None
        self.best_evals: dict[str, float] = {}
        self.wait = 0
        self.pending: dict[str, Any] | None = None

    def on_train_start(self, state: LoopState) -> None:
        prior = state.run.exp.best("val")
        if prior and prior.get("monitor") == self.es.monitor and prior.get("step", 0) <= state.step \
                and not is_missing(prior.get("value")):
            self.best, self.best_step = float(prior["value"]), int(prior["step"])
            self.best_evals = dict(prior.get("evals") or {})
            self.wait = int(prior.get("wait", 0))

    def on_eval(self, state: LoopState, step: int, evals: dict[str, float]) -> None:
        if self.es.monitor not in evals:
            known = ", ".join(sorted(evals))
            raise UserError(f"early_stop.monitor {self.es.monitor!r} is not measured; "
                            f"choose one of {known}")
        value = float(evals[self.es.monitor])
        if is_missing(value):
            return  # nothing was measured: neither a best nor a wait (the loop warned once)
        if not math.isfinite(value):
            if self.es.stop_on_nonfinite:
                state.stop_reason = "diverged"
            return
        if self._improved(value):
            self.best, self.best_step, self.best_evals, self.wait = value, step, dict(evals), 0
            state.save_requested = True  # the best step must have a checkpoint to restore
            self.pending = self._record(step, value, evals)
        elif step > 0:
            self.wait += 1
        if not self.es.enabled or step == 0:
            return
        if self.es.stopping_threshold is not None and \
                self.sign * (value - self.es.stopping_threshold) <= 0:
            state.stop_reason = "target reached"
        elif self.es.divergence_threshold is not None and \
                self.sign * (value - self.es.divergence_threshold) > 0:
            state.stop_reason = "diverged"
        elif self.wait >= self.es.patience:
            state.stop_reason = "early stop"

    def _improved(self, value: float) -> bool:
        if self.best is None:
            return True
        return self.sign * (self.best - value) > self.es.min_delta

    def _record(self, step: int, value: float, evals: dict[str, float]) -> dict[str, Any]:
        word = "lowest" if self.es.mode == "min" else "highest"
        return {"step": step, "monitor": self.es.monitor, "mode": self.es.mode, "value": value,
                "reason": f"{word} {self.es.monitor} so far", "evals": evals, "wait": 0}

    def on_checkpoint(self, state: LoopState, step: int, folder: Any) -> None:
        if state.run.dist.main and self.pending and self.pending["step"] == step:
            state.run.exp.write_best("val", self.pending)
            self.pending = None

    def on_train_end(self, state: LoopState, status: str) -> None:
        state.best = {"step": self.best_step, "monitor": self.es.monitor, "value": self.best,
                    "evals": self.best_evals}
        if not self.es.restore_best or self.best_step is None or status == "failed":
            return
        if self.best_step == state.step or self.best_step == 0:
            return
        from backlm.experiment import checkpoint as ckpt

        folder = state.run.exp.checkpoint_dir(self.best_step)
        if folder.is_dir():
            weights, _, _ = ckpt.load(folder, with_optimizer=False)
            state.run.model.load_state_dict(weights)
            state.restored_step = self.best_step
            state.say(f"restored the best checkpoint: step {self.best_step} "
                      f"({self.es.monitor} {self.best:.4f})")


def slope(ys: list[float]) -> float:
    """Least-squares slope of ``ys`` against 0..n-1 (0 for fewer than two points)."""
    n = len(ys)
    if n < 2:
        return 0.0
    mx, my = (n - 1) / 2, sum(ys) / n
    den = sum((i - mx) ** 2 for i in range(n))
    return sum((i - mx) * (y - my) for i, y in enumerate(ys)) / den


class Convergence(Callback):
    """Each evaluation: train-loss slope and grad-norm trend over a window, val perplexity,
    and a plateau flag (relative val improvement over the last evaluations below 0.5%)."""

    def __init__(self, window: int = 50, plateau_evals: int = 3, plateau_rel: float = 0.005):
        self.window, self.plateau_evals, self.plateau_rel = window, plateau_evals, plateau_rel
        self.losses: list[float] = []
        self.grad_norms: list[float] = []
        self.vals: list[float] = []
        self.plateau_at: int | None = None

    def on_step_end(self, state: LoopState, step: int, record: dict[str, Any]) -> None:
        if "loss" in record and math.isfinite(record["loss"]):
            self.losses = (self.losses + [record["loss"]])[-self.window:]
            self.grad_norms = (self.grad_norms + [record["grad_norm"]])[-self.window:]
        if is_missing(record.get("val_loss")):
            return
        record["loss_slope"] = slope(self.losses)
        record["grad_norm_slope"] = slope(self.grad_norms)
        record["val_ppl"] = math.exp(min(record["val_loss"], 50.0))
        self.vals.append(record["val_loss"])
        recent = self.vals[-(self.plateau_evals + 1):]
        if len(recent) == self.plateau_evals + 1 and recent[0] > 0:
            gain = (recent[0] - min(recent[1:])) / recent[0]
            record["plateau"] = gain < self.plateau_rel
            if record["plateau"] and self.plateau_at is None:
                self.plateau_at = step
                state.say(f"plateau: val loss improved {gain:.2%} over the last "
                          f"{self.plateau_evals} evaluations")

    def on_train_end(self, state: LoopState, status: str) -> None:
        state.signals = {"loss_slope": slope(self.losses), "grad_norm_slope": slope(self.grad_norms),
                       "plateau_at": self.plateau_at}


def callbacks(state: LoopState) -> list[Callback]:
    """The run's convergence signals and best tracker (early stopping when enabled)."""
    return [Convergence(), BestTracker(state)]
