"""5CAT, the five-check alignment test; knows no training loop (only the callbacks seam).

Does a model read the way it declares (DESIGN.md §4)?

Five gates, each judged in the model's declared order on held-out VAL and OOD text (once per
marker for bidirectional models):

A. offset sweep: the model's log-prob for the token at offset k ∈ −3..+3 from each position;
   the real next token (+1) must beat every other offset by θA nats.
B. direction margin: CE of the same text in the opposite order against the declared order,
   relative; bidirectional models also under the wrong marker. Below zero: DIRECTION INVERTED.
C. context ablation: shuffling, or reversing, the context of the last K targets must cost them
   at least θC nats each.
D. rollout: greedy H-token continuations, fed back to the model, must match the reference at
   θD or more of the rate of teacher-forced top-1 predictions on the same targets.
E. generalisation: CE on OOD vs VAL within bins of matched predictive entropy; the mean
   relative gap must stay below θE.

:func:`run_fivecat` runs them on a model; :func:`backlm.fivecat.runner.check` is what
``backlm 5cat`` calls (load a checkpoint, run, save the result); :func:`training_callbacks` runs
them during training (``fivecat.every``) and keeps ``checkpoints/best_5cat.json``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from backlm.fivecat.engine import (
    GATES,
    INVERTED,
    FivecatResult,
    GateRow,
    run_fivecat,
    save_result,
)
from backlm.fivecat.spec import FivecatSpec, Samples, Thresholds, load_spec

if TYPE_CHECKING:
    from backlm.callbacks import Callback, LoopState

__all__ = [
    "GATES", "INVERTED", "FivecatResult", "FivecatSpec", "GateRow", "Samples", "Thresholds",
    "load_spec", "run_fivecat", "save_result", "training_callbacks",
]


def training_callbacks(state: LoopState) -> list[Callback]:
    """5CAT every ``fivecat.every`` steps of a training run (nothing when 0)."""
    if state.run.cfg.fivecat.every <= 0:
        return []
    from backlm.fivecat.callback import FivecatCallback

    return [FivecatCallback(state)]
