"""``backlm export EXP --format hf OUT``: a checkpoint as a Hugging Face model folder on disk
(transformers loads it with ``trust_remote_code=True``, no backlm needed)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape

from backlm.commands.options import EXPERIMENT, EXPERIMENTS_DIR, STEP, experiments_root
from backlm.ui import console, user_errors


@user_errors
def export(
    experiment: str = EXPERIMENT,
    out: Path = typer.Argument(..., help="The folder to write; it must not exist."),
    format_: str = typer.Option("hf", "--format", "-f",
                                help="Export format: hf (a transformers model folder)."),
    step: str = STEP,  # also best, best_5cat or latest here
    license_: str = typer.Option("mit", "--license", help="License id for the model card."),
    experiments: Path = EXPERIMENTS_DIR,
) -> None:
    """Export a checkpoint as a Hugging Face model folder.

    The folder is the one `backlm upload` stages: config.json (BacklmConfig,
    backlm_direction), the remote model code, model.safetensors, generation
    and tokenizer files (a real tokenizer.json; a chat template for chat
    phases), backlm's own tokenizer, metadata, evaluations and the model card.
    --step: a number, best, best_5cat or latest.
    """
    from backlm.hub.export import ExportRequest
    from backlm.hub.export import export as run_export

    result = run_export(ExportRequest(experiment, out, experiments_root(experiments),
                                      format=format_, step=step, license=license_))
    spec = result.spec
    size = sum(n for _, n in result.staged.files)
    console.print(f"[green]exported[/] {escape(spec.exp.id)} step {spec.step} "
                  f"({spec.direction}, {spec.phase}) to {escape(str(result.folder))}: "
                  f"{len(result.staged.files)} files, {size / 1e6:,.1f} MB", highlight=False)
    console.print("load it with transformers: AutoModelForCausalLM.from_pretrained(folder, "
                  "trust_remote_code=True) and AutoTokenizer.from_pretrained(folder); "
                  f"the model reads ids {spec.direction} (config.json's backlm_direction; "
                  "README.md says how to give them)", highlight=False, markup=False)
