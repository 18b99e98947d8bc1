"""backlm/serve/app.py as an outside user meets it: the real app under uvicorn on 127.0.0.1, driven
by the official openai client, httpx and raw bytes. Completions streamed and not streamed agree,
every malformed request is an OpenAI-shaped 4xx, generations run side by side and a stopped
client frees its slot."""

from __future__ import annotations

import json
import math
import random
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from backlm.serve.wire import Limits
from tests.helpers import serving

SHORT = 20  # max tokens for most completions: the models are tiny, the tests about shape


def load(name: str, limits: Limits | None = None):
    from backlm.experiment.loading import load_model
    from backlm.serve.app import create_app

    return create_app(load_model(name, device="cpu"), limits)


@pytest.fixture(scope="module")
def urls(serve_world, phase_world) -> Iterator[dict[str, str]]:
    """``bi1`` (bidirectional SFT) and ``s1`` (backward SFT) served for the whole module."""
    from tests.helpers import use_world

    with pytest.MonkeyPatch.context() as mp:
        use_world(mp, phase_world, serve_world)
        apps = {name: load(name) for name in ("bi1", "s1")}
        with serving(apps["bi1"]) as bi1, serving(apps["s1"]) as s1:
            yield {"bi1": bi1, "s1": s1}


@pytest.fixture
def limited(served) -> Iterator[tuple[str, object]]:
    """``bi1`` with room for two generations at once: (url, engine)."""
    app = load("bi1", Limits(max_generations=2))
    with serving(app) as url:
        yield url, app.state.engine


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=60)


def is_error_shape(body: object) -> bool:
    return (isinstance(body, dict) and set(body) == {"error"}
            and set(body["error"]) == {"message", "type", "param", "code"}
            and isinstance(body["error"]["message"], str) and body["error"]["message"] != "")


def sse(lines: Iterator[str]) -> list[dict | str]:
    """The ``data:`` payloads of an SSE stream (``[DONE]`` as a string)."""
    out: list[dict | str] = []
    for line in lines:
        if line.startswith("data: "):
            data = line[len("data: "):]
            out.append(data if data == "[DONE]" else json.loads(data))
        else:
            assert line == "", line
    return out


def place(text: str, piece: str, position: str) -> str:
    return piece + text if position == "start" else text + piece


# --- the official openai client ---------------------------------------------------------------

def test_openai_lists_the_models(urls):
    ids = [m.id for m in client(urls["bi1"]).models.list()]
    assert ids == ["bi1", "bi1@forward", "bi1@backward"]
    back = client(urls["bi1"]).models.retrieve("bi1@backward")
    assert back.owned_by == "backlm" and back.model_extra["direction"] == "backward"
    assert [m.id for m in client(urls["s1"]).models.list()] == ["s1"]


CASES = [  # (server, model, messages, the role written, where it goes)
    ("bi1", "bi1@forward", [{"role": "system", "content": "Answer briefly."},
                            {"role": "user", "content": "Hello, who are you?"}], "assistant"),
    ("bi1", "bi1@backward", [{"role": "assistant", "content": "theta."},
                             {"role": "user", "content": "And back?"},
                             {"role": "assistant", "content": "three two one."}], "user"),
    ("s1", "s1", [{"role": "assistant", "content": "one two three."}], "user"),
]


@pytest.mark.parametrize(("server", "model", "messages", "role"), CASES)
def test_openai_stream_equals_the_completion(urls, server, model, messages, role):
    api = client(urls[server])
    done = api.chat.completions.create(model=model, messages=messages, temperature=0,
                                       max_completion_tokens=SHORT)
    choice = done.choices[0]
    assert choice.message.role == role and choice.finish_reason in ("stop", "length")
    assert done.usage.completion_tokens <= SHORT and done.usage.prompt_tokens > 0
    extra = done.model_extra["backlm"]
    conversation = extra["conversation"]
    written = {"role": role, "content": choice.message.content}
    if role == "assistant":  # forward: the model's turn follows the user's
        assert extra["position"] == "end" and conversation[-1] == written
    else:  # backward: the written turn comes first, before the given ending
        assert extra["position"] == "start" and conversation[0] == written
        assert conversation[1:] == messages
    text, finish, usage, chunks = "", None, None, 0
    for chunk in api.chat.completions.create(model=model, messages=messages, temperature=0,
                                             max_completion_tokens=SHORT, stream=True,
                                             stream_options={"include_usage": True}):
        chunks += 1
        if chunk.usage is not None:
            usage = chunk.usage
        for c in chunk.choices:
            if c.delta.role:
                assert c.delta.role == role
            if c.delta.content:
                text = place(text, c.delta.content, chunk.model_extra["backlm"]["position"])
            finish = c.finish_reason or finish
    assert text == choice.message.content and finish == choice.finish_reason
    assert usage is not None and usage.completion_tokens == done.usage.completion_tokens
    assert chunks >= 3  # role, at least one piece or the finish, usage


def test_max_completion_tokens_is_honoured(urls):
    api = client(urls["bi1"])
    for n in (1, 3):
        done = api.chat.completions.create(model="bi1@forward", temperature=0.9, seed=n,
                                           max_completion_tokens=n,
                                           messages=[{"role": "user", "content": "Hello"}])
        assert done.usage.completion_tokens <= n
        assert done.choices[0].finish_reason in ("stop", "length")


def test_openai_errors_carry_the_message(urls):
    api = client(urls["bi1"])
    user = [{"role": "user", "content": "Hello"}]
    with pytest.raises(openai.BadRequestError, match="temperature must be between 0 and 2"):
        api.chat.completions.create(model="bi1", messages=user, temperature=5)
    with pytest.raises(openai.NotFoundError, match="does not exist") as info:
        api.chat.completions.create(model="gpt-4o", messages=user)
    assert info.value.code == "model_not_found" and info.value.param == "model"
    with pytest.raises(openai.BadRequestError, match="first message must be the assistant's"):
        api.chat.completions.create(model="bi1@backward", messages=user)
    with pytest.raises(openai.BadRequestError, match="top_k"):
        api.chat.completions.create(model="bi1", messages=user, extra_body={"top_k": 0})
    with pytest.raises(openai.BadRequestError, match="direction"):
        client(urls["s1"]).chat.completions.create(
            model="s1", messages=user, extra_body={"direction": "forward"})
    with pytest.raises(openai.NotFoundError):
        api.models.retrieve("nope")


def test_a_context_too_long_is_a_400_naming_it(urls):
    long = " ".join(["alpha beta gamma delta"] * 60)  # far over 128 tokens
    with pytest.raises(openai.BadRequestError, match="context") as info:
        client(urls["bi1"]).chat.completions.create(
            model="bi1@forward", messages=[{"role": "user", "content": long}])
    assert info.value.param == "messages"
    r = httpx.post(urls["s1"] + "/v1/chat/completions", json={
        "model": "s1", "stream": True, "messages": [{"role": "assistant", "content": long}]})
    assert r.status_code == 400 and "context" in r.json()["error"]["message"]


# --- seeds and greedy decoding ----------------------------------------------------------------

def complete(url: str, model: str, **body) -> dict:
    body.setdefault("messages", [{"role": "user", "content": "Count to three."}])
    r = httpx.post(url + "/v1/chat/completions", json={"model": model, **body}, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()


def test_the_seed_makes_sampling_reproducible(urls):
    def text(seed: int) -> str:
        done = complete(urls["bi1"], "bi1@forward", temperature=1, seed=seed, max_tokens=SHORT)
        return done["choices"][0]["message"]["content"]

    assert text(11) == text(11)
    assert len({text(s) for s in range(4)}) >= 2


# --- /v1/score --------------------------------------------------------------------------------

def test_score_gives_each_order_and_matches_the_cli(urls, served):
    from tests.helpers import run_cli

    text = "alpha beta gamma. théta"
    for name, orders in (("bi1", ["forward", "backward"]), ("s1", ["backward"])):
        r = httpx.post(urls[name] + "/v1/score", json={"text": text, "model": name})
        assert r.status_code == 200, r.text
        got = r.json()
        assert got["object"] == "score" and got["model"] == name and got["bytes"] == 24
        assert list(got["orders"]) == orders
        tokens = [[t["token"] for t in got["orders"][o]["tokens"]] for o in orders]
        assert all(t == tokens[0] for t in tokens) and len(tokens[0]) >= 3
        for o in orders:
            r = got["orders"][o]
            assert math.isfinite(r["bits_per_byte"]) and r["bits_per_byte"] > 0
            assert r["logprob"] == pytest.approx(sum(t["logprob"] for t in r["tokens"]))
        res = run_cli(["score", name, text, "--json"])
        assert res.exit_code == 0, res.output
        cli = json.loads(res.output)["orders"]
        for o in orders:
            assert cli[o]["bits_per_byte"] == pytest.approx(got["orders"][o]["bits_per_byte"],
                                                            abs=1e-4)
            assert [t["token"] for t in cli[o]["tokens"]] == tokens[0]
            for a, b in zip(cli[o]["tokens"], got["orders"][o]["tokens"], strict=True):
                assert a["logprob"] == pytest.approx(b["logprob"], abs=1e-4)
    r = httpx.post(urls["s1"] + "/v1/score", json={"text": "word " * 400})
    assert r.status_code == 400 and "shorter" in r.json()["error"]["message"]


# --- the other routes -------------------------------------------------------------------------

def test_health_model_info_and_model_routes(urls):
    assert httpx.get(urls["bi1"] + "/health").json() == {"status": "ok"}
    assert httpx.head(urls["bi1"] + "/health").status_code == 200
    for name, toggle, orders in (("bi1", True, ["forward", "backward"]),
                                 ("s1", False, ["backward"])):
        info = httpx.get(urls[name] + "/model_info").json()
        assert set(info) >= {"id", "phase", "direction", "can_toggle", "step", "orders",
                             "models", "config", "limits"}
        assert info["id"] == name and info["phase"] == "sft" and info["can_toggle"] is toggle
        assert info["orders"] == orders and info["step"] == 2
        assert info["direction"] == ("bidirectional" if toggle else "backward")
        assert info["config"]["model"]["seq_len"] == 128
        assert info["limits"]["max_generations"] == 32
    r = httpx.get(urls["bi1"] + "/v1/models/bi1@forward")
    assert r.status_code == 200 and r.json()["direction"] == "forward"
    r = httpx.get(urls["bi1"] + "/v1/models/gpt-4o")
    assert r.status_code == 404 and is_error_shape(r.json())
    assert r.json()["error"]["code"] == "model_not_found"
    page = httpx.get(urls["bi1"] + "/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")


@pytest.mark.parametrize(("method", "path", "status"), [
    ("GET", "/nope", 404), ("GET", "/v1/chat", 404), ("POST", "/v2/chat/completions", 404),
    ("POST", "/health", 405), ("GET", "/v1/chat/completions", 405),
    ("DELETE", "/v1/models", 405), ("PUT", "/v1/score", 405),
])
def test_unknown_routes_and_methods_are_json_errors(urls, method, path, status):
    r = httpx.request(method, urls["bi1"] + path)
    assert r.status_code == status and is_error_shape(r.json())
    assert r.headers["content-type"] == "application/json"
    assert status == 404 or r.headers["allow"]  # a 405 says which methods the route takes


# --- fuzz: malformed and oversized requests ---------------------------------------------------

GOOD = {"model": "bi1", "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 4}
WRONG = {  # values each field refuses
    "model": [None, 5, True, [], {}, ["bi1"], "", "gpt-4o", "bi1@up", "x" * 5000],
    "messages": [None, 5, "Hello", {}, [], [None], ["Hello"], [[]], [{"role": "user"}],
                 [{"role": "robot", "content": "x"}], [{"role": 5, "content": "x"}],
                 [{"role": "user", "content": 5}], [{"role": "user", "content": ""}],
                 [{"role": "user", "content": "  "}],
                 [{"role": "user", "content": [{"type": "image_url"}]}],
                 [{"role": "assistant", "content": "x"}],
                 [{"role": "user", "content": "x"}, {"role": "system", "content": "y"}],
                 [{"role": "user", "content": "x"}] * 300,
                 [{"role": "user", "content": "bad \ud800"}]],
    "max_tokens": [0, -1, 4097, 1.5, "8", True, [], {}, 10 ** 400, 1e400],
    "max_completion_tokens": [0, 4097, "1", False, 10 ** 30],
    "temperature": [-1, 2.5, "1", True, [], 1e400, -1e400, 10 ** 400],
    "top_k": [0, -5, 1.5, "3", True, 10 ** 400],
    "seed": [1.5, "1", True, [], 1 << 64, -(10 ** 400)],
    "stream": ["true", 1, [], {}],
    "stream_options": [[1], "x", 5, {"include_usage": "yes"}],
    "direction": ["up", 5, [], True, "bidirectional"],
    "n": [9, 0, True, "1"], "top_p": [1.5, -1, True], "stop": ["", [1], ["a"] * 5],
    "tools": [[{"type": "function"}]], "logprobs": ["yes", 1], "presence_penalty": [3],
    "top_logprobs": [21, 3], "backlm": [{"stream_mode": "x"}, "prepend"],
}


def fuzz_requests(n: int, seed: int = 0) -> list[tuple[str, str, dict, object]]:
    """``n`` (method, path, headers, body) that must all be refused with a 4xx."""
    rng = random.Random(seed)
    big = "x" * (1 << 20)

    def chunked(data: bytes) -> Iterator[bytes]:  # no Content-Length: Transfer-Encoding chunked
        for i in range(0, len(data), 65536):
            yield data[i:i + 65536]

    def one() -> tuple[str, str, dict, object]:
        kind = rng.randrange(17)
        path, headers = "/v1/chat/completions", {"content-type": "application/json"}
        if kind == 0:  # invalid JSON bytes
            body = rng.choice([b"{", b"}", b"{'model': 'bi1'}", b'{"model": bi1}', b"nul",
                               b'{"a" 1}', b"[1,]", b'{"model": "bi1",}', b"\x00"])
        elif kind == 1:  # truncated JSON
            raw = json.dumps(GOOD).encode()
            body = raw[:rng.randrange(len(raw))]
        elif kind == 2:  # not an object
            body = rng.choice([b"[]", b"1", b'"chat"', b"null", b"true", b"[{}]", b"-0.5"])
        elif kind in (3, 4, 5):  # a wrong value for one field
            field = rng.choice(sorted(WRONG))
            body = json.dumps({**GOOD, field: rng.choice(WRONG[field])}).encode()
        elif kind == 6:  # literals that are not JSON
            lit = rng.choice(["NaN", "Infinity", "-Infinity"])
            body = json.dumps(GOOD)[:-1].encode() + f', "temperature": {lit}}}'.encode()
        elif kind == 7:  # too many messages (also over the body limit)
            body = json.dumps({**GOOD, "messages": [{"role": "user", "content": "x"}] *
                               rng.choice([257, 10_000])}).encode()
        elif kind == 8:  # a megabyte of content, with and without Content-Length
            raw = json.dumps({**GOOD, "messages": [{"role": "user", "content": big}]}).encode()
            body = raw if rng.random() < 0.5 else chunked(raw)
        elif kind == 9:  # non-UTF-8 bytes
            body = rng.choice([b'{"model": "bi1", "messages": [{"role": "user", "content": "'
                               b'\xff\xfe\xc0"}]}', b"\xff" * 50, b'{"model": "\xe9"}'])
        elif kind == 10:  # deeply nested
            depth = rng.choice([1000, 20_000, 100_000])
            body = rng.choice([b"[" * depth, b"[" * depth + b"]" * depth,
                               b'{"model": "bi1", "messages": ' + b"[" * depth])
        elif kind == 11:  # random bytes
            body = rng.randbytes(rng.randrange(1, 2000))
        elif kind == 12:  # wrong content types, the body not JSON either
            headers = {"content-type": rng.choice(["application/x-www-form-urlencoded",
                                                   "multipart/form-data; boundary=x",
                                                   "text/plain"])}
            body = rng.choice([b"model=bi1&messages=hi", b"--x\r\n\r\nmodel\r\n--x--", b"hi"])
        elif kind == 13:  # huge numbers
            field = rng.choice(["max_tokens", "temperature", "top_k", "seed"])
            body = json.dumps(GOOD)[:-1].encode() + (
                f', "{field}": ' + rng.choice(["1" + "0" * 4000, "1e999", "-1e999"]) + "}"
            ).encode()
        elif kind == 14:  # the score route
            path = "/v1/score"
            body = json.dumps(rng.choice([{}, {"text": ""}, {"text": 5}, {"text": "x" * 40_000},
                                          {"text": "word " * 400}, {"text": "a", "model": "no"},
                                          {"text": "a\udc80"}])).encode()
        elif kind == 15:  # refused before the model is reached: a conversation too long
            words = " ".join(["alpha beta"] * rng.choice([100, 2000]))
            body = json.dumps({**GOOD, "messages": [{"role": "user", "content": words}]}
                              ).encode()
        else:  # empty bodies, bad routes, bad methods
            path = rng.choice(["/v1/chat/completions", "/v1/score", "/v1/edits"])
            return rng.choice(["POST", "PUT", "DELETE"]), path, headers, b""
        return "POST", path, headers, body

    return [one() for _ in range(n)]


def fire(url: str, requests: list, workers: int = 4) -> list[tuple[int, object]]:
    """Send ``requests`` over keep-alive connections from a small pool; (status, body) each."""
    local = threading.local()

    def send(req) -> tuple[int, object]:
        method, path, headers, body = req
        if not hasattr(local, "client"):
            local.client = httpx.Client(timeout=30)
        for attempt in range(2):
            try:
                r = local.client.request(method, url + path, headers=headers, content=body)
                break
            except httpx.TransportError:  # a refused upload may close the connection early
                if attempt or not isinstance(body, bytes):
                    raise
        try:
            return r.status_code, r.json()
        except ValueError:
            return r.status_code, r.text

    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(send, requests))


def fuzz(url: str, n: int) -> None:
    requests = fuzz_requests(n)
    started = time.monotonic()
    results = fire(url, requests)
    took = time.monotonic() - started
    bad = [(req[1], req[3][:80] if isinstance(req[3], bytes) else "<chunked>", status, body)
           for req, (status, body) in zip(requests, results, strict=True)
           if not (400 <= status < 500 and is_error_shape(body))]
    assert not bad, f"{len(bad)} of {n} not a 4xx JSON error, e.g. {bad[:3]}"
    statuses = {status for status, _ in results}
    assert {400, 404, 405, 413} <= statuses, statuses
    assert took < 120
    assert httpx.get(url + "/health").json() == {"status": "ok"}
    done = complete(url, "bi1@forward", temperature=0, max_tokens=4,
                    messages=[{"role": "user", "content": "Hello"}])
    assert done["choices"][0]["finish_reason"] in ("stop", "length")


def test_fuzz_every_bad_request_is_a_4xx_json_error(urls):
    fuzz(urls["bi1"], 200)


@pytest.mark.slow
def test_fuzz_a_thousand_bad_requests(urls):
    fuzz(urls["bi1"], 1000)


# --- concurrency ------------------------------------------------------------------------------

def stream(url: str, body: dict, timeout: float = 60) -> list[dict | str]:
    with httpx.stream("POST", url + "/v1/chat/completions", json={**body, "stream": True},
                      timeout=timeout) as r:
        assert r.status_code == 200, r.read()
        return sse(r.iter_lines())


def test_sixteen_streams_at_once_all_finish(urls):
    body = {"model": "bi1@backward", "temperature": 1, "max_tokens": 24,
            "messages": [{"role": "assistant", "content": "alpha beta."}],
            "backlm": {"stream_mode": "prepend"}}  # pieces as written, as the chat page asks
    with ThreadPoolExecutor(16) as pool:
        events = list(pool.map(lambda s: stream(urls["bi1"], {**body, "seed": s}), range(16)))
    texts = set()
    for ev in events:
        assert ev[-1] == "[DONE]" and ev[-2]["choices"][0]["finish_reason"] in ("stop", "length")
        text = ""
        for e in ev[1:-2]:
            assert e["backlm"]["position"] == "start"
            text = place(text, e["choices"][0]["delta"]["content"], "start")
        assert ev[-2]["backlm"]["conversation"][0] == {"role": "user", "content": text}
        texts.add(text)
    assert len(texts) >= 2  # distinct seeds, distinct samples


def test_health_answers_while_long_generations_stream(urls):
    body = {"model": "bi1@forward", "temperature": 0, "max_tokens": 4096, "stream": True,
            "messages": [{"role": "user", "content": "Hello"}]}  # greedy bi1 never stops early
    leave = threading.Event()

    def read() -> str:  # until told to leave: "left" proves the stream was still running
        with httpx.stream("POST", urls["bi1"] + "/v1/chat/completions", json=body,
                          timeout=60) as r:
            for line in r.iter_lines():
                if line == "data: [DONE]":
                    return "done"
                if leave.is_set():
                    return "left"
        return "cut"

    with ThreadPoolExecutor(4) as pool:  # four streams keep the model busy
        streams = [pool.submit(read) for _ in range(4)]
        time.sleep(0.2)
        waits = []
        for _ in range(5):
            started = time.monotonic()
            assert httpx.get(urls["bi1"] + "/health", timeout=5).json() == {"status": "ok"}
            waits.append(time.monotonic() - started)
            time.sleep(0.05)
        leave.set()
        assert [s.result() for s in streams] == ["left"] * 4  # all ran through the checks
    assert max(waits) < 1.0, waits


def test_two_greedy_requests_at_once_agree(urls):
    body = {"model": "bi1@forward", "temperature": 0, "max_tokens": 40,
            "messages": [{"role": "user", "content": "What do you read?"}]}
    with ThreadPoolExecutor(2) as pool:
        a, b = pool.map(lambda _: complete(urls["bi1"], **body), range(2))
    assert a["choices"][0]["message"]["content"] == b["choices"][0]["message"]["content"]
    assert a["choices"][0]["message"]["content"]


def test_beyond_the_generation_limit_is_429(limited):
    url, engine = limited
    body = {"model": "bi1@backward", "temperature": 0, "max_tokens": 3,
            "messages": [{"role": "assistant", "content": "one two three."}]}
    with ThreadPoolExecutor(2) as pool:
        with engine.lock:  # the model is held: both generations wait for their first piece
            waiting = [pool.submit(complete, url, **body) for _ in range(2)]
            deadline = time.monotonic() + 20
            while engine.slots._value > 0:  # both slots taken
                assert time.monotonic() < deadline
                time.sleep(0.01)
            r = httpx.post(url + "/v1/chat/completions", json=body, timeout=10)
            assert r.status_code == 429 and is_error_shape(r.json())
            assert r.json()["error"]["type"] == "rate_limit_error"
            r = httpx.post(url + "/v1/chat/completions", json={**body, "stream": True},
                           timeout=10)
            assert r.status_code == 429
            assert httpx.get(url + "/health", timeout=5).status_code == 200
        for f in waiting:
            assert f.result()["choices"][0]["message"]["role"] == "user"
    assert complete(url, **body)["choices"][0]["finish_reason"] in ("stop", "length")


def test_a_client_that_leaves_mid_stream_frees_its_slot(limited):
    url, engine = limited
    body = {"model": "bi1@forward", "temperature": 0, "max_tokens": 4096, "stream": True,
            "messages": [{"role": "user", "content": "Hello"}]}  # greedy bi1 never stops early
    for _ in range(4):  # twice the slots
        with httpx.Client(timeout=30) as c, c.stream("POST", url + "/v1/chat/completions",
                                                    json=body) as r:
            assert r.status_code == 200
            lines = r.iter_lines()
            assert next(lines).startswith("data: ") and next(lines) == ""
        deadline = time.monotonic() + 3  # long before the 4096 tokens could be written
        while engine.slots._value < 2:  # the server notices the client left
            assert time.monotonic() < deadline, "a slot leaked"
            time.sleep(0.02)
    short = {**body, "max_tokens": 3, "stream": False}
    assert complete(url, **short)["choices"][0]["finish_reason"] in ("stop", "length")


def test_seeded_streams_decoded_together_write_what_each_writes_alone(limited):
    url, engine = limited
    bodies = [{"model": "bi1@forward", "temperature": 1.0, "top_p": 0.9, "seed": seed,
               "max_tokens": 48, "messages": [{"role": "user", "content": "Hello there"}]}
              for seed in (11, 12)]
    alone = [complete(url, **b)["choices"][0]["message"]["content"] for b in bodies]
    before = engine.batch.steps

    def streamed(body: dict) -> str:
        text = ""
        for e in stream(url, body)[1:-2]:
            text = place(text, e["choices"][0]["delta"]["content"], e["backlm"]["position"])
        return text

    with ThreadPoolExecutor(2) as pool:
        with engine.lock:  # both arrive before either is decoded
            together = pool.map(streamed, bodies)
            deadline = time.monotonic() + 20
            while engine.slots._value > 0:
                assert time.monotonic() < deadline
                time.sleep(0.01)
        together = list(together)
    assert together == alone and alone[0] != alone[1]
    steps = engine.batch.steps - before
    assert 0 < steps < 2 * 47  # their rows were stepped together
