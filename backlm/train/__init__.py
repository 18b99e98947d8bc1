"""Training: plan, launch and run the loop for every phase; knows no server, hub, comparison
or report.

- ``plan``: every check before anything is written; ``launch``: ``train(cfg)`` in-process or
  under torchrun; ``worker``: one torchrun rank; ``loop``: the loop on one rank;
- ``step``: the ``Phase`` interface the loop's one step calls; ``phases``: base, mid and sft;
  ``rl``: the RL phase;
- ``optim``: Muon, AdamW, the schedule; ``early_stop``: best checkpoint and stopping;
- ``faults``: fault injection for crash tests; ``cost``: estimates and prices;
  ``summary``: the run summary;
- ``branch``: a child experiment from a parent checkpoint; ``chain``: phase chains.
"""

from __future__ import annotations

from backlm.train.branch import plan_branch
from backlm.train.chain import run_chain, train_phases
from backlm.train.launch import estimate_only, plan_launch, train
from backlm.train.phases import ChatPhase, TextPhase, phase_for
from backlm.train.rl import RLPhase
from backlm.train.step import MicroBatch, Phase, mean_over_orders
from backlm.train.summary import RunSummary, lineage_costs

__all__ = ["ChatPhase", "MicroBatch", "Phase", "RLPhase", "RunSummary", "TextPhase",
           "estimate_only", "lineage_costs", "mean_over_orders", "phase_for", "plan_branch",
           "plan_launch", "run_chain", "train", "train_phases"]
