"""The training loop: ``run(exp_path, resume)`` trains one experiment on one rank.

The same function runs in-process (CPU, one GPU) and in every torchrun worker. It never
branches on direction: direction only selects the data transform, in the loaders.

Data parallelism: a step's global batch is split into ``streams = total_batch_tokens /
(device_batch_size * seq_len)`` fixed document streams; rank ``r`` of ``W`` owns streams
``r*accum .. r*accum+accum-1`` and visits them as its gradient-accumulation micro-steps. The
global batch therefore does not depend on how many processes share it, so a 2-process run
reproduces a 1-process run with the same global batch.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backlm import checkpoint as ckpt
from backlm.config import RunConfig, load_config
from backlm.direction import eval_orders
from backlm.errors import UserError
from backlm.experiment import Experiment, utcnow


@dataclass
class RunSummary:
    """What a finished run reports."""

    exp_id: str
    path: str
    status: str
    steps: int
    tokens: int
    wall_seconds: float
    tokens_per_sec: float
    mfu: float
    val_loss: float | None
    val_bpb: float | None
    first_val_bpb: float | None
    device: str


@dataclass
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed() -> DistInfo:
    """Join the torchrun process group when launched by torchrun; else one process."""
    import torch
    import torch.distributed as dist

    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return DistInfo()
    info = DistInfo(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]),
                    int(os.environ.get("LOCAL_RANK", 0)))
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() and os.environ.get(
            "BACKLM_DIST_BACKEND", "") != "gloo" else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(info.local_rank)
        dist.init_process_group(backend=backend)
    return info


def plan_streams(cfg: RunConfig, world: int) -> tuple[int, int]:
    """``(streams, accum)``: document streams per step and micro-steps per rank."""
    rows = cfg.train.device_batch_size * cfg.model.seq_len
    if cfg.train.total_batch_tokens % rows:
        raise UserError(
            f"train.total_batch_tokens ({cfg.train.total_batch_tokens}) must be a multiple of "
            f"device_batch_size × seq_len ({rows})"
        )
    streams = cfg.train.total_batch_tokens // rows
    if streams % world:
        raise UserError(f"{streams} micro-batches per step cannot be split over {world} ranks: "
                        "change train.total_batch_tokens or the number of processes")
    return streams, streams // world


def load_run_config(exp: Experiment) -> RunConfig:
    """The resolved config an experiment was created with."""
    path = exp.path / "config.yaml"
    if not path.is_file():
        raise UserError(f"experiment {exp.id} has no config.yaml; it cannot be trained")
    return load_config(RunConfig, preset=str(path))


class TrainingRun:
    """Everything one rank's loop needs, built once; callbacks receive it."""

    def __init__(self, exp: Experiment, cfg: RunConfig, dist_info: DistInfo) -> None:
        import torch

        from backlm.data.loader import PackedLoader
        from backlm.data.shards import list_shards
        from backlm.hardware import resolve_device
        from backlm.model import GPT
        from backlm.optim import build_optimizer
        from backlm.tokenizer import Tokenizer

        self.exp, self.cfg, self.dist = exp, cfg, dist_info
        self.dev = resolve_device(cfg.train.device, cfg.train.dtype, dist_info.local_rank)
        self.device = torch.device(self.dev.device)
        torch.manual_seed(cfg.train.seed)
        self.tokenizer = Tokenizer.load(exp.path / "tokenizer")
        self.data_dir = data_dir = Path(exp.metadata()["data_dir"])
        self.streams, self.accum = plan_streams(cfg, dist_info.world)
        shards = list_shards(data_dir, "train")
        first = dist_info.rank * self.accum
        self.loaders = [
            PackedLoader(shards, self.tokenizer, cfg.data.direction,
                         batch_size=cfg.train.device_batch_size, seq_len=cfg.model.seq_len,
                         seed=cfg.train.seed, mix=cfg.data.mix, rank=v, world_size=self.streams,
                         docs_per_batch=cfg.data.docs_per_batch, buffer_docs=cfg.data.buffer_docs,
                         threads=cfg.data.tokenizer_threads)
            for v in range(first, first + self.accum)
        ]
        self.val_shards = list_shards(data_dir, "val")
        self.model = GPT(cfg.model).to(self.device)
        self.raw_model = self.model
        if dist_info.world > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.dev.is_cuda else None
            self.model = DDP(self.model, device_ids=ids)
        self.opt = build_optimizer(self.raw_model, cfg.optim)
        self.forward = torch.compile(self.model) if cfg.train.compile else self.model
        self.token_bytes = torch.tensor(self.tokenizer.token_byte_lengths(), dtype=torch.float32,
                                        device=self.device)
        self.flops_per_token = self.raw_model.flops_per_token()
        # Loop state that callbacks read (and, for the last two, set).
        self.step = 0
        self.tokens = 0
        self.last_batch: tuple[Any, Any] | None = None  # last micro-batch (inputs, targets)
        self.stop_reason: str | None = None
        self.save_requested = False
        self.print = print
        # Filled in at the end by the smart-training callbacks.
        self.best: dict[str, Any] = {}
        self.signals: dict[str, Any] = {}
        self.restored_step: int | None = None
        self.last_saved: int | None = None
        self.loader_snapshot: list[dict[str, Any]] | None = None

    def autocast(self):
        import torch

        if self.dev.dtype == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()


def _rng_state(device_is_cuda: bool) -> dict[str, Any]:
    import torch

    state = {
        "torch": ckpt.encode_bytes(torch.get_rng_state().numpy().tobytes()),
        "python": json.dumps(random.getstate()),
    }
    if device_is_cuda:
        state["cuda"] = ckpt.encode_bytes(torch.cuda.get_rng_state().numpy().tobytes())
    return state


def _set_rng_state(state: dict[str, Any], device_is_cuda: bool) -> None:
    import numpy as np
    import torch

    torch.set_rng_state(torch.from_numpy(
        np.frombuffer(ckpt.decode_bytes(state["torch"]), dtype=np.uint8).copy()))
    py = json.loads(state["python"])
    random.setstate((py[0], tuple(py[1]), py[2]))
    if device_is_cuda and "cuda" in state:
        torch.cuda.set_rng_state(torch.from_numpy(
            np.frombuffer(ckpt.decode_bytes(state["cuda"]), dtype=np.uint8).copy()))


def _all_reduce_mean(values: list[float], ctx: TrainingRun) -> list[float]:
    if ctx.dist.world == 1:
        return values
    import torch
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64, device=ctx.device)
    dist.all_reduce(t)
    return (t / ctx.dist.world).tolist()


def evaluate(ctx: TrainingRun, orders: list[tuple[str, str, float]]) -> dict[str, float]:
    """Validation loss and bits per byte, per concrete order for bidirectional runs.

    ``orders`` lists ``(name, direction, mix)``; each is evaluated on the first
    ``eval_tokens`` of the val split (split across ranks), and the sums are all-reduced.
    """
    from backlm.data.loader import PackedLoader
    from backlm.evaluation.lm import accumulate_loss

    cfg = ctx.cfg
    out: dict[str, float] = {}
    ctx.model.eval()
    per_rank = max(1, cfg.train.eval_tokens // ctx.dist.world)
    for name, direction, mix in orders:
        loader = PackedLoader(ctx.val_shards, ctx.tokenizer, direction,
                              batch_size=cfg.train.device_batch_size, seq_len=cfg.model.seq_len,
                              seed=cfg.train.seed, mix=mix, rank=ctx.dist.rank,
                              world_size=ctx.dist.world, loop=False, shuffle=False,
                              threads=cfg.data.tokenizer_threads)
        sums = accumulate_loss(ctx.raw_model, loader, ctx.token_bytes, ctx.device, per_rank,
                               ctx.autocast())
        nats, nbytes, ntok = _all_reduce_mean([sums.nats, sums.bytes, sums.tokens], ctx)
        suffix = "" if name == "" else f"_{name}"
        out[f"val_loss{suffix}"] = nats / max(ntok, 1)
        out[f"val_bpb{suffix}"] = nats / (math.log(2) * max(nbytes, 1))
    if len(orders) > 1:
        out["val_loss"] = sum(out[f"val_loss_{n}"] for n, _, _ in orders) / len(orders)
        out["val_bpb"] = sum(out[f"val_bpb_{n}"] for n, _, _ in orders) / len(orders)
    ctx.model.train()
    return out


def _gather_loader_states(ctx: TrainingRun) -> list[dict[str, Any]]:
    states = [ld.state_dict() for ld in ctx.loaders]
    if ctx.dist.world == 1:
        return states
    import torch.distributed as dist

    every: list[Any] = [None] * ctx.dist.world
    dist.all_gather_object(every, states)
    return [s for rank_states in every for s in rank_states]


def _save(ctx: TrainingRun, step: int, tokens: int, evals: dict[str, float]) -> Path | None:
    states = _gather_loader_states(ctx)  # every rank takes part in the gather
    if not ctx.dist.main:
        return None
    cfg = ctx.cfg
    meta = {
        "phase": cfg.phase, "direction": cfg.data.direction, "tokens": tokens,
        "model_config": dict(vars(cfg.model)), "val": evals, "loaders": states,
        "rng": _rng_state(ctx.dev.is_cuda), "world_size": ctx.dist.world,
        "saved": utcnow(),
    }
    return ckpt.save(ctx.exp.checkpoints, step, ctx.raw_model.state_dict(), ctx.opt.state_dict(),
                     meta)


def _restore(ctx: TrainingRun) -> tuple[int, int, dict[str, float]]:
    folder = ckpt.latest(ctx.exp.checkpoints)
    if folder is None:
        return 0, 0, {}
    model_state, optim_state, meta = ckpt.load(folder)
    ctx.raw_model.load_state_dict(model_state)
    ctx.opt.load_state_dict(optim_state)
    states = meta["loaders"]
    if len(states) != ctx.streams:
        raise UserError(f"checkpoint has {len(states)} data streams, this run {ctx.streams}: "
                        "resume with the same batch settings")
    first = ctx.dist.rank * ctx.accum
    for loader, state in zip(ctx.loaders, states[first:first + ctx.accum], strict=True):
        loader.load_state_dict(state)
    _set_rng_state(meta["rng"], ctx.dev.is_cuda)
    return int(meta["step"]), int(meta["tokens"]), dict(meta.get("val") or {})


class _Display:
    """Rich progress on rank 0: step, loss, lr, tokens/s, MFU, ETA."""

    def __init__(self, enabled: bool, total: int, start: int) -> None:
        self.progress = None
        if not enabled:
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        from backlm.ui import console

        self.progress = Progress(
            TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[stats]}"), TimeRemainingColumn(), console=console,
        )
        self.progress.start()
        self.task = self.progress.add_task("train", total=total, completed=start, stats="")

    def update(self, step: int, stats: str) -> None:
        if self.progress:
            self.progress.update(self.task, completed=step, stats=stats)

    def print(self, text: str) -> None:
        if self.progress:
            self.progress.console.print(text, highlight=False)

    def close(self) -> None:
        if self.progress:
            self.progress.stop()


def _train_step(ctx: TrainingRun, step: int, cbs) -> dict[str, Any]:
    """One optimizer update over every micro-batch of this rank; returns the step's record."""
    import torch

    from backlm.optim import apply_schedule

    cfg, t = ctx.cfg, time.perf_counter()
    # Positions before this step: an interrupt mid-step rewinds to them before saving.
    ctx.loader_snapshot = [ld.state_dict() for ld in ctx.loaders]
    lr = apply_schedule(ctx.opt, step, cfg.train.max_steps, cfg.optim)
    cbs.on_step_start(ctx, step + 1)
    loss_sum = torch.zeros((), device=ctx.device)
    for i, loader in enumerate(ctx.loaders):
        batch = loader.next_batch()
        x = torch.from_numpy(batch.inputs).to(ctx.device, non_blocking=True)
        y = torch.from_numpy(batch.targets).to(ctx.device, non_blocking=True)
        last = i == ctx.accum - 1
        sync = ctx.model.no_sync() if ctx.dist.world > 1 and not last else contextlib.nullcontext()
        with sync:
            with ctx.autocast():
                loss = ctx.forward(x, y)
            (loss / ctx.accum).backward()
        loss_sum += loss.detach()
        ctx.last_batch = (x, y)
    cbs.on_after_backward(ctx, step + 1)
    clip = cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else float("inf")
    grad_norm = torch.nn.utils.clip_grad_norm_(ctx.raw_model.parameters(), clip)
    ctx.opt.step()
    ctx.opt.zero_grad(set_to_none=True)
    ctx.loader_snapshot = None
    train_loss, grad_norm_v = _all_reduce_mean([float(loss_sum) / ctx.accum, float(grad_norm)],
                                               ctx)
    dt = time.perf_counter() - t
    tps = cfg.train.total_batch_tokens / dt
    peak = ctx.dev.peak_flops * ctx.dist.world
    return {"loss": train_loss, "lr_mult": lr, "grad_norm": grad_norm_v,
            "tokens": ctx.tokens + cfg.train.total_batch_tokens, "tokens_per_sec": tps,
            "mfu": ctx.flops_per_token * tps / peak if peak else 0.0, "dt": dt}


def run(exp_path: Path, resume: bool = False, display: bool = True,
        factories: list[str] | None = None) -> RunSummary:
    """Train (or continue) the experiment at ``exp_path`` to ``train.max_steps``."""
    import torch

    from backlm import callbacks

    dist_info = init_distributed()
    exp = Experiment(Path(exp_path))
    cfg = load_run_config(exp)
    if cfg.train.device == "cpu" or not torch.cuda.is_available():
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // dist_info.world))
    ctx = TrainingRun(exp, cfg, dist_info)
    ctx.step, ctx.tokens, evals = _restore(ctx) if resume else (0, 0, {})
    if dist_info.main:
        exp.update_metadata(status="running", pid=os.getpid(), device=ctx.dev.name,
                            dtype=ctx.dev.dtype, world_size=dist_info.world)
    shown = _Display(display and dist_info.main, cfg.train.max_steps, ctx.step)
    ctx.print = shown.print
    cbs = callbacks.CallbackList(callbacks.build(ctx, factories))
    orders = eval_orders(cfg.data.direction)
    t_start, start_tokens, status, first_bpb = time.perf_counter(), ctx.tokens, "finished", None
    try:
        cbs.on_train_start(ctx)
        if ctx.step == 0:
            evals = evaluate(ctx, orders)
            first_bpb = evals["val_bpb"]
            cbs.on_eval(ctx, 0, evals)
            cbs.on_step_end(ctx, 0, dict(evals))
        startup = {"first_step_start_s": _since_start()}
        while ctx.step < cfg.train.max_steps and ctx.stop_reason is None:
            record = _train_step(ctx, ctx.step, cbs)
            if startup is not None:  # what the user waited for, in metadata.json
                startup["first_step_end_s"] = _since_start()
                if dist_info.main:
                    exp.update_metadata(startup=startup)
                startup = None
            ctx.step += 1
            ctx.tokens = record["tokens"]
            step = ctx.step
            if not math.isfinite(record["loss"]):
                ctx.stop_reason = "diverged"
            elif step % cfg.train.eval_every == 0 or step == cfg.train.max_steps:
                evals = evaluate(ctx, orders)
                record.update(evals)
                shown.print(f"step {step:>6} · " + " · ".join(
                    f"{k} {v:.4f}" for k, v in evals.items()))
                cbs.on_eval(ctx, step, evals)
            cbs.on_step_end(ctx, step, record)
            shown.update(step, f"loss {record['loss']:.3f} · lr×{record['lr_mult']:.2f} · "
                               f"{record['tokens_per_sec']:,.0f} tok/s · MFU {record['mfu']:.1%}")
            if ctx.stop_reason == "diverged":
                break  # never checkpoint non-finite weights
            if (ctx.save_requested or step % cfg.train.save_every == 0
                    or step == cfg.train.max_steps or ctx.stop_reason):
                _checkpoint(ctx, cbs, evals)
            _fault_point(ctx, step)
        status = ctx.stop_reason or "finished"
    except KeyboardInterrupt:
        status = "interrupted"
        if ctx.loader_snapshot is not None:  # interrupted inside a step: undo its reads
            for loader, state in zip(ctx.loaders, ctx.loader_snapshot, strict=True):
                loader.load_state_dict(state)
            ctx.opt.zero_grad(set_to_none=True)
        if ctx.last_saved != ctx.step and ctx.step > 0:
            _checkpoint(ctx, cbs, evals)  # Ctrl-C keeps every finished step
        shown.print(f"interrupted at step {ctx.step}: checkpoint saved; continue with "
                    f"`backlm train --resume {exp.id}`")
    except BaseException:
        status = "failed"
        raise
    finally:
        shown.close()
        wall = time.perf_counter() - t_start
        cbs.on_train_end(ctx, status)
        if ctx.restored_step is not None:
            evals = dict(ctx.best.get("evals") or evals)  # the final model is the best one
        if dist_info.main:
            final = {"step": ctx.step, "tokens": ctx.tokens, "final_model_step":
                     ctx.restored_step or ctx.last_saved, **evals}
            exp.update_metadata(status=status, finished=utcnow(), results=final)
    tps_run = (ctx.tokens - start_tokens) / wall if wall > 0 else 0.0
    peak = ctx.dev.peak_flops * dist_info.world
    summary = RunSummary(
        exp_id=exp.id, path=str(exp.path), status=status, steps=ctx.step, tokens=ctx.tokens,
        wall_seconds=wall, tokens_per_sec=tps_run,
        mfu=ctx.flops_per_token * tps_run / peak if peak else 0.0,
        val_loss=evals.get("val_loss"), val_bpb=evals.get("val_bpb"), first_val_bpb=first_bpb,
        device=ctx.dev.device,
    )
    if dist_info.main:
        from backlm.summary import write_training_summary

        write_training_summary(ctx, summary)
    return summary


def _since_start() -> float:
    """Seconds since this process started (a torchrun worker's own start under torchrun)."""
    from backlm.hardware import process_start

    return round(time.time() - process_start(), 2)


def _checkpoint(ctx: TrainingRun, cbs, evals: dict[str, float]) -> None:
    folder = _save(ctx, ctx.step, ctx.tokens, evals)
    ctx.save_requested = False
    ctx.last_saved = ctx.step
    cbs.on_checkpoint(ctx, ctx.step, folder)


def _fault_point(ctx: TrainingRun, step: int) -> None:
    """Fault-injection hooks for crash tests, driven by environment variables.

    ``BACKLM_KILL_AT_STEP=N`` SIGKILLs this process after step N (a real SIGKILL: nothing is
    flushed or cleaned up); ``BACKLM_INTERRUPT_AT_STEP=N`` raises Ctrl-C's KeyboardInterrupt
    there; ``BACKLM_NAN_AT_STEP=N`` poisons the weights after step N so the next loss is NaN.
    """
    env = os.environ.get
    if env("BACKLM_KILL_AT_STEP") == str(step):
        import signal

        os.kill(os.getpid(), signal.SIGKILL)
    if env("BACKLM_INTERRUPT_AT_STEP") == str(step):
        raise KeyboardInterrupt
    if env("BACKLM_NAN_AT_STEP") == str(step):
        import torch

        with torch.no_grad():
            next(ctx.raw_model.parameters()).fill_(float("nan"))


def summary_from_metadata(exp: Experiment) -> RunSummary:
    """A RunSummary rebuilt from metadata.json and metrics.jsonl (after a torchrun spawn)."""
    meta = exp.metadata()
    res = meta.get("results") or {}
    from backlm.logs.jsonl import read

    rows = read(exp.path / "metrics.jsonl")
    steps = [r for r in rows if "dt" in r]
    wall = sum(r["dt"] for r in steps)
    tokens = sum(r["tokens_per_sec"] * r["dt"] for r in steps)
    first = next((r["val_bpb"] for r in rows if r.get("step") == 0 and "val_bpb" in r), None)
    return RunSummary(
        exp_id=exp.id, path=str(exp.path), status=meta.get("status", "?"),
        steps=int(res.get("step", 0)), tokens=int(res.get("tokens", 0)), wall_seconds=wall,
        tokens_per_sec=tokens / wall if wall else 0.0,
        mfu=sum(r["mfu"] for r in steps) / len(steps) if steps else 0.0,
        val_loss=res.get("val_loss"), val_bpb=res.get("val_bpb"), first_val_bpb=first,
        device=str(meta.get("device", "?")),
    )
