"""One experiment folder and what it holds; knows no training loop, server, evaluation or hub.

- ``folder``: the folder object, every file name of its layout (DESIGN.md §2), ids, lookup;
- ``lock``: the run lock (pid and host);
- ``provenance``: where a run came from (commit, command line, versions, host);
- ``notes``: notes and issues, one timestamped line each;
- ``checkpoint``: one checkpoint folder, written whole or not at all;
- ``weights``: the one safetensors writer, deterministic, and the header that says what
  the weights are;
- ``compat``: whether a checkpoint agrees with what loads it;
- ``identity``: whether an existing experiment or stored result is the one asked for;
- ``loading``: a trained model loaded for use, with its tokenizer and direction;
- ``tree``: the rows of ``backlm ls`` (a running run at its live step) and the lineage
  forest of ``--tree``.
"""

from __future__ import annotations

from backlm.experiment.folder import Experiment, all_experiments, create, find
from backlm.experiment.identity import Difference, differs, run_identity
from backlm.experiment.loading import LoadedModel, load_model
from backlm.experiment.notes import add_note
from backlm.experiment.tree import list_rows, tree_rows

__all__ = ["Difference", "Experiment", "LoadedModel", "add_note", "all_experiments", "create",
           "differs", "find", "list_rows", "load_model", "run_identity", "tree_rows"]
