"""One module per verb; knows no tensors, no torch and no torchrun environment.

Each command parses options, calls one engine function and renders with rich.
Heavy imports happen inside command bodies, so ``backlm --help`` answers fast.
"""

__all__: list[str] = []
