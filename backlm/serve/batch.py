"""Concurrent generations decoded together (continuous batching): every request's rows live in
one :class:`backlm.model.decode.BatchDecoder`, and each step feeds every row that wants a token
at once, so a step reads the weights once for all of them.

:class:`Batch` stands in for the model where the conversation engine and text completions call
``model.decode``: the steps it returns are the engine's :class:`backlm.model.decode.Step`, each
request with its own sampling, seed generator, penalties, log-probabilities and token limit
(drawn by :func:`backlm.model.decode.draw_step`, the engine's own per-step draw). A request that
comes while others stream joins at the next step; its rows leave when its generation ends (done,
stopped, or its client gone). Everything here runs on the model thread
(:class:`backlm.serve.model_thread.ModelThread`): a generation that needs a step it does not
have steps the whole batch, and the others find theirs waiting. A request that cannot join (its
prompt scored, too long for the batch, no free slot) is decoded alone by the engine.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from typing import Any

BATCH_EXTRA = 512  # positions past the model's context a batched row may reach
# A row is stepped with the others even when its last steps are still unread (its generation
# comes later in the model thread's round, or needed several steps for one piece), so every
# step takes every row; up to this many unread steps (a paused generation stops there).
STEPS_AHEAD = 4


class Batch:
    """The model's rows decoded together: up to ``rows`` rows of up to ``max_len`` positions
    (default the model's context plus :data:`BATCH_EXTRA`); the cache is made at first use."""

    def __init__(self, model: Any, rows: int, max_len: int | None = None) -> None:
        self.model, self.rows = model, rows
        self.max_len = max_len or model.cfg.seq_len + BATCH_EXTRA
        self.decoder: Any = None
        self.groups: list[Rows] = []
        self.steps = 0  # batch steps taken (the tests read it)

    @property
    def cfg(self) -> Any:
        return self.model.cfg

    def decode(self, prompt: list[int], max_new_tokens: int, *, rows: int = 1,
               sampling: Any = None, seed: int | None = None, top_logprobs: int | None = None,
               score_prompt: bool = False, stop: Iterable[int] = ()) -> Iterator[Any]:
        """:func:`backlm.model.decode.decode`'s steps, these rows decoded with every other
        request's (alone, by the engine itself, where they cannot join)."""
        from backlm.model.decode import GREEDY, decode

        sampling = sampling or GREEDY
        free = self.rows if self.decoder is None else self.decoder.free
        if (score_prompt or not prompt or max_new_tokens <= 0 or rows > free
                or len(prompt) + max_new_tokens > self.max_len):
            return decode(self.model, prompt, max_new_tokens, rows=rows, sampling=sampling,
                          seed=seed, top_logprobs=top_logprobs, score_prompt=score_prompt,
                          stop=stop)
        return Rows(self, prompt, max_new_tokens, rows, sampling, seed, top_logprobs, stop)

    def _decoder(self) -> Any:
        if self.decoder is None:
            from backlm.model.decode import BatchDecoder

            self.decoder = BatchDecoder(self.model, self.max_len, self.rows)
        return self.decoder

    def step(self) -> None:
        """One token for every row, all in one step (a row whose reader is
        :data:`STEPS_AHEAD` steps behind waits)."""
        import torch

        wanting = [g for g in self.groups
                   if g.pending is not None and len(g.ready) < STEPS_AHEAD]
        if not wanting:
            return
        if len(self.groups) == 1 and wanting[0].greedy():  # a lone greedy stream: many per call
            self.steps += 1
            return
        slots = [s for g in wanting for s in g.slots]
        tokens = [t for g in wanting for t in g.pending]
        with torch.inference_mode():
            logits = self.decoder.step(slots, tokens)
            at = 0
            for g in wanting:  # drawn now: the next step reuses the logits' memory
                rows = len(g.slots)  # (a group that draws its last step leaves)
                g.draw(logits[at:at + rows])
                at += rows
        self.steps += 1


class Rows:
    """One request's rows in a :class:`Batch`: an iterator of steps, as the engine's
    ``decode``. The prompt is prefilled into each row at once, and the first step drawn;
    :meth:`close` frees the rows."""

    def __init__(self, batch: Batch, prompt: list[int], max_new_tokens: int, rows: int,
                 sampling: Any, seed: int | None, top_logprobs: int | None,
                 stop: Iterable[int] = ()) -> None:
        self.batch, self.prompt, self.left, self.n = batch, prompt, max_new_tokens, rows
        self.sampling, self.seed, self.top, self.stop = sampling, seed, top_logprobs, set(stop)
        # greedy, one row, nothing scored: alone in the batch it runs many steps per C call
        self.plain = (rows == 1 and sampling.temperature <= 0 and not sampling.penalized
                      and top_logprobs is None)
        self.chunk = 1  # 1, 2, 4, ... so that a stream's first tokens come as soon as made
        self.slots: list[int] = []
        self.ready: deque[Any] = deque()  # drawn steps not yet read
        self.pending: list[int] | None = None  # tokens to feed at the next step
        self.counts: Any = None
        self.generator: Any = None
        self.closed = False
        self._start()

    def __iter__(self) -> Rows:
        return self

    def __next__(self) -> Any:
        while not self.ready:
            if self.pending is None:
                raise StopIteration
            self.batch.step()
        return self.ready.popleft()

    def _start(self) -> None:
        import torch

        from backlm.model.decode import generator_for

        batch = self.batch
        decoder = batch._decoder()
        with torch.inference_mode():
            firsts = []
            try:
                for _ in range(self.n):
                    slot, logits = decoder.add(self.prompt)
                    self.slots.append(slot)
                    firsts.append(logits)
            except BaseException:
                self.close()
                raise
            logits = torch.stack(firsts)
            if self.sampling.penalized:
                self.counts = torch.zeros(logits.shape, dtype=torch.float32)
            self.generator = generator_for(batch.model, self.seed)
            batch.groups.append(self)
            self.draw(logits)

    def draw(self, logits: Any) -> None:
        """Draw this request's tokens from ``logits`` ``(rows, V)``: a step ready to read, and
        the tokens to feed next (none after the last)."""
        from backlm.model.decode import draw_step

        step = draw_step(logits, self.sampling, self.generator, self.counts, self.top)
        self.ready.append(step)
        self.left -= 1
        if self.left > 0:
            self.pending = step.tokens.tolist()
        else:  # the last step is drawn: its rows are needed no more
            self._leave()

    def greedy(self) -> bool:
        """Draw several greedy steps in one C call (this group steps alone now); False where
        it cannot (not :attr:`plain`, no fused step)."""
        import torch

        from backlm.model.decode import GREEDY_CHUNK, Step, batch_greedy

        if not self.plain:
            return False
        drawn = batch_greedy(self.batch.decoder, self.slots[0], self.pending[0],
                             min(self.chunk, self.left), self.stop)
        if drawn is None:
            return False
        self.chunk = min(2 * self.chunk, GREEDY_CHUNK)
        self.ready.extend(Step(torch.tensor([token])) for token in drawn)
        self.left -= len(drawn)
        if self.left > 0 and drawn[-1] not in self.stop:
            self.pending = drawn[-1:]
        else:  # the last step is drawn, or the row has ended: its rows are needed no more
            self._leave()
        return True

    def close(self) -> None:
        """Free the rows (once; the batch steps them no more) and drop unread steps."""
        self._leave()
        self.ready.clear()

    def _leave(self) -> None:
        if self.closed:
            return
        self.closed, self.pending = True, None
        batch = self.batch
        if self in batch.groups:
            batch.groups.remove(self)
        for slot in self.slots:
            batch.decoder.release(slot)
        self.slots = []
