"""``backlm data prepare``: build the embedded docstring corpus (or, with ``--chat``, the
embedded chat set), no network needed."""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer

from backlm.ui import console, progress_bars, user_errors

if TYPE_CHECKING:
    from backlm.data.chat import ChatSummary
    from backlm.data.corpus import PrepareSummary

_STAGES = {
    "scan": "finding .py files",
    "extract": "reading docstrings",
    "write": "writing shards",
    "tokenizer": "training tokenizer",
    "cache": "tokenizing train shards into the token cache",
    "count": "counting tokens",
    "write_chat": "writing conversations",
}


@user_errors
def prepare(
    dataset: str | None = typer.Option(
        None, help="Dataset name (folder under $BACKLM_HOME/data); default pydocs, or "
        "pydocs-chat with --chat."),
    vocab_size: int | None = typer.Option(
        None, help="Tokenizer vocabulary, special tokens included (default 8192; not with "
        "--chat)."),
    workers: int = typer.Option(2, min=1, help="Processes reading source files."),
    force: bool = typer.Option(False, "--force", help="Rebuild even if the dataset exists."),
    chat: bool = typer.Option(
        False, "--chat", help="Build the chat set instead: questions about the local Python's "
        "functions, classes and modules answered from their docstrings, plus arithmetic."),
) -> None:
    """Build train/val/ood shards and a tokenizer from the local Python's docstrings."""
    from backlm.commands.options import refuse_unused
    from backlm.data.corpus import prepare_corpus
    from backlm.paths import dataset_dir

    if chat:
        refuse_unused("with --chat: a chat dataset has no tokenizer of its own (mid and SFT "
                      "runs use their parent's)", {"--vocab-size": (vocab_size, 8192)})
        _prepare_chat(dataset, workers, force)
        return
    vocab_size = 8192 if vocab_size is None else vocab_size
    dataset = "pydocs" if dataset is None else dataset
    target = dataset_dir(dataset)
    with progress_bars() as bars:
        summary = prepare_corpus(
            target, vocab_size=vocab_size, workers=workers, force=force,
            progress=lambda stage, done, total: bars(
                "prepare", done, total or None, description=_STAGES.get(stage, stage)),
        )
    if summary.existed:
        console.print(f"dataset [bold]{dataset}[/] already exists at {target}: kept "
                      "(use --force to rebuild it)")
    _print_summary(summary)


def _print_summary(summary: PrepareSummary) -> None:
    from rich.table import Table

    table = Table(title=f"dataset {summary.path.name}")
    for col in ("split", "documents", "characters", "tokens", "shards"):
        table.add_column(col, justify="left" if col == "split" else "right")
    for name, s in summary.splits.items():
        table.add_row(name, f"{s.documents:,}", f"{s.characters:,}", f"{s.tokens:,}",
                      str(s.shards))
    console.print(table)
    for note in summary.notes:
        console.print(f"[yellow]note:[/] {note}", soft_wrap=True, highlight=False)
    details = [f"path: {summary.path}"]
    if summary.vocab_size:
        details.append(f"vocab size: {summary.vocab_size:,}")
    if not summary.existed:
        details.append(f"{summary.files:,} source files, {summary.bytes / 1e6:.1f} MB of text "
                       f"in {summary.seconds:.0f} s")
    console.print("  ".join(details), highlight=False)


def _prepare_chat(dataset: str | None, workers: int, force: bool) -> None:
    from backlm.data.chat import CHAT_DATASET, prepare_chat
    from backlm.paths import dataset_dir

    target = dataset_dir(CHAT_DATASET if dataset is None else dataset)
    with progress_bars() as bars:
        summary = prepare_chat(
            target, force=force, workers=workers,
            progress=lambda stage, done, total: bars(
                "prepare", done, total or None,
                description=_STAGES.get("write_chat" if stage == "write" else stage, stage)),
        )
    if summary.existed:
        console.print(f"chat dataset [bold]{target.name}[/] already exists at {target}: "
                      "nothing to do (use --force to rebuild it)")
    _print_chat_summary(summary)


def _print_chat_summary(summary: ChatSummary) -> None:
    from rich.table import Table

    table = Table(title=f"chat dataset {summary.path.name}")
    table.add_column("split")
    table.add_column("conversations", justify="right")
    table.add_row("train", f"{summary.train:,}")
    table.add_row("val", f"{summary.val:,}")
    console.print(table)
    for note in summary.notes:
        console.print(f"[yellow]note:[/] {note}")
    details = f"path: {summary.path}"
    if not summary.existed:
        details += f"  built in {summary.seconds:.1f} s"
    console.print(details, highlight=False, soft_wrap=True)
