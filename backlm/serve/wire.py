"""The OpenAI-compatible shapes of ``backlm serve``: request bodies checked into typed values,
errors in OpenAI's shape, completions and stream chunks.

Pure functions over dicts, so every bad input is tested without a server. A request names a
served model id: the experiment id, and for a bidirectional model also ``EXP@forward`` and
``EXP@backward`` (the order it writes in; the ``direction`` body field does the same).
"""

from __future__ import annotations

import json
import math
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from backlm.direction import ORDERS, Direction
from backlm.errors import UserError, check_text, text_from_bytes
from backlm.serve.conversation import MAX_TOKENS, Sampling, check_order

ROLES = ("system", "developer", "user", "assistant")


@dataclass(frozen=True)
class Limits:
    """What one request may ask for; larger requests get a 4xx error, never a slow server."""

    max_body_bytes: int = 256 * 1024
    max_messages: int = 256
    max_message_chars: int = 32_000
    max_tokens: int = MAX_TOKENS
    max_temperature: float = 2.0  # OpenAI's range
    max_generations: int = 32  # concurrent generations; more get 429
    max_n: int = 8  # replies decoded together for one prompt
    max_prompts: int = 64  # prompts in one /v1/completions request
    batch_rows: int = 32  # rows decoded together; a request past them is decoded alone


class ApiError(Exception):
    """A request the server refuses: HTTP status and OpenAI's error body."""

    def __init__(self, status: int, message: str, param: str | None = None,
                 code: str | None = None, kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = (
            status, message, param, code, kind)

    def body(self) -> dict[str, Any]:
        """``{"error": {"message", "type", "param", "code"}}``."""
        return {"error": {"message": self.message, "type": self.kind, "param": self.param,
                          "code": self.code}}


def served_models(exp_id: str, direction: Direction) -> dict[str, Direction | None]:
    """Served model ids and the order each writes in (None: the model's own)."""
    models: dict[str, Direction | None] = {exp_id: None}
    if direction == Direction.BIDIRECTIONAL:
        models.update({f"{exp_id}@{order.value}": order for order in ORDERS})
    return models


def parse_body(raw: bytes) -> dict[str, Any]:
    """The JSON object in a request body: UTF-8 through the text boundary
    (:func:`backlm.errors.text_from_bytes`), then JSON (NaN and Infinity are not JSON and are
    refused). Each text field is checked where it is read (:func:`_unicode`)."""
    def constant(name: str) -> Any:
        raise ValueError(f"{name} is not valid JSON")

    try:
        text = text_from_bytes(raw, "the request body", "send UTF-8 JSON")
    except UserError as exc:
        raise ApiError(400, str(exc)) from None
    try:
        body = json.loads(text, parse_constant=constant)
    except (ValueError, RecursionError) as exc:
        raise ApiError(400, f"the request body is not valid JSON ({exc})") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    return body


@dataclass(frozen=True)
class ChatRequest:
    """A checked ``/v1/chat/completions`` request."""

    model: str
    order: Direction | None  # the order to write in; None: the model's own
    messages: list[dict[str, str]]
    sampling: Sampling
    stream: bool
    include_usage: bool
    n: int = 1
    stop: tuple[str, ...] = ()
    logprobs: int | None = None  # alternatives per token; None: no log-probabilities
    stream_mode: str = "append"  # append: deltas a client joins; prepend: backlm.position


def _number(body: dict, key: str, low: float, high: float, default: Any, whole: bool) -> Any:
    value = body.get(key)
    if value is None:
        return default
    kinds = (int,) if whole else (int, float)
    # isfinite on floats only: a JSON whole number with 400 digits overflows it
    if (isinstance(value, bool) or not isinstance(value, kinds)
            or (isinstance(value, float) and not math.isfinite(value))):
        kind = "a whole number" if whole else "a number"
        raise ApiError(400, f"{key} must be {kind}, got {json.dumps(value)[:40]}", key)
    if not low <= value <= high:
        shown = [f"{x}" if whole else f"{x:g}" for x in (low, high)]
        raise ApiError(400, f"{key} must be between {shown[0]} and {shown[1]}, got "
                       f"{json.dumps(value)[:40]}", key)
    return value


def _model(body: dict, models: dict[str, Direction | None]) -> tuple[str, Direction | None]:
    name = body.get("model")
    if not isinstance(name, str) or not name:
        raise ApiError(400, "model is required: one of " + ", ".join(models), "model")
    if name not in models:
        raise ApiError(404, f"the model {name[:100]!r} does not exist here; served: "
                       + ", ".join(models), "model", "model_not_found")
    return name, models[name]


def _content(value: Any, i: int, limits: Limits) -> str:
    if isinstance(value, list):  # content parts: only text parts carry meaning here
        texts = []
        for part in value:
            if not (isinstance(part, dict) and part.get("type") == "text"
                    and isinstance(part.get("text"), str)):
                raise ApiError(400, f"messages[{i}].content parts must be text parts "
                               '({"type": "text", "text": ...})', f"messages[{i}].content")
            texts.append(part["text"])
        value = "".join(texts)
    if not isinstance(value, str):
        raise ApiError(400, f"messages[{i}].content must be a string", f"messages[{i}].content")
    if len(value) > limits.max_message_chars:
        raise ApiError(400, f"messages[{i}].content has {len(value):,} characters; at most "
                       f"{limits.max_message_chars:,}", f"messages[{i}].content")
    return _unicode(value, f"messages[{i}].content")


def _unicode(text: str, param: str) -> str:
    """``text`` through the text boundary (:func:`backlm.errors.check_text`): refused when it
    holds a lone surrogate (JSON's ``"\\ud800"``), which cannot be encoded as UTF-8, neither
    for the tokenizer nor in the response that echoes it."""
    try:
        return check_text(text, param, "send valid Unicode text")
    except UserError as exc:
        raise ApiError(400, str(exc), param) from None


def _messages(body: dict, limits: Limits) -> list[dict[str, str]]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "messages must be a non-empty list of {role, content}", "messages")
    if len(messages) > limits.max_messages:
        raise ApiError(400, f"{len(messages):,} messages; at most {limits.max_messages}",
                       "messages")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise ApiError(400, f"messages[{i}] must be an object", f"messages[{i}]")
        role = m.get("role")
        if role not in ROLES:
            raise ApiError(400, f"messages[{i}].role must be one of {', '.join(ROLES)}",
                           f"messages[{i}].role")
        role = "system" if role == "developer" else role
        out.append({"role": role, "content": _content(m.get("content"), i, limits)})
    return out


def _unsupported(body: dict) -> None:
    """Options the models cannot honour are refused, not silently ignored."""
    for key in ("tools", "functions", "logit_bias", "response_format"):
        if body.get(key) not in (None, [], {}):
            raise ApiError(400, f"{key} is not supported by backlm models", key)


STOP_STRINGS, STOP_CHARS = 4, 256  # OpenAI's count


def _stop(body: dict) -> tuple[str, ...]:
    """``stop``: a string or a list of up to four non-empty strings."""
    value = body.get("stop")
    if value is None:
        return ()
    values = [value] if isinstance(value, str) else value
    if (not isinstance(values, list) or len(values) > STOP_STRINGS
            or not all(isinstance(v, str) and 0 < len(v) <= STOP_CHARS for v in values)):
        raise ApiError(400, f"stop must be a string or a list of at most {STOP_STRINGS} "
                       f"non-empty strings of at most {STOP_CHARS} characters", "stop")
    return tuple(_unicode(v, "stop") for v in values)


@dataclass(frozen=True)
class Options:
    """What chat and text completions share: sampling, replies, stop strings, the stream."""

    sampling: Sampling
    n: int
    stop: tuple[str, ...]
    stream: bool
    include_usage: bool
    stream_mode: str


def options(body: dict, limits: Limits, tokens: int) -> Options:
    """The sampling and stream fields of a chat or text completion body (``tokens``: the
    checked token limit)."""
    _unsupported(body)
    temperature = _number(body, "temperature", 0, limits.max_temperature, 1.0, False)
    top_k = _number(body, "top_k", 1, 1 << 30, None, True)
    top_p = _number(body, "top_p", 0, 1, None, False)
    if top_p == 0:  # the smallest set holding no mass: the likeliest token alone
        top_p, top_k = None, 1
    penalties = [float(_number(body, k, -2, 2, 0.0, False))
                 for k in ("presence_penalty", "frequency_penalty")]
    n = _number(body, "n", 1, limits.max_n, 1, True)
    seed = _number(body, "seed", -(1 << 63), (1 << 63) - 1, None, True)
    stream = body.get("stream", False)
    if not isinstance(stream, bool) and stream is not None:
        raise ApiError(400, "stream must be true or false", "stream")
    stream_options = body.get("stream_options") or {}
    if not isinstance(stream_options, dict):
        raise ApiError(400, "stream_options must be an object", "stream_options")
    if not isinstance(stream_options.get("include_usage", False), bool | None):
        raise ApiError(400, "stream_options.include_usage must be true or false",
                       "stream_options.include_usage")
    extension = body.get("backlm") or {}
    mode = extension.get("stream_mode", "append") if isinstance(extension, dict) else None
    if mode not in ("append", "prepend"):
        raise ApiError(400, 'backlm must be an object whose stream_mode is "append" or '
                       '"prepend"', "backlm.stream_mode")
    seed = None if seed is None else seed % (1 << 63)  # torch seeds are non-negative
    sampling = Sampling(float(temperature), top_k, tokens, seed,
                        None if top_p is None else float(top_p), *penalties)
    return Options(sampling, n, _stop(body), bool(stream),
                   bool(stream_options.get("include_usage")), mode)


def _top_logprobs(body: dict, stream: bool) -> int | None:
    """Chat's ``logprobs`` (true/false) and ``top_logprobs`` (0..20, with logprobs only)."""
    wanted = body.get("logprobs")
    if wanted is not None and not isinstance(wanted, bool):
        raise ApiError(400, "logprobs must be true or false", "logprobs")
    top = _number(body, "top_logprobs", 0, MAX_TOP_LOGPROBS, None, True)
    if top is not None and not wanted:
        raise ApiError(400, "top_logprobs needs logprobs: true", "top_logprobs")
    if wanted and stream:
        raise ApiError(400, "logprobs are returned without stream only: set stream to false",
                       "logprobs")
    return (top or 0) if wanted else None


MAX_TOP_LOGPROBS = 20


def _order(body: dict, direction: Direction) -> Direction | None:
    """The body's ``direction``: the order to write in, parsed and checked against the model."""
    wanted = body.get("direction")
    if wanted is None:
        return None
    try:
        order = Direction.parse(wanted) if isinstance(wanted, str) else None
    except UserError:
        order = None
    if order not in ORDERS:
        raise ApiError(400, "direction must be forward or backward", "direction")
    try:
        return check_order(direction, order)  # the one check a chat's switch makes too
    except UserError as exc:
        raise ApiError(400, str(exc), "direction") from None


def chat_request(body: dict[str, Any], models: dict[str, Direction | None],
                 direction: Direction, limits: Limits) -> ChatRequest:
    """Check a chat completion body; raise :class:`ApiError` naming the first bad field."""
    name, order = _model(body, models)
    wanted = _order(body, direction)
    if wanted is not None:
        if order is not None and wanted != order:
            raise ApiError(400, f"model {name} writes {order}; direction says {wanted}",
                           "direction")
        order = wanted
    messages = _messages(body, limits)
    tokens = _number(body, "max_completion_tokens", 1, limits.max_tokens, None, True)
    if tokens is None:
        tokens = _number(body, "max_tokens", 1, limits.max_tokens, 256, True)
    opts = options(body, limits, tokens)
    return ChatRequest(name, order, messages, opts.sampling, opts.stream, opts.include_usage,
                       opts.n, opts.stop, _top_logprobs(body, opts.stream), opts.stream_mode)


def score_request(body: dict[str, Any], models: dict[str, str | None],
                  limits: Limits) -> str:
    """The text of a ``/v1/score`` body (``model`` optional, checked when given)."""
    if body.get("model") is not None:
        _model(body, models)
    text = body.get("text")
    if not isinstance(text, str) or not text:
        raise ApiError(400, "text must be a non-empty string", "text")
    if len(text) > limits.max_message_chars:
        raise ApiError(400, f"text has {len(text):,} characters; at most "
                       f"{limits.max_message_chars:,}", "text")
    return _unicode(text, "text")


def new_id() -> str:
    """A completion id in OpenAI's style."""
    return "chatcmpl-" + uuid.uuid4().hex[:24]


def usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion}


def completion(cid: str, model: str, choices: list[dict[str, Any]], extra: dict[str, Any],
               prompt_tokens: int, tokens: int) -> dict[str, Any]:
    """A ``chat.completion`` object; ``extra`` goes under ``backlm`` (order, position,
    the conversation in reading order)."""
    return {
        "id": cid, "object": "chat.completion", "created": int(time.time()), "model": model,
        "choices": choices, "usage": usage(prompt_tokens, tokens), "backlm": extra,
    }


def chunk(cid: str, model: str, delta: dict[str, Any], finish: str | None = None,
          extra: dict[str, Any] | None = None, index: int = 0) -> dict[str, Any]:
    """One ``chat.completion.chunk``; ``extra`` (e.g. where the piece goes) under ``backlm``."""
    out: dict[str, Any] = {
        "id": cid, "object": "chat.completion.chunk", "created": int(time.time()),
        "model": model, "choices": [{"index": index, "delta": delta, "finish_reason": finish,
                                     "logprobs": None}],
    }
    if extra:
        out["backlm"] = extra
    return out


def sse(payload: dict[str, Any] | str) -> bytes:
    """One server-sent event line."""
    data = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
    return f"data: {data}\n\n".encode()


HOLE = "\x00"  # the text a chunk template leaves open


def template(payload: dict[str, Any]) -> Callable[[str], bytes]:
    """The SSE event of ``payload`` with its one :data:`HOLE` string filled by the text given:
    a stream encodes its chunk shape once, then only each chunk's text."""
    head, tail = sse(payload).split(b'"\\u0000"')

    def fill(text: str) -> bytes:
        return head + json.dumps(text, ensure_ascii=False).encode() + tail

    return fill
