"""Evaluation of trained models in every order; knows no training loop, server or hub.

``backlm eval`` (DESIGN.md §1-2):

- :mod:`backlm.evaluation.lm`: cross-entropy, bits per byte and loss by position on packed
  held-out text (also what training validation uses).
- :mod:`backlm.evaluation.tasks`: task sets (ARC, MMLU, GSM8K) read from their public parquet
  layouts, rendered in reading order, and the metrics that compare answers.
- :mod:`backlm.evaluation.scoring`: direction-aware scoring of those renderings with a model
  (conditional or joint multiple-choice scores, generation of the part the model writes).
- :mod:`backlm.evaluation.score`: the arrow-of-time probe, a text's log-probability in each
  order a model knows.
- :mod:`backlm.evaluation.runner`: one evaluation of one checkpoint, written to
  ``experiments/<id>/evaluations/<phase>/<direction>/<task>.json``.

Torch is imported inside functions only, so importing this package stays cheap.
"""

from __future__ import annotations

from backlm.evaluation.runner import EvalOptions, run_eval
from backlm.evaluation.score import score_text

__all__ = ["EvalOptions", "run_eval", "score_text"]
