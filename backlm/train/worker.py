"""Entry point of one torchrun rank: ``python -m backlm.train.worker --experiment PATH [--resume]``."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    """Train the given experiment on this rank; the launching process holds the lock."""
    from backlm.errors import UserError
    from backlm.experiment import Experiment
    from backlm.train.loop import run
    from backlm.ui import TrainDisplay

    parser = argparse.ArgumentParser(prog="backlm.train.worker")
    parser.add_argument("--experiment", required=True, type=Path)
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args(argv)
    display = os.environ.get("BACKLM_DISPLAY", "1") == "1" and os.environ.get("RANK", "0") == "0"
    try:
        exp = Experiment(args.experiment)
        run(exp, exp.config(), resume=args.resume, observers=[TrainDisplay()] if display else ())
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
