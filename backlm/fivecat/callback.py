"""5CAT during training: every ``fivecat.every`` steps, on a small sample, on rank 0.

The figures go into the step's record (``fivecat_score``, ``fivecat_A`` …) so every logger
gets them, and into the research log's ``/eval`` group (kind ``5cat``). A negative direction
margin prints a loud DIRECTION INVERTED warning and, with ``fivecat.stop_on_inversion``,
stops the run. ``checkpoints/best_5cat.json`` names the step with the best score (0.8·B +
0.2·D); that step always gets a checkpoint.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from backlm.callbacks import Callback, LoopState
from backlm.direction import Direction
from backlm.distributed import broadcast_flags
from backlm.errors import UserError
from backlm.fivecat.engine import FivecatResult, inversion_message, run_fivecat
from backlm.fivecat.spec import load_spec

STOP_REASON = "direction inverted"


class FivecatCallback(Callback):
    """Runs 5CAT in the training loop and keeps ``best_5cat.json``."""

    def __init__(self, state: LoopState) -> None:
        cfg = state.run.cfg.fivecat
        self.every = cfg.every
        self.stop_on_inversion = cfg.stop_on_inversion
        self.spec = load_spec(cfg.spec or None).with_max_samples(cfg.max_samples)
        self.best: float | None = None
        self.pending: dict[str, Any] | None = None
        # The direction the model is judged as: the run's own, unless set to another one
        # (what a mislabeled checkpoint would claim, to see the alarm fire).
        self.direction: Direction | None = None

    def on_train_start(self, state: LoopState) -> None:
        """A resumed run keeps competing with the best score it had."""
        prior = state.run.exp.best("5cat")
        if prior and int(prior.get("step", 0)) <= state.step and prior.get("score") is not None:
            self.best = float(prior["score"])

    def on_step_end(self, state: LoopState, step: int, record: dict[str, Any]) -> None:
        """Every ``every`` steps: measure on rank 0, then act on rank 0's decision everywhere."""
        if step <= 0 or step % self.every:
            return  # step 0 is the untrained model: nothing to check yet
        run = state.run
        result = self._measure(state) if run.dist.main else None
        stop, save = False, False
        if result is not None:
            record.update(result.figures())
            stop, save = self._react(state, step, result)
        # every rank takes rank 0's decision: all of them must checkpoint together
        stop, save = broadcast_flags((stop, save), run.dist, run.device)
        if stop:
            state.stop_reason = STOP_REASON
        if save:
            state.save_requested = True  # the best 5CAT step must have a checkpoint

    def _measure(self, state: LoopState) -> FivecatResult:
        import torch

        run = state.run
        was_training = run.model.training
        run.model.eval()
        try:
            with torch.no_grad():
                direction = self.direction or run.cfg.data.direction
                return run_fivecat(run.model, run.tokenizer, direction,
                                   run.data_dir, self.spec, run.autocast)
        finally:
            run.model.train(was_training)

    def _react(self, state: LoopState, step: int, result: FivecatResult) -> tuple[bool, bool]:
        """Print, log to the research log, and decide (stop, checkpoint) on rank 0."""
        figs = result.figures()
        state.say(f"5CAT step {step}: {result.passed_count}/5 " + " ".join(
            f"{g}{figs[f'fivecat_{g}']:+.2f}{'✓' if result.gate_passed(g) else '✗'}"
            for g in "ABCDE" if figs.get(f"fivecat_{g}") is not None)
            + f" · score {result.score:+.3f}")
        if result.inverted:
            state.say(f"!!! {inversion_message(result)}")
        run = state.run
        if run.cfg.log.hdf5:
            from backlm.logs.hdf5 import log_eval

            try:
                log_eval(run.exp, run.cfg.phase, "5cat", step, result.log_values())
            except UserError as exc:  # the research log is a record, never a reason to stop
                state.say(f"5CAT: not added to the research log: {exc}")
        save = False
        if math.isfinite(result.score) and (self.best is None or result.score > self.best):
            self.best = result.score
            self.pending = best_record(step, result)
            save = True
        return bool(result.inverted and self.stop_on_inversion), save

    def on_checkpoint(self, state: LoopState, step: int, folder: Path | None) -> None:
        """Write ``best_5cat.json`` once the best step's checkpoint exists (rank 0)."""
        if state.run.dist.main and self.pending and self.pending["step"] == step:
            state.run.exp.write_best("5cat", self.pending)
            self.pending = None


def best_record(step: int, result: FivecatResult) -> dict[str, Any]:
    """What ``best_5cat.json`` holds: step, score, gate values and verdicts."""
    figs = result.figures()
    return {
        "step": step, "score": result.score, "formula": "0.8*B + 0.2*D",
        "gates_passed": result.passed_count, "inverted": result.inverted,
        "gates": {g: {"value": figs.get(f"fivecat_{g}"), "passed": result.gate_passed(g)}
                  for g in "ABCDE"},
        "marker_margin": figs.get("fivecat_B_marker"),
    }


__all__ = ["STOP_REASON", "FivecatCallback", "best_record"]
