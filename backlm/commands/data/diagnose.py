"""``backlm data diagnose``: show and verify packed rows in a direction."""

from __future__ import annotations

import typer

from backlm.ui import console, user_errors


@user_errors
def diagnose(
    direction: str = typer.Option(None, "--direction", "-d",
                                  help="forward (the default), backward or bidirectional."),
    dataset: str = typer.Option("pydocs", "--dataset", help="Dataset folder name."),
    split: str = typer.Option("val", "--split", help="Which split to pack: train, val or ood."),
    batches: int = typer.Option(4, "--batches", min=1, help="Batches to check."),
    seq_len: int = typer.Option(256, "--seq-len", min=8, help="Row length in tokens."),
    show: int = typer.Option(3, "--show", min=0, help="Decoded rows to print."),
    mix: float = typer.Option(0.5, "--mix", help="Bidirectional: share of backward documents."),
    ngram_chars: int = typer.Option(2_000_000, "--ngram-chars", min=0,
                                    help="Train-split characters for the n-gram direction "
                                         "signal (0: skip it)."),
) -> None:
    """Decode packed rows back to reading order and verify BOS, marker and round trips."""
    from rich.table import Table
    from rich.text import Text

    from backlm.commands.options import refuse_unused
    from backlm.data.diagnose import diagnose as run
    from backlm.data.vocab import tokenizer_dir
    from backlm.direction import Direction
    from backlm.paths import dataset_dir
    from backlm.tokenizer import Tokenizer

    direction_ = Direction.FORWARD if direction is None else Direction.parse(direction)
    if direction_ is not Direction.BIDIRECTIONAL:
        refuse_unused(f"for {direction_} rows: --mix only applies to bidirectional ones",
                      {"--mix": (mix, 0.5)})
    folder = dataset_dir(dataset)
    tokenizer = Tokenizer.load(tokenizer_dir(folder))
    report = run(folder, tokenizer, direction_, split=split, batches=batches, seq_len=seq_len,
                 show=show, mix=mix, ngram_chars=ngram_chars)

    for i, row in enumerate(report.samples):
        console.rule(f"row {i} · {row.documents} documents")
        console.print(Text.assemble(("model order    ", "bold cyan"), _clip(row.model_order)))
        console.print(Text.assemble(("reading order  ", "bold green"), _clip(row.reading_order)))
    table = Table(title=f"diagnose · {report.direction} · {dataset}/{report.split}")
    for col in ("check", "checked", "failed", "result"):
        table.add_column(col, justify="left" if col == "check" else "right")
    for c in report.checks:
        table.add_row(c.name, str(c.checked), str(c.failed),
                      "[green]✓ pass[/]" if c.ok else "[red]✗ FAIL[/]")
    for sig in report.signals:
        table.add_row(f"n-gram: {sig.order} documents read {sig.order}", str(sig.voters),
                      str(sig.voters - sig.agree), _signal_verdict(sig))
    console.print(table)
    for sig in report.signals:
        console.print(f"n-gram direction signal · {sig.order} documents: CE as read "
                      f"{sig.ce_as_is:.3f}, reversed {sig.ce_reversed:.3f} nats/token → "
                      f"Δ {sig.delta:+.3f}, reads {sig.reads} (bigram fitted on "
                      f"{report.ngram_tokens:,} reading-order tokens)", highlight=False)
    line = f"{report.rows} rows · {report.tokens:,} tokens · {report.target_fraction:.1%} carry loss"
    if report.backward_fraction is not None:
        line += f" · {report.backward_fraction:.1%} of documents backward (mix {mix})"
    console.print(line)
    if not report.passed:
        console.print("[bold red]diagnose FAILED[/]: the batches are not in the declared order")
        raise typer.Exit(1)
    console.print(f"[bold green]diagnose passed[/]: batches are {report.direction}")


def _signal_verdict(sig) -> str:
    if sig.contradicts:
        return f"[red]✗ FAIL: reads {sig.reads}[/]"
    if sig.reads == "inconclusive":
        return "[yellow]? inconclusive[/]"
    return "[green]✓ pass[/]"


def _clip(text: str, n: int = 240) -> str:
    text = text.replace("\n", "⏎")
    return text if len(text) <= n else text[:n] + "…"
