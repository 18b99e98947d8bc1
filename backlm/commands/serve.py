"""``backlm serve --model EXP``: an OpenAI-compatible API and a chat page for one model."""

from __future__ import annotations

from pathlib import Path

import typer

from backlm.commands.options import DEVICE, EXPERIMENTS_DIR, STEP, experiments_root
from backlm.ui import console, user_errors

LOOPBACK = ("127.0.0.1", "::1", "localhost")


@user_errors
def serve(
    model: str = typer.Option(..., "--model", "-m", help="Experiment id, tag or folder."),
    step: int = STEP,
    host: str = typer.Option("127.0.0.1", "--host",
                             help="Address to listen on (default: this machine only)."),
    port: int = typer.Option(8000, "--port", help="Port (0 picks a free one)."),
    device: str = DEVICE,
    experiments: Path = EXPERIMENTS_DIR,
) -> None:
    """Serve a model: the chat page at /, OpenAI-compatible /v1/models and
    /v1/chat/completions (streaming too), /v1/score, /health and /model_info."""
    from backlm.errors import UserError

    if not 0 <= port <= 65535:
        raise UserError(f"--port must be between 0 and 65535, got {port}")
    import backlm
    from backlm.serve import serve as run

    served = backlm.load(model, experiments=experiments_root(experiments), step=step,
                         device=device or "auto")
    served.generate(max_new_tokens=2)  # the first request does not pay for first-use setup

    def ready(url: str) -> None:
        # the warning once listening: a host that cannot be bound is one error line, no more
        if host not in LOOPBACK:
            console.print(f"[yellow]listening on {host}: anyone who can reach it can use the "
                          "model (no authentication)[/]")
        console.print(f"serving {served.name} (step {served.step}, {served.phase}, "
                      f"{served.direction}) at {url}  ·  Ctrl-C stops", highlight=False,
                      soft_wrap=True)

    run(served.loaded, host, port, ready)
