"""``/v1/completions`` (OpenAI's legacy text completions) for any served model, and the
log-probability shapes of both completion endpoints.

A prompt is text (or token ids) in reading order. It is tokenized in reading order and put in
the model's order after ``<|bos|>`` (and a bidirectional model's marker), as in training
(:func:`backlm.direction.encode_document`): a forward model continues the prompt; a backward
model takes the prompt as the END of a text and writes what came before it. ``text`` is always
returned in reading order (with ``echo``: forward ``prompt + written``, backward
``written + prompt``). A token-id prompt that starts with ``<|bos|>`` names the document's start
itself: that ``<|bos|>`` is not added again, and is listed (with a null log-probability).

Log-probabilities are the model's own (before temperature, penalties and truncation), listed
in reading order: each token's log-probability as the model predicted it in its order, given
the tokens before it in that order. The first token the model reads after its start tokens has
no context of the prompt's own and is null, as OpenAI's first token (forward: the prompt's
first token; backward: its last). ``echo`` with ``max_tokens: 0`` only scores the prompt (what
lm-evaluation-harness sends for log-likelihoods; with ``max_tokens: 1`` it drops the last
entry). A written end token (``<|bos|>`` or a chat token: the document ends) is listed after the
written tokens, as OpenAI lists ``<|endoftext|>``; ``text_offset`` counts it as no characters.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

from backlm.direction import Direction, encode_document, model_order, prefix_length
from backlm.serve import wire
from backlm.serve.replies import Logprob, Piece, Replies, merged, place, scored
from backlm.serve.wire import MAX_TOP_LOGPROBS, ApiError, Limits, Options


@dataclass(frozen=True)
class CompletionRequest:
    """A checked ``/v1/completions`` request."""

    model: str
    order: Direction  # the order the model writes in
    prompts: list[tuple[list[int], bool]]  # reading-order ids, and whether <|bos|> was given
    texts: list[str]  # each prompt as text (what echo returns)
    max_tokens: int
    options: Options
    echo: bool
    logprobs: int | None


def _prompts(value: Any, tokenizer: Any, limits: Limits) -> list[tuple[list[int], bool]]:
    """``prompt``: a string, a list of strings, token ids, or a list of token-id lists."""
    bad = ApiError(400, "prompt must be a string, a list of strings, a list of token ids or a "
                   "list of token-id lists", "prompt")
    if isinstance(value, str) or (isinstance(value, list) and value
                                  and all(isinstance(t, int) for t in value)):
        value = [value]
    if not isinstance(value, list) or not value:
        raise bad
    if len(value) > limits.max_prompts:
        raise ApiError(400, f"{len(value)} prompts; at most {limits.max_prompts}", "prompt")
    out = []
    bos, vocab = tokenizer.bos_id, tokenizer.vocab_size
    specials = set(tokenizer.specials.values())
    for i, p in enumerate(value):
        if isinstance(p, str):
            if len(p) > limits.max_message_chars:
                raise ApiError(400, f"prompt[{i}] has {len(p):,} characters; at most "
                               f"{limits.max_message_chars:,}", "prompt")
            out.append((tokenizer.encode(wire._unicode(p, "prompt")), False))
        elif (isinstance(p, list) and p and all(isinstance(t, int) and not isinstance(t, bool)
                                                for t in p)):
            given = p[0] == bos
            body = p[1:] if given else p
            if any(not 0 <= t < vocab or t in specials for t in body):
                raise ApiError(400, f"prompt[{i}] holds a token id outside the vocabulary or a "
                               "special token (only a leading <|bos|> is taken)", "prompt")
            out.append((list(body), given))
        else:
            raise bad
    return out


def completion_request(body: dict[str, Any], models: dict[str, Direction | None],
                       loaded: Any, limits: Limits) -> CompletionRequest:
    """Check a text completion body; raise :class:`ApiError` naming the first bad field."""
    name, order = wire._model(body, models)
    wanted = wire._order(body, loaded.direction)
    if wanted is not None and order is not None and wanted != order:
        raise ApiError(400, f"model {name} writes {order}; direction says {wanted}", "direction")
    order = wanted or order or loaded.direction.orders[0]
    if "prompt" not in body:
        raise ApiError(400, "prompt is required", "prompt")
    prompts = _prompts(body["prompt"], loaded.tokenizer, limits)
    echo = body.get("echo", False)
    if not isinstance(echo, bool) and echo is not None:
        raise ApiError(400, "echo must be true or false", "echo")
    tokens = wire._number(body, "max_tokens", 0, limits.max_tokens, 16, True)
    if tokens == 0 and not echo:
        raise ApiError(400, "max_tokens 0 writes nothing: give at least 1, or echo the prompt",
                       "max_tokens")
    opts = wire.options(body, limits, max(tokens, 1))
    logprobs = wire._number(body, "logprobs", 0, MAX_TOP_LOGPROBS, None, True)
    if logprobs is not None and opts.stream:
        raise ApiError(400, "logprobs are returned without stream only: set stream to false",
                       "logprobs")
    if opts.n * len(prompts) > limits.max_prompts:
        raise ApiError(400, f"n × prompts is {opts.n * len(prompts)}; at most "
                       f"{limits.max_prompts}", "n")
    room = loaded.model.cfg.seq_len + (1 if tokens == 0 else 0)
    head = prefix_length(loaded.direction)
    for i, (ids, _) in enumerate(prompts):
        if head + len(ids) > room:
            raise ApiError(400, f"prompt[{i}] is {head + len(ids):,} tokens with the start "
                           f"tokens; this model reads {room:,}: shorten it", "prompt")
    texts = [loaded.tokenizer.decode(ids) for ids, _ in prompts]
    return CompletionRequest(name, order, prompts, texts, tokens, opts, bool(echo), logprobs)


@dataclass
class Choice:
    """One finished choice: its text in reading order, log-probabilities, why it ended."""

    text: str = ""
    finish: str = "length"
    logprobs: list[Logprob] = field(default_factory=list)  # reading order


class Run:
    """One completion request on the model: its pieces (as they come), then its choices."""

    def __init__(self, loaded: Any, req: CompletionRequest, model: Any = None) -> None:
        self.loaded, self.req = loaded, req
        self.model = model or loaded.model  # what decodes: the model, or a shared batch
        self.choices: list[Choice] = []
        self.prompt_tokens = self.tokens = 0

    def pieces(self) -> Iterator[Any]:
        """Every choice's pieces (:class:`backlm.serve.replies.Piece`, ``row`` the
        choice's index), prompt by prompt."""
        ld, req, n = self.loaded, self.req, self.req.options.n
        sampling, where = req.options.sampling, req.order.writes_at
        marker = req.order if ld.direction is Direction.BIDIRECTIONAL else None
        head = prefix_length(ld.direction)
        for p, ((ids, given_bos), text) in enumerate(zip(req.prompts, req.texts, strict=True)):
            seq, _ = encode_document(ids, ld.direction, ld.tokenizer.special_ids, marker)
            self.prompt_tokens += len(seq)
            scored = req.echo and req.logprobs is not None
            steps = self.model.decode(seq, req.max_tokens, rows=n, sampling=sampling.params(),
                                    seed=sampling.seed, top_logprobs=req.logprobs,
                                    score_prompt=scored)
            echoed = self._prompt_logprobs(next(steps), head, given_bos) if scored else []
            if req.echo:
                for row in range(n):
                    yield Piece(text, where, p * n + row)
            replies = Replies(ld.tokenizer, req.order, n, ld.tokenizer.specials.values(),
                              req.options.stop, req.logprobs is not None, ends_scored=True)
            try:
                for step in steps if req.max_tokens else ():
                    yield from (Piece(x.text, x.where, p * n + x.row) for x in replies.push(step))
                    if replies.done:
                        break
                yield from (Piece(x.text, x.where, p * n + x.row) for x in replies.end())
            finally:
                steps.close()
            for row, reply in enumerate(replies.rows):
                self.tokens += len(reply.tokens)
                written = replies.reading_logprobs(row) if req.max_tokens else []
                full = place(where, text, reply.text) if req.echo else reply.text
                lps = place(where, echoed, written)
                self.choices.append(Choice(full, reply.finish or "length", lps))

    def _prompt_logprobs(self, step: Any, head: int, given_bos: bool) -> list[Logprob]:
        """The prompt's entries in reading order, from the engine's prompt-scoring step (a
        null entry has ``logprob`` None)."""
        body = [scored(step, i) for i in range(head - 1, step.tokens.size(0))]
        if given_bos:  # the given <|bos|> is listed; the first body token keeps its value
            body = [Logprob(self.loaded.tokenizer.bos_id, None), *body]
        elif body:
            body[0] = Logprob(body[0].token, None)
        return model_order(body, self.req.order)


def new_id() -> str:
    """A text completion id in OpenAI's style."""
    return "cmpl-" + uuid.uuid4().hex[:24]


def _logprobs(tokenizer: Any, entries: list[Logprob]) -> dict[str, Any]:
    """OpenAI's legacy ``logprobs``: tokens, token_logprobs, top_logprobs, text_offset."""
    specials = set(tokenizer.specials.values())
    tokens, values, tops, offsets = [], [], [], []
    done = b""
    for e in entries:
        offsets.append(len(done.decode("utf-8", errors="ignore")))
        tokens.append(tokenizer.id_to_token_str(e.token))
        done += b"" if e.token in specials else tokenizer.ranks[e.token]
        values.append(e.logprob)
        tops.append(None if e.logprob is None else
                    {tokenizer.id_to_token_str(t): lp for t, lp in e.top})
    return {"tokens": tokens, "token_logprobs": values, "top_logprobs": tops,
            "text_offset": offsets}


def response(cid: str, run: Run, cut: bool) -> dict[str, Any]:
    """The ``text_completion`` object of a finished run (``cut``: ended by a shutdown)."""
    req, tok = run.req, run.loaded.tokenizer
    choices = []
    for i, c in enumerate(run.choices):
        lp = None if req.logprobs is None else _logprobs(tok, c.logprobs)
        choices.append({"text": c.text, "index": i, "logprobs": lp,
                        "finish_reason": "length" if cut else c.finish})
    return {"id": cid, "object": "text_completion", "created": int(time.time()),
            "model": req.model, "choices": choices,
            "usage": wire.usage(run.prompt_tokens, run.tokens)}


def chat_logprobs(tokenizer: Any, entries: list[Logprob]) -> dict[str, Any]:
    """Chat's ``logprobs``: ``{"content": [{token, logprob, bytes, top_logprobs}]}``."""
    def one(token: int, logprob: float) -> dict[str, Any]:
        text = tokenizer.id_to_token_str(token)
        raw = tokenizer.ranks[token] if token < len(tokenizer.ranks) else text.encode()
        return {"token": text, "logprob": logprob, "bytes": list(raw)}

    return {"content": [{**one(e.token, e.logprob),
                         "top_logprobs": [one(t, lp) for t, lp in e.top]} for e in entries],
            "refusal": None}


async def events(cid: str, run: Run, pieces: Any) -> AsyncIterator[bytes]:
    """SSE ``text_completion`` chunks: pieces as they come (backward, unless the request asks
    for ``prepend``: each choice's whole text at its end), each choice's finish, ``[DONE]``."""
    req = run.req
    hold = req.order.writes_at == "start" and req.options.stream_mode == "append"
    total = req.options.n * len(req.prompts)

    def shape(index: int, text: str, finish: str | None, where: str | None = None
              ) -> dict[str, Any]:
        out: dict[str, Any] = {"id": cid, "object": "text_completion",
                               "created": int(time.time()), "model": req.model,
                               "choices": [{"text": text, "index": index, "logprobs": None,
                                            "finish_reason": finish}]}
        if where is not None:
            out["backlm"] = {"position": where}
        return out

    def chunk(index: int, text: str, finish: str | None, where: str | None = None) -> bytes:
        return wire.sse(shape(index, text, finish, where))

    fills: dict[tuple[int, str], Any] = {}

    def delta(piece: Piece) -> bytes:
        key = (piece.row, piece.where)
        if key not in fills:
            fills[key] = wire.template(shape(piece.row, wire.HOLE, None, piece.where))
        return fills[key](piece.text)

    try:  # each wake-up sends what accumulated: one chunk per choice, in one write
        while (batch := await pieces.take()) is not None:
            if not hold:
                yield b"".join(delta(piece) for piece in merged(batch))
    except Exception as exc:  # noqa: BLE001 - the stream has started: report in-band
        yield wire.sse(ApiError(500, f"generation failed: {type(exc).__name__}",
                                kind="server_error").body())
        yield wire.sse("[DONE]")
        return
    for i in range(total):
        c = run.choices[i] if i < len(run.choices) else None
        if hold and c is not None and c.text:
            yield chunk(i, c.text, None, "end")
        yield chunk(i, "", "length" if pieces.cut or c is None else c.finish)
    if req.options.include_usage:
        yield wire.sse({"id": cid, "object": "text_completion", "created": int(time.time()),
                        "model": req.model, "choices": [],
                        "usage": wire.usage(run.prompt_tokens, run.tokens)})
    yield wire.sse("[DONE]")
