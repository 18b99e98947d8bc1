"""``backlm chat --model EXP``: talk to a model in a terminal, in its direction."""

from __future__ import annotations

from pathlib import Path

import typer

from backlm.commands.options import DEVICE, EXPERIMENTS_DIR, STEP, experiments_root
from backlm.ui import console, user_errors

HELP = ("/forward  /backward  write the next turn forward or backward (bidirectional models)\n"
        "/show  the whole conversation in reading order   /clear  /help  /quit  /exit\n"
        "/temperature T  /topk K (0: off)")


@user_errors
def chat(
    model: str = typer.Option(..., "--model", "-m", help="Experiment id, tag or folder."),
    step: int = STEP,
    prompt: str = typer.Option(None, "--prompt", "-p",
                               help="Answer this once and exit (plain output)."),
    temperature: float = typer.Option(0.8, "--temperature", "-t", help="0 is greedy."),
    top_k: int = typer.Option(None, "--top-k", help="Sample from the K likeliest tokens."),
    max_tokens: int = typer.Option(256, "--max-tokens", help="Most tokens per turn."),
    direction: str = typer.Option(None, "--direction", "-d",
                                  help="forward or backward (bidirectional models)."),
    seed: int = typer.Option(None, "--seed", help="Seed for reproducible sampling."),
    device: str = DEVICE,
    experiments: Path = EXPERIMENTS_DIR,
) -> None:
    """Chat with a model. Forward: you write the user turn, it answers. Backward: you give the
    ending (the assistant's turn), it writes what came before; the conversation grows toward
    its beginning and is shown in reading order."""
    import backlm
    from backlm.errors import check_argument
    from backlm.serve import Sampling

    check_argument(prompt, "--prompt")
    sampling = Sampling(temperature, top_k, max_tokens, seed).check()
    loaded = backlm.load(model, experiments=experiments_root(experiments), step=step,
                         device=device or "auto")
    session = loaded.chat(direction)
    if prompt is not None:
        typer.echo(_turn(session, prompt, sampling, live=False))
        return
    console.print(f"[bold]{loaded.name}[/] step {loaded.step} · {loaded.phase} · "
                  f"{loaded.direction.arrow} {loaded.direction}\n{HELP}", highlight=False)
    _loop(session, sampling)


def _loop(session, sampling) -> None:
    from backlm.errors import UserError, check_text

    while True:
        try:
            line = _read_line(session)
            if line is None:
                return
            text = check_text(line, "the chat line", os_bytes=True).strip()
            if text in ("/quit", "/exit"):
                return
            if text.startswith("/"):
                sampling = _command(session, text, sampling)
                continue
            _turn(session, line, sampling, live=True)
            s = session.stats
            console.print(f"[dim]{s.tokens} tokens · {s.tokens_per_sec:,.0f} tokens/s[/]")
        except UserError as exc:
            console.print(f"[red]{exc}[/]", highlight=False)
        except KeyboardInterrupt:
            console.print("\n[dim](turn stopped; the conversation is as it was)[/]")


def _read_line(session) -> str | None:
    """The next line typed, or None when the input ends; a line that is not UTF-8 is a
    UserError through the text boundary."""
    from backlm.errors import text_from_bytes

    try:
        return console.input(f"[bold]{session.order.arrow} {session.order} you>[/] ")
    except (EOFError, KeyboardInterrupt):
        console.print()
        return None
    except UnicodeDecodeError as exc:  # a strict-UTF-8 stdin read bytes that are not UTF-8
        return text_from_bytes(bytes(exc.object), "the chat line")


def _command(session, text: str, sampling):
    """Apply one slash command; the (possibly changed) sampling settings."""
    from dataclasses import replace

    from backlm.direction import Direction
    from backlm.errors import UserError

    name, _, arg = text.partition(" ")
    if name in ("/forward", "/backward"):
        session.switch(Direction.parse(name[1:]))  # the slash command's name
        console.print(f"next turns: {session.order.arrow} {session.order}")
    elif name == "/show":
        _show(session)
    elif name == "/clear":
        session.clear()
        console.print("conversation cleared")
    elif name == "/help":
        console.print(HELP, highlight=False)
    elif name in ("/temperature", "/topk"):
        try:
            value = float(arg) if name == "/temperature" else int(arg)
        except ValueError:
            raise UserError(f"{name} needs a number, e.g. {name} 0.7") from None
        key = "temperature" if name == "/temperature" else "top_k"
        sampling = replace(sampling, **{key: value or (None if key == "top_k" else 0.0)})
        sampling.check()
        console.print(f"{key} = {value}")
    else:
        raise UserError(f"unknown command {name}: /help lists them")
    return sampling


def _show(session) -> None:
    """The conversation so far, first turn first, whichever order wrote it."""
    if session.plain:
        console.print(session.text or "(empty)", highlight=False, markup=False)
        return
    if not session.messages:
        console.print("(empty)")
    for m in session.messages:
        console.print(f"{m['role']}: {m['content']}", highlight=False, markup=False)


def _turn(session, text: str, sampling, live: bool) -> str:
    """The model's turn, streamed where it belongs in a terminal; its reading-order text."""
    from rich.live import Live
    from rich.text import Text

    shown = ""
    if not live or not console.is_terminal:
        for piece in session.send(text, sampling):
            shown = piece.place(shown)
        if live:
            console.print(shown, highlight=False, markup=False)
        return shown
    with Live(Text(""), console=console, refresh_per_second=20, transient=False) as view:
        for piece in session.send(text, sampling):
            shown = piece.place(shown)
            view.update(Text(f"model: {shown}"))
    return shown
