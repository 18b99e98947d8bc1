"""Generation samples during training: ``notes/generation_samples.jsonl`` (rank 0).

Every ``log.sample_every`` steps the model writes ``log.sample_tokens`` tokens from BOS (plus
each direction marker in a bidirectional run), with a fixed seed so samples at different steps
are comparable. Each line holds the tokens in model order and turned back into reading order.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from backlm.callbacks import Callback, LoopState, RunInfo

if TYPE_CHECKING:
    from backlm.direction import Direction


def prompts(direction: Direction, ids: Any) -> list[tuple[str, list[int]]]:
    """``(order, prompt ids)``: BOS, or BOS + marker once per order for bidirectional."""
    from backlm.direction import Direction

    if direction is Direction.BIDIRECTIONAL:
        return [(o.value, [ids.bos, ids.marker(o)]) for o in direction.orders]
    return [(direction.value, [ids.bos])]


def generate_samples(run: RunInfo, step: int) -> list[dict[str, Any]]:
    """One record per prompt: ids and text in model order and in reading order."""
    from backlm.direction import to_reading_order

    cfg, tok = run.cfg, run.tokenizer
    ids = tok.special_ids
    out = []
    for order, prompt in prompts(cfg.data.direction, ids):
        with run.autocast():
            new = list(run.model.generate(prompt, cfg.log.sample_tokens,
                                              temperature=cfg.log.sample_temperature,
                                              seed=cfg.train.seed))
        model_ids = prompt + new
        reading = to_reading_order(model_ids, cfg.data.direction, ids)
        out.append({
            "step": step, "direction": cfg.data.direction, "order": order,
            "temperature": cfg.log.sample_temperature, "seed": cfg.train.seed,
            "prompt_ids": prompt, "model_order_ids": model_ids, "reading_order_ids": reading,
            "model_order_text": tok.decode(model_ids), "reading_order_text": tok.decode(reading),
        })
    return out


class SampleCallback(Callback):
    """Appends generation samples; a resumed run first drops samples past its checkpoint."""

    def __init__(self, state: LoopState) -> None:
        from backlm.logs.jsonl import truncate

        self.every = state.run.cfg.log.sample_every
        self.path = state.run.exp.samples_path
        self.path.parent.mkdir(parents=True, exist_ok=True)
        truncate(self.path, state.step)

    def on_step_end(self, state: LoopState, step: int, record: dict[str, Any]) -> None:
        if step == 0 or step % self.every:
            return
        lines = "".join(json.dumps(r, ensure_ascii=False) + "\n"
                        for r in generate_samples(state.run, step))
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(lines)
