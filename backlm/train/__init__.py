"""Training: plan, launch and run the loop for every phase; knows no server, hub, comparison
or report.

- ``plan``: every check before anything is written; ``launch``: ``train(cfg)`` in-process or
  under torchrun; ``worker``: one torchrun rank; ``loop``: the loop on one rank;
- ``phases``: base, mid, sft and rl behind one interface; ``rl``: the RL phase;
- ``optim``: Muon, AdamW, the schedule; ``early_stop``: best checkpoint and stopping;
- ``faults``: fault injection for crash tests; ``cost``: estimates and prices;
  ``summary``: the run summary;
- ``branch``: a child experiment from a parent checkpoint; ``chain``: phase chains.
"""

from __future__ import annotations

from backlm.train.branch import plan_branch
from backlm.train.chain import run_chain
from backlm.train.launch import estimate_only, plan_launch, train
from backlm.train.summary import RunSummary, lineage_costs

__all__ = ["RunSummary", "estimate_only", "lineage_costs", "plan_branch", "plan_launch",
           "run_chain", "train"]
