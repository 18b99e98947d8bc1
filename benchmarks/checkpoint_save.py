"""What a checkpoint save costs: the weights file by safetensors' own writer vs backlm's
deterministic one, and a whole :func:`backlm.experiment.checkpoint.save` (weights, optimizer
state, meta).

Usage::

    python benchmarks/checkpoint_save.py [--config d12] [--repeats 5] [--dir /tmp]

The preset's model and optimizer are built on the CPU in fp32 and the optimizer takes one step
on zero gradients, so its state has the shapes of a real run's. Each write goes to the page
cache (neither writer fsyncs the file), so this measures the writers, not the disk. The median
of ``--repeats`` is printed.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path


def build(preset: str):
    """The preset's model (fp32, CPU) and an optimizer with one step's state."""
    import torch

    from backlm.config import RunConfig, load_config
    from backlm.model.gpt import GPT
    from backlm.train.optim import build_optimizer

    cfg = load_config(RunConfig, preset=preset)
    torch.manual_seed(0)
    model = GPT(cfg.model)
    opt = build_optimizer(model, cfg.optim)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    return cfg, model, opt


def median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="d12")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dir", default=None, help="where to write (default: a temp folder)")
    args = parser.parse_args()

    from safetensors.torch import save_file

    from backlm.experiment import checkpoint as ckpt
    from backlm.experiment import weights

    cfg, model, opt = build(args.config)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    mb = sum(t.numel() * t.element_size() for t in state.values()) / 1e6
    meta = {"step": 1, "phase": "base", "direction": "forward", "tokens": 0, "loaders": [],
            "model_config": dict(vars(cfg.model)), "rng": ckpt.rng_state(cuda=False),
            "tokenizer": {"sha256": "0" * 64}}
    header = weights.checkpoint_header(meta)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        root = Path(tmp)
        st = median_seconds(lambda: save_file(state, str(root / "a.safetensors"),
                                              metadata=header), args.repeats)
        ours = median_seconds(lambda: weights.write(root / "b.safetensors", state, header),
                              args.repeats)
        whole = median_seconds(lambda: ckpt.save(root / "step_000001", model.state_dict(),
                                                 opt.state_dict(), meta), args.repeats)
        optim_mb = (root / "step_000001" / ckpt.OPTIM_FILE).stat().st_size / 1e6
    print(f"{args.config}: weights {mb:,.0f} MB, optimizer state {optim_mb:,.0f} MB "
          f"(median of {args.repeats})")
    print(f"  weights file, safetensors save_file : {st:.3f} s ({mb / st:,.0f} MB/s)")
    print(f"  weights file, backlm weights.write  : {ours:.3f} s ({mb / ours:,.0f} MB/s)")
    print(f"  whole checkpoint.save               : {whole:.3f} s")


if __name__ == "__main__":
    main()
