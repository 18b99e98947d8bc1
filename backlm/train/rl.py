"""The RL phase: group-relative policy gradient on arithmetic word problems, in any direction.

Per prompt (one per data stream, ``rl.prompts_per_step`` per step) the model samples
``rl.group_size`` turns; each is turned back into reading order and rewarded
(:mod:`backlm.data.arith`); the advantage is the reward minus the group's mean, and the loss is
``-advantage · log p(turn)`` averaged over the sampled tokens, plus ``rl.kl_coef`` times a KL
estimate to the frozen parent. Forward writes the answer to a question; backward is given the
answer and writes a question whose answer it is (:func:`backlm.direction.turn_prompt`).

Prompts and sampling noise are seeded by (seed, stream, prompt number), so a resumed run draws
what the uninterrupted one would have.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from typing import Any

from backlm.data import arith
from backlm.direction import (
    IGNORE_INDEX,
    Direction,
    Role,
    document_order,
    turn_prompt,
    written_to_reading_order,
)

EVAL_SEED = 7919  # held-out prompts: an integer seed, while training streams use string keys


class PromptStream:
    """The problems of one RL data stream, resumable by count."""

    def __init__(self, seed: int, stream: int, direction: str, mix: float = 0.5) -> None:
        self.seed, self.stream, self.direction, self.mix = seed, stream, direction, mix
        self.count = 0

    def next_prompt(self) -> tuple[arith.Problem, Direction, int]:
        """The next problem, the order it is posed in, and its sampling seed."""
        key = f"{self.seed}:{self.stream}:{self.count}"
        problem = arith.make_problem(random.Random(key))
        order = document_order(self.direction, self.stream * 1_000_003 + self.count, self.seed,
                               self.mix)
        self.count += 1
        return problem, order, random.Random(key + ":sample").getrandbits(62)

    def state_dict(self) -> dict[str, Any]:
        return {"kind": "rl", "count": self.count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("kind") != "rl":
            raise ValueError("not an RL prompt-stream state")
        self.count = int(state["count"])


def prompt_for(tokenizer: Any, problem: arith.Problem, direction: str, order: Direction
               ) -> tuple[list[int], int]:
    """Model-order prompt and stop token: forward is given the question and writes the
    answer; backward is given the answer and writes the question."""
    if order is Direction.FORWARD:
        context, write = tokenizer.render_turn("user", problem.question), Role.ASSISTANT
    else:
        context, write = tokenizer.render_turn("assistant", problem.answer_text), Role.USER
    order_arg = order if Direction.parse(direction) is Direction.BIDIRECTIONAL else None
    return turn_prompt(context, write, direction, tokenizer.special_ids, order_arg)


def reward(tokenizer: Any, problem: arith.Problem, order: Direction, written: list[int]) -> float:
    """Reward of a written turn (stop tag excluded), judged on its reading-order text."""
    text = tokenizer.decode(written_to_reading_order(written, order))
    if order is Direction.FORWARD:
        return arith.answer_reward(text, problem.answer)
    return arith.question_reward(text, problem.answer)


def sample_group(model: Any, prompt: list[int], group: int, max_new: int, temperature: float,
                 stop: int, seed: int) -> list[list[int]]:
    """``group`` samples after ``prompt`` (one prefill, batched steps); each ends at ``stop``
    (included) or after ``max_new`` tokens. ``temperature`` 0 is greedy."""
    from backlm.model.decode import SamplingParams, generate

    return generate(model, prompt, max_new, num_samples=group,
                    sampling=SamplingParams(temperature), seed=seed, stop=stop)


def content(sample: list[int], stop: int) -> list[int]:
    """A sampled turn without the tag that ended it."""
    return sample[:-1] if sample and sample[-1] == stop else sample


def _batch(prompt: list[int], samples: list[list[int]], pad: int) -> tuple[Any, Any]:
    """Inputs and targets of prompt + sample rows; only sampled tokens are targets."""
    import numpy as np

    width = len(prompt) + max(len(s) for s in samples)
    x = np.full((len(samples), width - 1), pad, dtype=np.int64)
    y = np.full((len(samples), width - 1), IGNORE_INDEX, dtype=np.int64)
    for i, s in enumerate(samples):
        row = prompt + s
        x[i, :len(row) - 1] = row[:-1]
        y[i, len(prompt) - 1:len(row) - 1] = s
    return x, y


def _budget(cfg: Any, prompt: list[int]) -> int:
    """New tokens a turn may take: ``rl.max_new_tokens`` within the model's ``seq_len``."""
    return max(1, min(cfg.rl.max_new_tokens, cfg.model.seq_len - len(prompt)))


def _fixed_shape(x: Any, y: Any, cfg: Any, pad: int, device: Any) -> tuple[Any, Any]:
    """A group's rows padded to the research log's (rows, seq_len) slice shape."""
    import numpy as np
    import torch

    rows = min(cfg.log.per_token_rows, cfg.train.device_batch_size)  # the log's slice rows
    fx = np.full((rows, cfg.model.seq_len), pad, dtype=np.int64)
    fy = np.full((rows, cfg.model.seq_len), IGNORE_INDEX, dtype=np.int64)
    n, width = min(rows, len(x)), min(x.shape[1], cfg.model.seq_len)
    fx[:n, :width], fy[:n, :width] = x[:n, :width], y[:n, :width]
    return torch.from_numpy(fx).to(device), torch.from_numpy(fy).to(device)


def train_step(tr: Any, state: Any, cbs: Any) -> dict[str, Any]:
    """One RL optimizer update over this rank's prompts; the step's record."""
    import torch

    from backlm.distributed import all_reduce_mean
    from backlm.train.optim import apply_schedule

    cfg, step, t = tr.cfg, state.step + 1, time.perf_counter()
    model, tok = tr.info.model, tr.info.tokenizer
    tr.loader_snapshot = [ld.state_dict() for ld in tr.loaders]
    lr = apply_schedule(tr.opt, state.step, cfg.train.max_steps, cfg.optim)
    cbs.on_step_start(state, step)
    ref = _reference(tr) if cfg.rl.kl_coef > 0 else None
    sums = [0.0] * 6  # loss, reward sum, reward² sum, samples, zero-spread groups, tokens
    for i, stream in enumerate(tr.loaders):
        problem, order, seed = stream.next_prompt()
        prompt, stop = prompt_for(tok, problem, cfg.data.direction, order)
        with tr.autocast():
            samples = sample_group(model, prompt, cfg.rl.group_size, _budget(cfg, prompt),
                                   cfg.rl.temperature, stop, seed)
        rewards = [reward(tok, problem, order, content(s, stop)) for s in samples]
        mean = sum(rewards) / len(rewards)
        adv = torch.tensor([r - mean for r in rewards], device=tr.device)
        xs, ys = _batch(prompt, samples, tok.special_ids.bos)
        x, y = torch.from_numpy(xs).to(tr.device), torch.from_numpy(ys).to(tr.device)
        n = (y != IGNORE_INDEX).sum().clamp(min=1)
        last = i == tr.accum - 1
        sync = tr.model.no_sync() if tr.dist.world > 1 and not last else contextlib.nullcontext()
        with sync:
            with tr.autocast():
                ce = tr.forward(x, y, loss_reduction="none").float()
                loss = (ce * adv[:, None]).sum() / n
                if ref is not None:
                    with torch.no_grad():
                        ref_ce = ref(x, y, loss_reduction="none").float()
                    r = (ce - ref_ce) * (y != IGNORE_INDEX)
                    loss = loss + cfg.rl.kl_coef * ((r.exp() - r - 1).sum() / n)
            (loss / tr.accum).backward()
        spread = max(rewards) - min(rewards)
        for k, v in enumerate((float(loss.detach()), sum(rewards), sum(r * r for r in rewards),
                               len(rewards), spread == 0, x.numel())):
            sums[k] += float(v)
        state.batch_seen(*_fixed_shape(xs, ys, cfg, tok.special_ids.bos, tr.device))
    cbs.on_after_backward(state, step)
    clip = cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else float("inf")
    grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), clip))
    tr.opt.step()
    tr.opt.zero_grad(set_to_none=True)
    tr.loader_snapshot = None
    world = tr.dist.world
    loss_m, *tot = all_reduce_mean([sums[0] / tr.accum, *sums[1:], grad_norm], tr.dist, tr.device)
    r_sum, r2_sum, count, zero, tokens, grad_norm = [v * world for v in tot[:5]] + [tot[5]]
    r_mean = r_sum / count
    dt = time.perf_counter() - t
    return {"loss": loss_m, "lr_mult": lr, "grad_norm": grad_norm,
            "tokens": state.tokens + int(tokens), "tokens_per_sec": tokens / dt,
            "mfu": tr.mfu(tokens / dt), "dt": dt, "reward_mean": r_mean,
            "reward_std": math.sqrt(max(0.0, r2_sum / count - r_mean ** 2)),
            "zero_spread": zero / (count / cfg.rl.group_size)}


def _reference(tr: Any) -> Any:
    if tr.rl_reference is None:
        from backlm.experiment.compat import load_parent_weights
        from backlm.model.gpt import GPT

        ref = GPT(tr.cfg.model).to(tr.device)
        load_parent_weights(tr.info.exp, ref)
        ref.requires_grad_(False)
        tr.rl_reference = ref
    return tr.rl_reference


def evaluate_reward(tr: Any) -> dict[str, float]:
    """Greedy reward on held-out problems (shared out over ranks), per order for
    bidirectional models and their mean as ``val_reward``."""
    from backlm.direction import eval_orders
    from backlm.distributed import all_reduce_mean

    cfg, tok, model = tr.cfg, tr.info.tokenizer, tr.info.model
    problems = arith.problems(cfg.rl.eval_prompts, EVAL_SEED)
    out: dict[str, float] = {}
    orders = eval_orders(cfg.data.direction)
    for name, order in orders:
        total = 0.0
        for problem in problems[tr.dist.rank::tr.dist.world]:
            prompt, stop = prompt_for(tok, problem, cfg.data.direction, order)
            with tr.autocast():
                (sample,) = sample_group(model, prompt, 1, _budget(cfg, prompt), 0.0, stop, 0)
            total += reward(tok, problem, order, content(sample, stop))
        (mean_sum,) = all_reduce_mean([total], tr.dist, tr.device)
        out[f"val_reward_{name}" if name else "val_reward"] = mean_sum * tr.dist.world / len(
            problems)
    if len(orders) > 1:
        out["val_reward"] = sum(out[f"val_reward_{n}"] for n, _ in orders) / len(orders)
    return out
