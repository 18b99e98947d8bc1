"""5CAT during training: every ``fivecat.every`` steps, on a small sample, on rank 0.

The figures go into the step's record (``fivecat_score``, ``fivecat_A`` …) so every logger
gets them, and into the research log's ``/eval`` group (kind ``5cat``). A negative direction
margin prints a loud DIRECTION INVERTED warning and, with ``fivecat.stop_on_inversion``,
stops the run. ``checkpoints/best_5cat.json`` names the step with the best score (0.8·B +
0.2·D); that step always gets a checkpoint.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from backlm import atomic
from backlm.callbacks import Callback
from backlm.errors import UserError
from backlm.fivecat.engine import INVERTED, FivecatResult, inversion_message, run_fivecat
from backlm.fivecat.spec import load_spec

BEST_FILE = "best_5cat.json"
STOP_REASON = "direction inverted"


class FivecatCallback(Callback):
    """Runs 5CAT in the training loop and keeps ``best_5cat.json``."""

    def __init__(self, run: Any) -> None:
        cfg = run.cfg.fivecat
        self.every = cfg.every
        self.stop_on_inversion = cfg.stop_on_inversion
        self.spec = load_spec(cfg.spec or None).with_max_samples(cfg.max_samples)
        self.best: float | None = None
        self.pending: dict[str, Any] | None = None
        # The direction the model is judged as: the run's own, unless set to another one
        # (what a mislabeled checkpoint would claim, to see the alarm fire).
        self.direction: str | None = None

    def on_train_start(self, run: Any) -> None:
        """A resumed run keeps competing with the best score it had."""
        prior = read_best(run.exp.checkpoints)
        if prior and int(prior.get("step", 0)) <= run.step and prior.get("score") is not None:
            self.best = float(prior["score"])

    def on_step_end(self, run: Any, step: int, record: dict[str, Any]) -> None:
        """Every ``every`` steps: measure on rank 0, then act on rank 0's decision everywhere."""
        if step <= 0 or step % self.every:
            return  # step 0 is the untrained model: nothing to check yet
        result = self._measure(run) if run.dist.main else None
        stop, save = False, False
        if result is not None:
            record.update(result.figures())
            stop, save = self._react(run, step, result)
        stop, save = _agree(run, stop, save)  # every rank takes rank 0's decision
        if stop:
            run.stop_reason = STOP_REASON
        if save:
            run.save_requested = True  # the best 5CAT step must have a checkpoint

    def _measure(self, run: Any) -> FivecatResult:
        import torch

        model = run.raw_model
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                direction = self.direction or run.cfg.data.direction
                return run_fivecat(model, run.tokenizer, direction,
                                   run.data_dir, self.spec, run.autocast)
        finally:
            model.train(was_training)

    def _react(self, run: Any, step: int, result: FivecatResult) -> tuple[bool, bool]:
        """Print, log to the research log, and decide (stop, checkpoint) on rank 0."""
        figs = result.figures()
        run.print(f"5CAT step {step}: {result.passed_count}/5 " + " ".join(
            f"{g}{figs[f'fivecat_{g}']:+.2f}{'✓' if result.gate_passed(g) else '✗'}"
            for g in "ABCDE" if figs.get(f"fivecat_{g}") is not None)
            + f" · score {result.score:+.3f}")
        if result.inverted:
            run.print(f"!!! {inversion_message(result)}")
        _append_research_log(run, step, figs)
        save = False
        if math.isfinite(result.score) and (self.best is None or result.score > self.best):
            self.best = result.score
            self.pending = best_record(step, result)
            save = True
        return bool(result.inverted and self.stop_on_inversion), save

    def on_checkpoint(self, run: Any, step: int, folder: Path | None) -> None:
        """Write ``best_5cat.json`` once the best step's checkpoint exists (rank 0)."""
        if run.dist.main and self.pending and self.pending["step"] == step:
            atomic.write_json(run.exp.checkpoints / BEST_FILE, self.pending)
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


def read_best(checkpoints: Path) -> dict[str, Any] | None:
    """``best_5cat.json`` of a checkpoints folder, or None when absent or unreadable."""
    try:
        return json.loads((Path(checkpoints) / BEST_FILE).read_text())
    except (OSError, ValueError):
        return None


def _agree(run: Any, stop: bool, save: bool) -> tuple[bool, bool]:
    """Rank 0's (stop, save) decision on every rank: all of them must checkpoint together."""
    if run.dist.world <= 1:
        return stop, save
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        return stop, save
    flags = torch.tensor([int(stop), int(save)], dtype=torch.int64, device=run.device)
    dist.broadcast(flags, src=0)
    return bool(flags[0]), bool(flags[1])


def _append_research_log(run: Any, step: int, figs: dict[str, Any]) -> None:
    if not getattr(run.cfg.log, "hdf5", False):
        return
    try:
        from backlm.logs.hdf5 import append_eval
    except ImportError:
        return
    values = {k.removeprefix("fivecat_"): float(v) for k, v in figs.items() if v is not None}
    try:
        append_eval(run.exp.path / f"{run.cfg.phase}.h5", "5cat", step, values)
    except UserError as exc:  # the research log is a record, never a reason to stop training
        run.print(f"5CAT: not added to the research log: {exc}")


__all__ = ["BEST_FILE", "INVERTED", "STOP_REASON", "FivecatCallback", "best_record", "read_best"]
