"""``backlm data pairs``: a JSONL file of examples as forward and backward token records."""

from __future__ import annotations

from pathlib import Path

import typer

from backlm.ui import console, fail, user_errors

PREVIEW_CHARS = 60


@user_errors
def pairs(
    in_path: Path = typer.Argument(..., metavar="IN.jsonl", help="Examples: one JSON object a "
                                   "line with a 'text' string or chat 'messages'."),
    out_path: Path = typer.Argument(..., metavar="OUT.jsonl", help="Where to write the records "
                                    "(two per example, forward first)."),
    source_label: str = typer.Option(..., "--source-label", help="Stored as 'source' in every "
                                     "record (where the examples come from)."),
    validate: bool = typer.Option(False, "--validate", help="Check every round trip before "
                                  "writing; a failure writes nothing and exits 1."),
    preview: int = typer.Option(0, "--preview", metavar="N", help="Show the first N pairs "
                                "decoded and write nothing."),
    dataset: str = typer.Option(None, "--dataset", help="Use this dataset's tokenizer "
                                "(default: pydocs)."),
    tokenizer: Path = typer.Option(None, "--tokenizer", help="A folder with backlm_tokenizer.json "
                                   "(instead of --dataset)."),
) -> None:
    """Write a forward and a backward record per example, reversed at token level."""
    from backlm.data.pairs import make_pairs

    result = make_pairs(in_path, out_path, source_label, tokenizer=tokenizer, dataset=dataset,
                        validate=validate, preview=preview)
    if preview:
        _render_preview(result, preview)
        console.print(f"preview only: nothing written to {out_path}", highlight=False)
        return
    if result.validated:
        _render_counts(result)
    if result.failed:
        shown = ", ".join(str(i) for i in result.failed[:20])
        more = f" and {len(result.failed) - 20} more" if len(result.failed) > 20 else ""
        from rich.markup import escape

        raise fail(escape(f"{len(result.failed)} example(s) failed the round trip (0-based: "
                   f"{shown}{more}); nothing written to {out_path}"), code=1)
    console.print(f"wrote {len(result.records):,} records ({len(result.examples):,} examples: "
                  f"{result.text_examples:,} text, {result.chat_examples:,} chat; "
                  f"{result.tokens:,} tokens) to {result.written}", highlight=False)


def _render_counts(result) -> None:
    from rich.table import Table

    table = Table(title="round trips")
    table.add_column("count")
    table.add_column("value", justify="right")
    ok = len(result.examples) - len(result.failed)
    for name, value in (("examples", len(result.examples)), ("records", len(result.records)),
                        ("text examples", result.text_examples),
                        ("chat examples", result.chat_examples), ("tokens", result.tokens),
                        ("round trips OK", ok), ("round trips failed", len(result.failed))):
        table.add_row(name, f"{value:,}")
    console.print(table)


def _clip(text: str) -> str:
    text = text.replace("\n", "⏎")
    return text if len(text) <= PREVIEW_CHARS else text[: PREVIEW_CHARS - 1] + "…"


def _render_preview(result, n: int) -> None:
    from rich.table import Table
    from rich.text import Text

    tok = result.tokenizer
    table = Table(title=f"first {min(n, len(result.examples))} pair(s)", show_lines=True)
    table.add_column("#", justify="right")
    table.add_column("tokens", justify="right")
    table.add_column("forward (decoded)")
    table.add_column("backward (tokens in model order)")
    for ex in result.examples[:n]:
        forward, backward = result.records[2 * ex.index], result.records[2 * ex.index + 1]
        pieces = "|".join(tok.id_to_token_str(t) for t in backward["tokens"])
        table.add_row(str(ex.index), str(len(forward["tokens"])),
                      Text(_clip(tok.decode(forward["tokens"]))), Text(_clip(pieces)))
    console.print(table)
