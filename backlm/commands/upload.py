"""``backlm upload EXP --repo namespace/name``: stage a checkpoint as a Hugging Face model
folder (weights, config, tokenizer, metadata, evaluations, model card) and push it."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape

from backlm.commands.options import EXPERIMENT, EXPERIMENTS_DIR, STEP, experiments_root
from backlm.ui import console, user_errors


@user_errors
def upload(
    experiment: str = EXPERIMENT,
    repo: str = typer.Option(..., "--repo", "-r",
                             help="Hub model id, namespace/name (your user or organisation)."),
    step: str = STEP,  # also best, best_5cat or latest here
    private: bool = typer.Option(False, "--private", help="Create the repo private (a new "
                                 "repo only; an existing one keeps its visibility)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Stage the folder and show it and "
                                 "the card; contact nothing."),
    token: str = typer.Option(None, "--token", show_default=False,
                              help="Hub write token (default: $HF_TOKEN; prefer the variable: "
                                   "a flag shows in the process list). Never printed or saved."),
    endpoint: str = typer.Option(None, "--endpoint",
                                 help="Hub URL (default: $HF_ENDPOINT, else "
                                      "https://huggingface.co)."),
    license_: str = typer.Option("mit", "--license", help="License id for the model card."),
    experiments: Path = EXPERIMENTS_DIR,
) -> None:
    """Stage a checkpoint for the Hugging Face Hub and push it.

    The folder (the experiment's hub_upload/) holds model.safetensors, whose
    header names the direction, model config, phase and step; config.json;
    the tokenizer; a metadata subset; that step's evaluations and 5CAT; and
    README.md, a card that says first which way the model reads and how to
    prompt it. --step: a number, best, best_5cat or latest.
    """
    from backlm.hub import UploadRequest
    from backlm.hub import upload as run_upload

    req = UploadRequest(experiment, repo, experiments_root(experiments), step=step,
                        private=private, dry_run=dry_run, token=token, endpoint=endpoint,
                        license=license_)
    pushing = _Pushing()
    try:
        result = run_upload(req, on_event=pushing)
    finally:
        pushing.stop()
    _files_table(result)
    spec = result.plan.spec
    if dry_run:
        console.rule("README.md (the model card)")
        console.print(result.staged.card, markup=False, highlight=False, soft_wrap=True)
        console.rule()
        console.print(f"dry run: staged in {result.folder}; nothing was sent. Push it with "
                      f"`backlm upload {experiment} --repo {spec.repo_id}`",
                      highlight=False, markup=False)
        return
    commit = f" (commit {result.commit[:12]})" if result.commit else ""
    console.print(f"[green]pushed[/] {escape(spec.repo_id)} to {escape(str(result.url))}"
                  f"{commit}; the staged copy is in {escape(str(result.folder))}",
                  highlight=False)


class _Pushing:
    """A spinner while the push runs (transient: a refused push prints its error line only)."""

    def __init__(self) -> None:
        self.status = None

    def __call__(self, event: str, result) -> None:
        if event != "pushing":
            return
        spec, files = result.plan.spec, result.staged.files
        size = sum(n for _, n in files) / 1e6
        self.status = console.status(escape(f"pushing {len(files)} files ({size:,.1f} MB) to "
                                            f"{spec.repo_id} at {spec.endpoint} …"))
        self.status.start()

    def stop(self) -> None:
        if self.status is not None:
            self.status.stop()


def _files_table(result) -> None:
    """The staged files with their sizes, and the evaluations left out."""
    from rich.table import Table

    spec = result.plan.spec
    table = Table(title=f"{spec.exp.id} step {spec.step} ({spec.direction}, {spec.phase}) "
                        f"for {spec.repo_id}")
    table.add_column("file")
    table.add_column("bytes", justify="right")
    for name, size in result.staged.files:
        table.add_row(escape(name), f"{size:,}")
    console.print(table)
    for line in result.staged.skipped:
        console.print(f"[yellow]not staged[/] (another step's evaluation): {escape(line)}",
                      highlight=False)
