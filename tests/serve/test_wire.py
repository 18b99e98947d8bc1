"""backlm/serve/wire.py: every bad request field is an ApiError with the right status and param; any
JSON body at all gives a checked request or an ApiError, never another exception."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backlm.direction import Direction
from backlm.serve.wire import ApiError, ChatRequest, Limits, chat_request, parse_body, score_request
from backlm.serve.wire import served_models as served

LIMITS = Limits()
BI = served("bi1", Direction.BIDIRECTIONAL)
BACK = served("s1", Direction.BACKWARD)
USER = [{"role": "user", "content": "Hello"}]


def chat(body: dict, models=BI, direction=Direction.BIDIRECTIONAL, limits=LIMITS) -> ChatRequest:
    return chat_request(body, models, direction, limits)


def refused(fn, *args) -> ApiError:
    with pytest.raises(ApiError) as info:
        fn(*args)
    err = info.value
    shape = err.body()["error"]
    assert set(shape) == {"message", "type", "param", "code"} and shape["message"]
    return err


def test_served_models():
    assert served("bi1", Direction.BIDIRECTIONAL) == {"bi1": None, "bi1@forward": "forward",
                                              "bi1@backward": "backward"}
    assert served("s1", Direction.BACKWARD) == {"s1": None}


def test_a_good_request_and_its_defaults():
    req = chat({"model": "bi1@backward", "messages": [
        {"role": "developer", "content": "Be brief."},
        {"role": "assistant", "content": [{"type": "text", "text": "the "},
                                          {"type": "text", "text": "end"}]}]})
    assert req.model == "bi1@backward" and req.order == "backward"
    assert req.messages == [{"role": "system", "content": "Be brief."},
                            {"role": "assistant", "content": "the end"}]
    s = req.sampling
    assert (s.temperature, s.top_k, s.max_tokens, s.seed) == (1.0, None, 256, None)
    assert req.stream is False and req.include_usage is False


def test_numbers_at_their_limits_are_taken():
    req = chat({"model": "bi1", "messages": USER, "temperature": 2, "top_k": 1, "seed": 7,
                "max_tokens": 4096, "stream": True, "stream_options": {"include_usage": True},
                "n": 1, "top_p": 1, "stop": None, "tools": [], "logprobs": False})
    assert req.sampling.temperature == 2.0 and isinstance(req.sampling.temperature, float)
    assert (req.sampling.top_k, req.sampling.seed, req.sampling.max_tokens) == (1, 7, 4096)
    assert req.stream and req.include_usage


def test_max_completion_tokens_wins_over_max_tokens():
    req = chat({"model": "bi1", "messages": USER, "max_tokens": 100,
                "max_completion_tokens": 7})
    assert req.sampling.max_tokens == 7
    req = chat({"model": "bi1", "messages": USER, "max_tokens": 100,
                "max_completion_tokens": None})
    assert req.sampling.max_tokens == 100
    err = refused(chat, {"model": "bi1", "messages": USER, "max_tokens": 100,
                         "max_completion_tokens": 0})
    assert err.param == "max_completion_tokens"


def test_a_negative_seed_is_a_valid_torch_seed():
    for seed in (-1, -(1 << 63), (1 << 63) - 1, 0):
        assert 0 <= chat({"model": "bi1", "messages": USER, "seed": seed}).sampling.seed < 1 << 63


BAD_FIELDS = [
    # (field, value, param)
    ("max_tokens", 0, "max_tokens"), ("max_tokens", 4097, "max_tokens"),
    ("max_tokens", -5, "max_tokens"), ("max_tokens", 1.5, "max_tokens"),
    ("max_tokens", "10", "max_tokens"), ("max_tokens", True, "max_tokens"),
    ("max_tokens", [10], "max_tokens"), ("max_tokens", 10 ** 400, "max_tokens"),
    ("max_tokens", float("inf"), "max_tokens"),
    ("max_completion_tokens", 4097, "max_completion_tokens"),
    ("max_completion_tokens", False, "max_completion_tokens"),
    ("temperature", 2.0001, "temperature"), ("temperature", 3, "temperature"),
    ("temperature", -0.1, "temperature"), ("temperature", "1", "temperature"),
    ("temperature", True, "temperature"), ("temperature", False, "temperature"),
    ("temperature", float("nan"), "temperature"), ("temperature", float("inf"), "temperature"),
    ("temperature", float("-inf"), "temperature"), ("temperature", 10 ** 400, "temperature"),
    ("temperature", {"value": 1}, "temperature"),
    ("top_k", 0, "top_k"), ("top_k", -3, "top_k"), ("top_k", 2.5, "top_k"),
    ("top_k", True, "top_k"), ("top_k", "5", "top_k"), ("top_k", 10 ** 400, "top_k"),
    ("seed", 1.5, "seed"), ("seed", "7", "seed"), ("seed", True, "seed"),
    ("seed", 1 << 63, "seed"), ("seed", -(1 << 63) - 1, "seed"), ("seed", 10 ** 400, "seed"),
    ("stream", "yes", "stream"), ("stream", 1, "stream"), ("stream", [], "stream"),
    ("stream_options", [1], "stream_options"), ("stream_options", "usage", "stream_options"),
    ("stream_options", {"include_usage": "no"}, "stream_options.include_usage"),
    ("stream_options", {"include_usage": 1}, "stream_options.include_usage"),
    ("direction", "sideways", "direction"), ("direction", ["forward"], "direction"),
    ("direction", "bidirectional", "direction"), ("direction", True, "direction"),
    ("n", 9, "n"), ("n", 0, "n"), ("n", True, "n"), ("n", "1", "n"),
    ("top_p", 1.5, "top_p"), ("top_p", -0.1, "top_p"), ("top_p", True, "top_p"),
    ("presence_penalty", 2.5, "presence_penalty"), ("presence_penalty", "1", "presence_penalty"),
    ("frequency_penalty", -2.01, "frequency_penalty"),
    ("stop", "", "stop"), ("stop", ["a", "b", "c", "d", "e"], "stop"), ("stop", [1], "stop"),
    ("stop", "x" * 257, "stop"), ("stop", {"s": 1}, "stop"),
    ("top_logprobs", 21, "top_logprobs"), ("top_logprobs", -1, "top_logprobs"),
    ("top_logprobs", 3, "top_logprobs"),  # without logprobs: true
    ("backlm", {"stream_mode": "sideways"}, "backlm.stream_mode"),
    ("backlm", "prepend", "backlm.stream_mode"),
    ("tools", [{"type": "function", "function": {"name": "f"}}], "tools"),
    ("functions", [{"name": "f"}], "functions"), ("logit_bias", {"50": 10}, "logit_bias"),
    ("response_format", {"type": "json_object"}, "response_format"),
    ("logprobs", "yes", "logprobs"), ("logprobs", 0, "logprobs"),
]


@pytest.mark.parametrize(("field", "value", "param"), BAD_FIELDS, ids=lambda v: repr(v)[:24])
def test_every_bad_field_is_a_400_naming_it(field, value, param):
    err = refused(chat, {"model": "bi1", "messages": USER, field: value})
    assert (err.status, err.param) == (400, param)
    assert field in err.message or (field == "backlm" and "stream_mode" in err.message)


def test_sampling_replies_stop_and_logprobs_are_taken():
    req = chat({"model": "bi1", "messages": USER, "n": 3, "top_p": 0.9, "stop": "END",
                "presence_penalty": -2, "frequency_penalty": 2, "logprobs": True,
                "top_logprobs": 20, "backlm": {"stream_mode": "prepend"}})
    assert (req.n, req.stop, req.logprobs, req.stream_mode) == (3, ("END",), 20, "prepend")
    s = req.sampling
    assert (s.top_p, s.presence_penalty, s.frequency_penalty) == (0.9, -2.0, 2.0)
    req = chat({"model": "bi1", "messages": USER, "stop": ["a", "b"], "logprobs": True})
    assert (req.stop, req.logprobs, req.stream_mode) == (("a", "b"), 0, "append")
    req = chat({"model": "bi1", "messages": USER, "top_p": 0})  # the likeliest token alone
    assert (req.sampling.top_p, req.sampling.top_k) == (None, 1)
    assert chat({"model": "bi1", "messages": USER, "logprobs": False}).logprobs is None
    err = refused(chat, {"model": "bi1", "messages": USER, "logprobs": True, "stream": True})
    assert err.param == "logprobs"


@pytest.mark.parametrize(("messages", "param"), [
    (None, "messages"), ([], "messages"), ("Hello", "messages"), ({"role": "user"}, "messages"),
    ([{"role": "user", "content": "x"}] * 10_000, "messages"),
    (["Hello"], "messages[0]"), ([None], "messages[0]"),
    ([{"content": "x"}], "messages[0].role"), ([{"role": "robot", "content": "x"}],
                                                "messages[0].role"),
    ([{"role": "tool", "content": "x"}], "messages[0].role"),
    ([{"role": ["user"], "content": "x"}], "messages[0].role"),
    ([{"role": {"user": 1}, "content": "x"}], "messages[0].role"),
    ([{"role": "user"}], "messages[0].content"), ([{"role": "user", "content": None}],
                                                  "messages[0].content"),
    ([{"role": "user", "content": 5}], "messages[0].content"),
    ([{"role": "user", "content": "x" * 40_000}], "messages[0].content"),
    ([*USER, {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}],
     "messages[1].content"),
    ([{"role": "user", "content": [{"type": "text", "text": 5}]}], "messages[0].content"),
    ([{"role": "user", "content": ["plain string part"]}], "messages[0].content"),
    ([{"role": "user", "content": "bad \ud800 surrogate"}], "messages[0].content"),
], ids=lambda v: repr(v)[:40])
def test_bad_messages_are_a_400_naming_the_message(messages, param):
    err = refused(chat, {"model": "bi1", "messages": messages})
    assert (err.status, err.param) == (400, param), err.message


def test_limits_are_those_given():
    tight = Limits(max_messages=2, max_message_chars=5, max_tokens=8, max_temperature=1.0)
    body = {"model": "bi1", "messages": USER}
    assert refused(chat, {**body, "messages": USER * 3}, BI, Direction.BIDIRECTIONAL, tight
                   ).param == "messages"
    assert refused(chat, {**body, "messages": [{"role": "user", "content": "123456"}]}, BI,
                   Direction.BIDIRECTIONAL, tight).param == "messages[0].content"
    assert refused(chat, {**body, "max_tokens": 9}, BI, Direction.BIDIRECTIONAL, tight
                   ).param == "max_tokens"
    assert refused(chat, {**body, "temperature": 1.5}, BI, Direction.BIDIRECTIONAL, tight
                   ).param == "temperature"


def test_the_model_is_required_and_must_be_served():
    err = refused(chat, {"messages": USER})
    assert (err.status, err.param) == (400, "model") and "bi1@backward" in err.message
    for name in ("", None, 5, ["bi1"], {"id": "bi1"}):
        assert refused(chat, {"model": name, "messages": USER}).status == 400
    for name in ("gpt-4o", "bi1@sideways", "BI1", "s1", "bi1@forward "):
        err = refused(chat, {"model": name, "messages": USER})
        assert (err.status, err.param, err.code) == (404, "model", "model_not_found")
        assert err.body()["error"]["code"] == "model_not_found"
    err = refused(chat, {"model": "x" * 100_000, "messages": USER})
    assert err.status == 404 and len(err.message) < 400  # the name is cut, not echoed whole


def test_direction_on_a_one_direction_model():
    body = {"model": "s1", "messages": [{"role": "assistant", "content": "end"}]}
    assert chat({**body, "direction": "backward"}, BACK, Direction.BACKWARD).order == "backward"
    err = refused(chat, {**body, "direction": "forward"}, BACK, Direction.BACKWARD)
    assert (err.status, err.param) == (400, "direction") and "backward only" in err.message


def test_direction_against_the_model_id():
    assert chat({"model": "bi1", "messages": USER, "direction": "backward"}).order == "backward"
    assert chat({"model": "bi1@forward", "messages": USER, "direction": "forward"}
                ).order == "forward"
    err = refused(chat, {"model": "bi1@forward", "messages": USER, "direction": "backward"})
    assert (err.status, err.param) == (400, "direction")
    assert "bi1@forward" in err.message and "backward" in err.message


def test_parse_body_takes_a_json_object_only():
    assert parse_body(b'{"model": "bi1"}') == {"model": "bi1"}
    for raw in (b"", b" ", b"{", b'{"model": "bi1"', b"{'model': 'bi1'}", b"model=bi1",
                b"\xff\xfe\x00garbage", b'{"a": "\xff"}', b"[" * 100_000, b'{"a":' * 50_000,
                b"nul", b"{}}"):
        err = refused(parse_body, raw)
        assert (err.status, err.param) == (400, None)
        assert ("not valid UTF-8 (byte 0xff" if b"\xff" in raw else "not valid JSON") in err.message
    for raw in (b"[]", b"1", b'"text"', b"null", b"true", b"[{}]", b"1e400"):
        err = refused(parse_body, raw)
        assert err.status == 400 and "JSON object" in err.message


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_literals_are_not_json(literal):
    raw = b'{"model": "bi1", "messages": [], "temperature": ' + literal.encode() + b"}"
    err = refused(parse_body, raw)
    assert err.status == 400 and literal.lstrip("-") in err.message


def test_score_request():
    assert score_request({"text": "alpha"}, BI, LIMITS) == "alpha"
    assert score_request({"text": "alpha", "model": "bi1@forward"}, BI, LIMITS) == "alpha"
    for body in ({}, {"text": ""}, {"text": 5}, {"text": ["a"]}, {"text": None},
                 {"text": "x" * 40_000}, {"text": "a\udc80b"}):
        err = refused(score_request, body, BI, LIMITS)
        assert (err.status, err.param) == (400, "text")
    err = refused(score_request, {"text": "alpha", "model": "nope"}, BI, LIMITS)
    assert (err.status, err.code) == (404, "model_not_found")
    assert refused(score_request, {"text": "alpha", "model": 5}, BI, LIMITS).status == 400


# --- any JSON at all: a checked request or an ApiError ---------------------------------------

TEXT = st.one_of(st.text(max_size=20),
                 st.text(st.characters(codec=None, categories=None), max_size=5),
                 st.sampled_from(["bi1", "bi1@forward", "bi1@backward", "user", "assistant",
                                  "system", "developer", "text", "forward", "backward", ""]))
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.integers(-10, 5000),
                    st.sampled_from([10 ** 400, -(10 ** 400), 1 << 63, 1e300]),
                    st.floats(allow_nan=False), TEXT)
JSON = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(TEXT, inner, max_size=4)), max_leaves=12)
MESSAGE = st.one_of(JSON, st.fixed_dictionaries(
    {"role": st.one_of(st.sampled_from(["user", "assistant", "system", "developer"]), JSON),
     "content": st.one_of(TEXT, JSON, st.lists(st.fixed_dictionaries(
         {"type": st.one_of(st.just("text"), JSON), "text": st.one_of(TEXT, JSON)})))}))
FIELDS = ["model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_k",
          "seed", "stream", "stream_options", "direction", "n", "top_p", "stop", "tools",
          "logprobs", "presence_penalty", "text"]
BODY = st.one_of(
    st.dictionaries(st.one_of(st.sampled_from(FIELDS), TEXT), JSON, max_size=6),
    st.fixed_dictionaries({"model": st.sampled_from(["bi1", "bi1@backward", "s1"]),
                           "messages": st.lists(MESSAGE, max_size=4)},
                          optional={k: JSON for k in FIELDS[2:]}),
)


def checked_or_refused(raw: bytes) -> None:
    for models, direction in ((BI, Direction.BIDIRECTIONAL), (BACK, Direction.BACKWARD)):
        try:
            body = parse_body(raw)
            req = chat_request(body, models, direction, LIMITS)
        except ApiError as exc:
            assert 400 <= exc.status < 500 and exc.message
            json.dumps(exc.body())  # the error itself is serializable
            continue
        assert req.model in models and 1 <= req.sampling.max_tokens <= LIMITS.max_tokens
        assert 0 <= req.sampling.temperature <= 2 and req.messages


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=st.one_of(JSON, BODY))
def test_any_json_body_is_checked_or_refused(value):
    checked_or_refused(json.dumps(value).encode())


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(field=st.sampled_from([*FIELDS, "role", "content"]), value=st.one_of(SCALARS, JSON))
def test_any_value_in_any_field_is_checked_or_refused(field, value):
    body = {"model": "bi1", "messages": [{"role": "user", "content": "Hello"}]}
    if field in ("role", "content"):
        body["messages"][0][field] = value
    else:
        body[field] = value
    checked_or_refused(json.dumps(body).encode())


@settings(max_examples=100, deadline=None)
@given(value=st.one_of(JSON, BODY), raw=st.binary(max_size=64))
def test_any_bytes_and_score_bodies_are_checked_or_refused(value, raw):
    for data in (raw, json.dumps(value).encode()):
        try:
            text = score_request(parse_body(data), BI, LIMITS)
        except ApiError as exc:
            assert 400 <= exc.status < 500
            continue
        assert isinstance(text, str) and text
