"""The training loop: :func:`run` trains one experiment on one rank.

The same function runs in-process (CPU, one GPU) and in every torchrun worker. It never
branches on direction: direction only selects the data transform, in the loaders. Nor does its
step branch on the phase: a :class:`~backlm.train.step.Phase` gives the loaders, each
micro-batch's loss and the phase's own validation. Callbacks
(:mod:`backlm.callbacks`) see a typed :class:`~backlm.callbacks.LoopState`; logging, early
stopping, 5CAT and the progress display all plug in there.

Data parallelism: a step's global batch is split into ``streams = total_batch_tokens /
(device_batch_size * seq_len)`` fixed document streams; rank ``r`` of ``W`` owns streams
``r*accum .. r*accum+accum-1`` and visits them as its gradient-accumulation micro-steps. The
global batch therefore does not depend on how many processes share it, so a 2-process run
reproduces a 1-process run with the same global batch.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from backlm import atomic
from backlm.callbacks import Callback, CallbackList, LoopState, RunInfo
from backlm.config import RunConfig
from backlm.direction import Direction, eval_orders
from backlm.distributed import DistInfo, all_reduce_mean, gather_lists, init_distributed
from backlm.errors import UserError
from backlm.experiment import checkpoint as ckpt
from backlm.experiment import compat
from backlm.experiment.folder import Experiment, utcnow
from backlm.missing import mean_or_missing
from backlm.train.phases import phase_for, plan_streams
from backlm.train.step import Phase, mean_over_orders
from backlm.train.summary import RunSummary, write_training_summary


def default_callbacks(state: LoopState) -> list[Callback]:
    """The built-in callbacks: best tracking and early stopping, 5CAT, then the loggers (last,
    so they see what the others add to a step's record)."""
    from backlm import fivecat, logs
    from backlm.train import early_stop

    return [*early_stop.callbacks(state), *fivecat.training_callbacks(state),
            *logs.callbacks(state)]


class TrainingRun:
    """What one rank's loop works with, built once: model, optimizer, data, and the phase
    (which keeps whatever only it needs)."""

    def __init__(self, exp: Experiment, cfg: RunConfig, dist: DistInfo,
                 phase: Phase | None = None) -> None:
        import torch

        from backlm.evaluation.lm import held_out, windows
        from backlm.hardware import resolve_device
        from backlm.model.gpt import GPT
        from backlm.tokenizer import Tokenizer
        from backlm.train.optim import build_optimizer

        self.cfg, self.dist, self.phase = cfg, dist, phase or phase_for(cfg)
        self.dev = resolve_device(cfg.train.device, cfg.train.dtype, dist.local_rank)
        self.device = torch.device(self.dev.device)
        torch.manual_seed(cfg.train.seed)
        tokenizer = Tokenizer.load(exp.tokenizer_dir)
        data_dir = exp.data_dir()
        self.streams, self.accum = plan_streams(cfg, dist.world, self.phase)
        self.loaders = self.phase.loaders(tokenizer, data_dir, dist.rank * self.accum,
                                          self.accum, self.streams)
        # validation: the same reading-order windows in every order (and every direction)
        from backlm.data.shards import list_shards

        self.val_data = held_out(list_shards(data_dir, "val"), tokenizer, cfg.train.eval_tokens,
                                 cfg.data.tokenizer_threads)
        self.val_windows = windows(self.val_data, cfg.model.seq_len)
        model = GPT(cfg.model).to(self.device)
        self.model = model
        if dist.world > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.dev.is_cuda else None
            self.model = DDP(model, device_ids=ids)
        self.opt = build_optimizer(model, cfg.optim)
        self.forward = torch.compile(self.model) if cfg.train.compile else self.model
        self.token_bytes = torch.tensor(tokenizer.token_byte_lengths(), dtype=torch.float32,
                                        device=self.device)
        self.flops_per_token = model.flops_per_token()
        self.info = RunInfo(exp=exp, cfg=cfg, dist=dist, model=model, tokenizer=tokenizer,
                            device=self.device, device_name=self.dev.name,
                            is_cuda=self.dev.is_cuda, data_dir=data_dir, autocast=self.autocast,
                            phase_scalars=self.phase.scalars())
        self.last_saved: int | None = None
        self.resumed = False  # set by run(): a new run is removed if its first save fails
        self.evals: dict[str, float] = {}  # the latest validation
        self.warned_missing: set[str] = set()  # validation metrics already warned as missing

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """bf16 autocast when the run computes in bf16, else nothing."""
        import torch

        if self.dev.dtype == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def mfu(self, tokens_per_sec: float) -> float:
        """Model FLOP utilisation of all ranks at ``tokens_per_sec``.

        A CPU peak kept from an earlier run (:func:`backlm.hardware.cpu_peak`) that this run
        beats was measured on a busy machine: it is measured again, once, before MFU is read.
        """
        from backlm.hardware import checked_peak

        self.dev = checked_peak(self.dev, self.flops_per_token * tokens_per_sec / max(self.dist.world, 1))
        peak = self.dev.peak_flops * self.dist.world
        return self.flops_per_token * tokens_per_sec / peak if peak else 0.0


def evaluate(tr: TrainingRun, orders: list[tuple[str, Direction]]) -> dict[str, float]:
    """Validation loss and bits per byte, per order for bidirectional runs, and the phase's
    own validation metrics.

    Every order scores the same reading-order windows of the same validation documents (the
    first ``eval_tokens`` of the val split, whole documents: :mod:`backlm.evaluation.lm`),
    shared out over ranks; the sums are all-reduced.
    """
    from backlm.evaluation.lm import score, window_batches

    cfg, dist = tr.cfg, tr.dist
    out: dict[str, float] = {}
    tr.model.eval()
    mine = tr.val_windows[dist.rank::dist.world]
    for name, order in orders:
        batches = window_batches(tr.val_data, mine, cfg.data.direction, order,
                                 tr.info.tokenizer.special_ids, cfg.train.device_batch_size)
        sums = score(tr.info.model, batches, tr.token_bytes, tr.device, tr.autocast())
        nats, nbytes, ntok = all_reduce_mean([sums.nats, sums.bytes, sums.tokens], dist,
                                             tr.device)
        suffix = "" if name == "" else f"_{name}"
        out[f"val_loss{suffix}"] = mean_or_missing(nats, ntok)
        out[f"val_bpb{suffix}"] = mean_or_missing(nats / math.log(2), nbytes)
    mean_over_orders(out, "val_loss", orders)
    mean_over_orders(out, "val_bpb", orders)
    out.update(tr.phase.evaluate(tr, orders))
    tr.model.train()
    return out


def _save(tr: TrainingRun, state: LoopState) -> Path | None:
    from backlm.train import faults

    # every rank takes part in the gather; only rank 0 writes
    loaders = gather_lists([ld.state_dict() for ld in tr.loaders], tr.dist)
    if not tr.dist.main:
        return None
    cfg, exp = tr.cfg, tr.info.exp
    meta = {
        "step": state.step, "phase": cfg.phase, "direction": cfg.data.direction,
        "tokens": state.tokens, "model_config": dict(vars(cfg.model)), "val": tr.evals,
        "loaders": loaders, "rng": ckpt.rng_state(tr.dev.is_cuda), "world_size": tr.dist.world,
        "tokenizer": compat.tokenizer_record(tr.info.tokenizer), "saved": utcnow(),
    }
    steps = exp.checkpoint_steps()
    # a new run that fails before its first checkpoint is removed (backlm.train.launch), so
    # its advice is to run the command again, not to resume
    return ckpt.save(exp.checkpoint_dir(state.step), tr.info.model.state_dict(),
                     tr.opt.state_dict(), meta, previous=steps[-1] if steps else None,
                     resume_with=f"backlm train --resume {exp.id}",
                     fresh=not steps and not tr.resumed,
                     after_weights=faults.save_hook(state.step))


def _restore(tr: TrainingRun) -> tuple[int, int, dict[str, float]]:
    """Model, optimizer, data positions and RNG of the latest checkpoint; its step, tokens and
    evaluations (zeros when there is none yet)."""
    folder = tr.info.exp.latest_checkpoint()
    if folder is None:
        return 0, 0, {}
    model_state, optim_state, meta = ckpt.load(folder)
    compat.check_weights(tr.info.model, model_state, folder)
    tr.info.model.load_state_dict(model_state)
    states = meta["loaders"]
    if len(states) != tr.streams:
        raise UserError(f"checkpoint has {len(states)} data streams, this run {tr.streams}: "
                        "resume with the same batch settings")
    first = tr.dist.rank * tr.accum
    try:
        tr.opt.load_state_dict(optim_state)
        for loader, state in zip(tr.loaders, states[first:first + tr.accum], strict=True):
            loader.load_state_dict(state)
        ckpt.restore_rng_state(meta["rng"], tr.dev.is_cuda)
    except (KeyError, TypeError, ValueError, IndexError, RuntimeError) as exc:
        reason = (str(exc).splitlines() or [""])[0]
        raise UserError(f"checkpoint {folder} cannot be resumed: its optimizer state, data "
                        f"positions or random-number states are corrupt ({type(exc).__name__}: "
                        f"{reason}); resume from an earlier checkpoint by moving this one aside"
                        ) from None
    return int(meta["step"]), int(meta["tokens"]), dict(meta.get("val") or {})


def _train_step(tr: TrainingRun, state: LoopState, cbs: Callback) -> dict[str, Any]:
    """One optimizer update over every micro-batch of this rank, the same for every phase
    (the phase computes each micro-batch's loss); returns the step's record."""
    import torch

    from backlm.train.optim import apply_schedule

    cfg, phase, step, t = tr.cfg, tr.phase, state.step + 1, time.perf_counter()
    snapshot = [ld.state_dict() for ld in tr.loaders]
    lr = apply_schedule(tr.opt, state.step, cfg.train.max_steps, cfg.optim)
    loss_sum = torch.zeros((), device=tr.device)
    sums = dict.fromkeys(phase.stats, 0.0)
    try:
        cbs.on_step_start(state, step)
        for i, loader in enumerate(tr.loaders):
            last = i == tr.accum - 1
            sync = (tr.model.no_sync() if tr.dist.world > 1 and not last
                    else contextlib.nullcontext())
            with sync:
                micro = phase.loss(tr, loader)
                (micro.loss / tr.accum).backward()
            loss_sum += micro.loss.detach()
            for key, value in micro.stats.items():
                sums[key] += float(value)
            state.batch_seen(micro.inputs, micro.targets)
        cbs.on_after_backward(state, step)
        clip = cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(tr.info.model.parameters(), clip)
        tr.opt.step()
        tr.opt.zero_grad(set_to_none=True)
    except KeyboardInterrupt:  # rewind the step's reads and drop its gradients: the
        # checkpoint holds the last finished step, and a resume starts this one again
        for loader, snap in zip(tr.loaders, snapshot, strict=True):
            loader.load_state_dict(snap)
        tr.opt.zero_grad(set_to_none=True)
        raise
    train_loss, grad_norm_v, *summed = all_reduce_mean(
        [float(loss_sum) / tr.accum, float(grad_norm), *sums.values()], tr.dist, tr.device)
    sums = {key: value * tr.dist.world for key, value in zip(sums, summed, strict=True)}
    tokens = phase.step_tokens(sums)
    dt = time.perf_counter() - t
    return {"loss": train_loss, "lr_mult": lr, "grad_norm": grad_norm_v,
            "tokens": state.tokens + int(tokens), "tokens_per_sec": tokens / dt,
            "mfu": tr.mfu(tokens / dt), "dt": dt, **phase.record(sums)}


def run(exp: Experiment, cfg: RunConfig, *, resume: bool = False, dist: DistInfo | None = None,
        callbacks: Callable[[LoopState], list[Callback]] = default_callbacks,
        observers: Sequence[Callback] = (), phase: Phase | None = None) -> RunSummary:
    """Train (or continue, with ``resume``) ``exp`` as ``cfg`` says, to ``train.max_steps``.

    ``callbacks`` builds the run's callbacks from its state (default: the built-in ones);
    ``observers`` (e.g. the command's display) come after them. Fault injection for crash
    tests (:mod:`backlm.train.faults`) comes last. ``phase`` replaces the one ``cfg.phase``
    names (:func:`backlm.train.phases.phase_for`).
    """
    import torch

    from backlm.train import faults

    dist = dist or init_distributed()
    # The run holds the lock: what a SIGKILL left half-written is removed before anything else.
    partial = ckpt.remove_partial(exp.checkpoints) + atomic.remove_stale(exp.path) \
        if dist.main else []
    if cfg.train.device == "cpu" or not torch.cuda.is_available():
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // dist.world))
    tr = TrainingRun(exp, cfg, dist, phase)
    tr.resumed = resume
    state = LoopState(tr.info)
    step, tokens, tr.evals = _restore(tr) if resume else (0, 0, {})
    if step == 0 and tr.phase.from_parent:  # a branch starts from its parent's weights
        from backlm.experiment.compat import load_parent_weights

        load_parent_weights(exp, tr.info.model)
    tr.last_saved = step or None  # a Ctrl-C before the next step has nothing new to save
    state.advance(step, tokens)
    early: list[str] = []  # what callbacks say while they are being built
    if dist.main:
        from backlm.hardware import precision_line

        early.append(f"precision: {precision_line(tr.dev)}")
    if partial:
        early.append(f"removed what a killed run left half-written: {', '.join(partial)}")
    if dist.main:  # token caches the loaders found unusable (they tokenize instead), once
        early += dict.fromkeys(n for ld in tr.loaders for n in getattr(ld, "cache_notes", ()))
    state.listen(early.append)
    cbs = CallbackList([*callbacks(state), *observers, *faults.callbacks()])
    state.listen(lambda text: cbs.on_message(state, text))
    for text in early:
        state.say(text)
    if dist.main:
        exp.update_metadata(status="running", pid=os.getpid(), device=tr.dev.name,
                            dtype=tr.dev.dtype, world_size=dist.world)
    orders = eval_orders(cfg.data.direction)
    t_start, start_tokens, status, first_bpb = time.perf_counter(), state.tokens, "finished", None
    try:
        cbs.on_train_start(state)
        if state.step == 0 and cfg.train.eval_at_start:
            tr.evals = evaluate(tr, orders)
            _warn_missing(tr, state)
            first_bpb = tr.evals["val_bpb"]
            cbs.on_eval(state, 0, tr.evals)
            cbs.on_step_end(state, 0, dict(tr.evals))
        _loop(tr, state, cbs, orders)
        status = state.stop_reason or "finished"
    except KeyboardInterrupt:
        status = "interrupted"  # (a step it cut short has rewound its data reads)
        try:
            if tr.last_saved != state.step and state.step > 0:
                _checkpoint(tr, state, cbs)  # Ctrl-C keeps every finished step
            state.say(f"interrupted at step {state.step}: checkpoint saved; continue with "
                      f"`backlm train --resume {exp.id}`")
        except KeyboardInterrupt:  # a second Ctrl-C, during that save: save removed its files
            steps = exp.checkpoint_steps()
            kept = (f"the checkpoint at step {steps[-1]} is the resume point" if steps
                    else "no checkpoint is saved, so a resume starts from step 0")
            state.say(f"interrupted again while saving step {state.step}: {kept}; continue "
                      f"with `backlm train --resume {exp.id}`")
    except BaseException:
        status = "failed"
        raise
    finally:
        wall = time.perf_counter() - t_start
        cbs.on_train_end(state, status)
        evals = tr.evals
        if state.restored_step is not None:
            evals = dict(state.best.get("evals") or evals)  # the final model is the best one
        if dist.main:
            final = {"step": state.step, "tokens": state.tokens, "final_model_step":
                     state.restored_step or tr.last_saved, **evals}
            exp.update_metadata(status=status, finished=utcnow(), results=final)
    tps_run = (state.tokens - start_tokens) / wall if wall > 0 else 0.0
    summary = RunSummary(
        exp_id=exp.id, path=str(exp.path), status=status, steps=state.step,
        tokens=state.tokens, wall_seconds=wall, tokens_per_sec=tps_run, mfu=tr.mfu(tps_run),
        val_loss=evals.get("val_loss"), val_bpb=evals.get("val_bpb"), first_val_bpb=first_bpb,
        device=tr.dev.device,
    )
    if dist.main:
        write_training_summary(state, summary, gpus=dist.world if tr.dev.is_cuda else 0)
    return summary


def _loop(tr: TrainingRun, state: LoopState, cbs: Callback,
          orders: list[tuple[str, Direction]]) -> None:
    """Steps until max_steps or a callback's stop."""
    cfg, startup = tr.cfg, {"first_step_start_s": _since_start()}
    while state.step < cfg.train.max_steps and state.stop_reason is None:
        record = _train_step(tr, state, cbs)
        if startup:  # what the user waited for, in the metadata
            startup["first_step_end_s"] = _since_start()
            if tr.dist.main:
                tr.info.exp.update_metadata(startup=startup, mfu_peak={
                    "flops": tr.dev.peak_flops, "source": tr.dev.peak_source})
            startup = {}
        state.advance(state.step + 1, record["tokens"])
        step = state.step
        if not math.isfinite(record["loss"]):
            state.stop_reason = "diverged"
        elif step % cfg.train.eval_every == 0 or step == cfg.train.max_steps:
            tr.evals = evaluate(tr, orders)
            _warn_missing(tr, state)
            record.update(tr.evals)
            cbs.on_eval(state, step, tr.evals)
        cbs.on_step_end(state, step, record)
        if state.stop_reason == "diverged":
            break  # never checkpoint non-finite weights
        if (state.save_requested or step % cfg.train.save_every == 0
                or step == cfg.train.max_steps or state.stop_reason):
            _checkpoint(tr, state, cbs)


def _warn_missing(tr: TrainingRun, state: LoopState) -> None:
    """One warning line per run for the validation metrics measured over nothing."""
    from backlm.missing import is_missing

    new = [k for k, v in tr.evals.items() if is_missing(v) and k not in tr.warned_missing]
    if new:
        tr.warned_missing.update(new)
        state.say(f"warning: {', '.join(new)} measured over nothing (no held-out token or "
                  "example was scored): recorded as missing, never as 0 or a best value")


def _since_start() -> float:
    """Seconds since this process started (a torchrun worker's own start under torchrun)."""
    from backlm.hardware import process_start

    return round(time.time() - process_start(), 2)


def _checkpoint(tr: TrainingRun, state: LoopState, cbs: Callback) -> None:
    cbs.on_before_checkpoint(state, state.step)
    folder = _save(tr, state)
    state.save_requested = False
    tr.last_saved = state.step
    cbs.on_checkpoint(state, state.step, folder)
