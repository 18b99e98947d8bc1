"""The RL phase: group-relative policy gradient on arithmetic word problems, in any direction.

Per prompt (one per data stream, ``rl.prompts_per_step`` per step) the model samples
``rl.group_size`` turns; each is turned back into reading order and rewarded
(:mod:`backlm.data.arith`); the advantage is the reward minus the group's mean, and the loss is
``-advantage · log p(turn)`` averaged over the sampled tokens, plus ``rl.kl_coef`` times a KL
estimate to the frozen parent. Forward writes the answer to a question; backward is given the
answer and writes a question whose answer it is (:func:`backlm.direction.turn_prompt`).

Prompts and sampling noise are seeded by (seed, stream, prompt number), so a resumed run draws
what the uninterrupted one would have. The sampling happens in :meth:`RLPhase.loss`, inside
the loop's one training step.
"""

from __future__ import annotations

import math
import random
from typing import Any

from backlm.config import RunConfig
from backlm.data import arith
from backlm.direction import (
    Direction,
    Role,
    document_order,
    turn_prompt,
    turn_roles,
    written_to_reading_order,
)
from backlm.missing import mean_or_missing
from backlm.model import IGNORE_INDEX
from backlm.train.step import MicroBatch, Orders, Phase, StepRun, mean_over_orders, per_order

EVAL_SEED = 7919  # held-out prompts: an integer seed, while training streams use string keys


class PromptStream:
    """The problems of one RL data stream, resumable by count."""

    def __init__(self, seed: int, stream: int, direction: Direction, mix: float = 0.5) -> None:
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


def prompt_for(tokenizer: Any, problem: arith.Problem, direction: Direction, order: Direction
               ) -> tuple[list[int], int]:
    """Model-order prompt and stop token: forward is given the question and writes the
    answer; backward is given the answer and writes the question."""
    given, write = turn_roles(order)  # the question is the user's turn, the answer the other
    text = problem.question if given is Role.USER else problem.answer_text
    context = tokenizer.render_turn(given.name.lower(), text)
    # a one-way model's order is its direction, which turn_prompt takes as well
    return turn_prompt(context, write, direction, tokenizer.special_ids, order)


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


class RLPhase(Phase):
    """rl: each micro-batch is one prompt's sampled group, trained with the group-relative
    advantage (and a KL penalty to the frozen parent when ``rl.kl_coef`` > 0); validation is
    the greedy reward on held-out problems."""

    # per micro-batch: reward sum, reward² sum, samples, groups whose rewards are all equal,
    # tokens trained on
    stats = ("reward", "reward_sq", "samples", "zero_spread", "tokens")
    record_fields = ("reward_mean", "reward_std", "zero_spread")
    from_parent = True  # rl branches from an sft run

    def __init__(self, cfg: RunConfig) -> None:
        super().__init__(cfg)
        self.reference: Any = None  # the frozen parent for the KL penalty, built once

    def streams(self) -> tuple[int, str]:
        """One stream per prompt of the step."""
        return self.cfg.rl.prompts_per_step, "rl.prompts_per_step"

    def loaders(self, tokenizer: Any, data_dir: Any, first: int, count: int,
                streams: int) -> list[Any]:
        cfg = self.cfg
        return [PromptStream(cfg.train.seed, v, cfg.data.direction, cfg.data.mix)
                for v in range(first, first + count)]

    def loss(self, run: StepRun, loader: Any) -> MicroBatch:
        """Sample a group for the stream's next prompt, reward it, and return the
        policy-gradient loss over the sampled tokens."""
        import torch

        cfg, tok, device = self.cfg, run.info.tokenizer, run.device
        problem, order, seed = loader.next_prompt()
        prompt, stop = prompt_for(tok, problem, cfg.data.direction, order)
        with run.autocast():
            samples = sample_group(run.info.model, prompt, cfg.rl.group_size,
                                   _budget(cfg, prompt), cfg.rl.temperature, stop, seed)
        rewards = [reward(tok, problem, order, content(s, stop)) for s in samples]
        mean = sum(rewards) / len(rewards)
        adv = torch.tensor([r - mean for r in rewards], device=device)
        xs, ys = _batch(prompt, samples, tok.special_ids.bos)
        x, y = torch.from_numpy(xs).to(device), torch.from_numpy(ys).to(device)
        n = (y != IGNORE_INDEX).sum().clamp(min=1)
        ref = self._reference(run) if cfg.rl.kl_coef > 0 else None
        with run.autocast():
            ce = run.forward(x, y, loss_reduction="none").float()
            loss = (ce * adv[:, None]).sum() / n
            if ref is not None:
                with torch.no_grad():
                    ref_ce = ref(x, y, loss_reduction="none").float()
                r = (ce - ref_ce) * (y != IGNORE_INDEX)
                loss = loss + cfg.rl.kl_coef * ((r.exp() - r - 1).sum() / n)
        stats = {"reward": sum(rewards), "reward_sq": sum(r * r for r in rewards),
                 "samples": len(rewards), "zero_spread": float(max(rewards) == min(rewards)),
                 "tokens": x.numel()}
        # the research log slices fixed-shape rows; a group is as wide as its longest sample
        return MicroBatch(loss, *_fixed_shape(xs, ys, cfg, tok.special_ids.bos, device),
                          stats=stats)

    def step_tokens(self, sums: dict[str, float]) -> float:
        """Tokens of the sampled rows (prompt and turn), not the configured batch."""
        return sums["tokens"]

    def record(self, sums: dict[str, float]) -> dict[str, float]:
        count = sums["samples"]
        r_mean = mean_or_missing(sums["reward"], count)
        var = mean_or_missing(sums["reward_sq"], count) - r_mean ** 2
        groups = count / self.cfg.rl.group_size
        return {"reward_mean": r_mean,
                "reward_std": math.sqrt(max(var, 0.0)),  # var first: max keeps a NaN
                "zero_spread": mean_or_missing(sums["zero_spread"], groups)}

    @classmethod
    def monitors(cls, direction: Direction) -> list[str]:
        from backlm.direction import eval_orders

        return ["val_reward", *per_order("val_reward", eval_orders(direction))]

    def evaluate(self, run: StepRun, orders: Orders) -> dict[str, float]:
        """Greedy reward on held-out problems (shared out over ranks), per order for
        bidirectional models and their mean as ``val_reward``."""
        from backlm.distributed import all_reduce_mean

        cfg, tok, dist = self.cfg, run.info.tokenizer, run.dist
        problems = arith.problems(cfg.rl.eval_prompts, EVAL_SEED)
        out: dict[str, float] = {}
        for name, order in orders:
            total = 0.0
            for problem in problems[dist.rank::dist.world]:
                prompt, stop = prompt_for(tok, problem, cfg.data.direction, order)
                with run.autocast():
                    (sample,) = sample_group(run.info.model, prompt, 1, _budget(cfg, prompt),
                                             0.0, stop, 0)
                total += reward(tok, problem, order, content(sample, stop))
            (mean_sum,) = all_reduce_mean([total], dist, run.device)
            out[f"val_reward_{name}" if name else "val_reward"] = \
                mean_or_missing(mean_sum * dist.world, len(problems))
        mean_over_orders(out, "val_reward", orders)
        return out

    def _reference(self, run: StepRun) -> Any:
        if self.reference is None:
            from backlm.experiment.compat import load_parent_weights
            from backlm.model.gpt import GPT

            ref = GPT(self.cfg.model).to(run.device)
            load_parent_weights(run.info.exp, ref)
            ref.requires_grad_(False)
            self.reference = ref
        return self.reference
