"""Stock OpenAI clients against ``backlm serve`` (the real app under uvicorn on 127.0.0.1):
backward streams that read right when joined, stop strings in reading order, top_p, n,
log-probabilities, and ``/v1/completions`` whose echoed log-probabilities are backlm's own
scores."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import openai
import pytest

from tests.helpers import serving


@pytest.fixture(scope="module")
def urls(serve_world, phase_world) -> Iterator[dict[str, str]]:
    """``s1`` (backward SFT), ``bi1`` (bidirectional SFT), ``b0`` (backward base) and ``bi0``
    (bidirectional base) served for the whole module; and each loaded model."""
    from backlm.experiment.loading import load_model
    from backlm.serve.app import create_app
    from tests.helpers import use_world

    with pytest.MonkeyPatch.context() as mp:
        use_world(mp, phase_world, serve_world)
        loaded = {name: load_model(name, device="cpu") for name in ("s1", "bi1", "b0", "bi0")}
        apps = {name: create_app(ld) for name, ld in loaded.items()}
        with serving(apps["s1"]) as s1, serving(apps["bi1"]) as bi1, \
                serving(apps["b0"]) as b0, serving(apps["bi0"]) as bi0:
            yield {"s1": s1, "bi1": bi1, "b0": b0, "bi0": bi0, "loaded": loaded}


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=60)


ENDING = [{"role": "assistant", "content": "one two three."}]
QUESTION = [{"role": "user", "content": "Hello, who are you?"}]


def test_a_backward_stream_joined_the_usual_way_is_the_reply(urls):
    api = client(urls["s1"])
    kw = {"model": "s1", "messages": ENDING, "temperature": 1.0, "seed": 11, "max_tokens": 24}
    reply = api.chat.completions.create(**kw).choices[0].message.content
    chunks = list(api.chat.completions.create(**kw, stream=True))
    joined = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert joined == reply and len(reply) > 3
    # the chat page's opt-in: pieces as written, each placed before the text so far
    shown, pieces = "", 0
    for c in api.chat.completions.create(**kw, stream=True,
                                         extra_body={"backlm": {"stream_mode": "prepend"}}):
        if c.choices and c.choices[0].delta.content:
            assert c.model_extra["backlm"]["position"] == "start"
            shown, pieces = c.choices[0].delta.content + shown, pieces + 1
    assert shown == reply and pieces > 1


def test_stop_strings_cut_in_reading_order_in_both_directions(urls):
    for url, model, messages in ((urls["bi1"], "bi1@forward", QUESTION),
                                 (urls["s1"], "s1", ENDING)):
        api = client(url)
        for seed in range(20):  # a seeded sample long enough to hold a stop in its middle
            kw = {"model": model, "messages": messages, "temperature": 1.0, "seed": seed,
                  "max_tokens": 30}
            full = api.chat.completions.create(**kw).choices[0].message.content
            stop = full[len(full) // 2: len(full) // 2 + 2]
            if len(full) > 8 and stop.strip():
                break
        assert len(full) > 8, full
        done = api.chat.completions.create(**kw, stop=[stop, "\u2603never"]).choices[0]
        if model.endswith("forward"):  # the reply keeps what comes before the first one
            assert done.message.content == full[:full.find(stop)]
        else:  # written toward the beginning: what follows the one nearest the end
            assert done.message.content == full[full.rfind(stop) + len(stop):]
        assert done.finish_reason == "stop"
        streamed = "".join(c.choices[0].delta.content or "" for c in
                           api.chat.completions.create(**kw, stop=stop, stream=True)
                           if c.choices)
        assert streamed == done.message.content


def test_top_p_n_and_logprobs(urls):
    api = client(urls["bi1"])
    kw = {"model": "bi1@forward", "messages": QUESTION, "max_tokens": 12}
    greedy = api.chat.completions.create(**kw, temperature=0).choices[0].message.content
    nucleus = api.chat.completions.create(**kw, temperature=1.0, top_p=1e-6, seed=1)
    assert nucleus.choices[0].message.content == greedy  # the likeliest token alone
    three = api.chat.completions.create(**kw, temperature=1.5, n=3, seed=4, logprobs=True,
                                        top_logprobs=3)
    assert [c.index for c in three.choices] == [0, 1, 2]
    assert len({c.message.content for c in three.choices}) >= 2
    written = 0
    for c in three.choices:
        content = c.logprobs.content
        written += len(content)
        text = b"".join(bytes(e.bytes) for e in content).decode("utf-8", errors="replace")
        assert text == c.message.content
        for e in content:
            assert len(e.top_logprobs) == 3 and e.logprob <= e.top_logprobs[0].logprob + 1e-6
    assert three.usage.completion_tokens == written
    one = api.chat.completions.create(**kw, temperature=0, logprobs=True, top_logprobs=1)
    for e in one.choices[0].logprobs.content:  # greedy: each token is the likeliest
        assert (e.token, e.logprob) == (e.top_logprobs[0].token, e.top_logprobs[0].logprob)
    again = api.chat.completions.create(**kw, temperature=0, presence_penalty=2,
                                        frequency_penalty=2)
    assert again.choices[0].message.content != greedy  # the penalties change the draw


TEXT = "alpha beta gamma. The quick brown fox."


@pytest.mark.parametrize(("server", "model", "order"), [("bi0", "bi0@forward", "forward"),
                                                       ("b0", "b0", "backward")])
def test_echoed_logprobs_are_backlms_own_scores(urls, server, model, order):
    from backlm.evaluation import score_text

    ld = urls["loaded"][server]
    own = score_text(ld.model, ld.tokenizer, ld.direction, TEXT)[order]["tokens"]
    api = client(urls[server])
    out = api.completions.create(model=model, prompt=TEXT, echo=True, max_tokens=0,
                                 logprobs=1, temperature=0)
    lp = out.choices[0].logprobs
    assert out.choices[0].text == TEXT
    assert lp.tokens == [t["token"] for t in own]
    null = 0 if order == "forward" else len(own) - 1  # the first token the model reads
    assert lp.token_logprobs[null] is None and lp.top_logprobs[null] is None
    for i, t in enumerate(own):
        if i != null:
            assert abs(lp.token_logprobs[i] - t["logprob"]) < 1e-4
    assert lp.text_offset == sorted(lp.text_offset) and lp.text_offset[0] == 0
    # what lm-evaluation-harness sends: one more token, listed last, dropped by the harness
    harness = api.completions.create(model=model, prompt=[TEXT, "beta"], echo=True,
                                     max_tokens=1, logprobs=1, temperature=0, seed=1234)
    assert len(harness.choices) == 2
    first = harness.choices[0].logprobs
    assert len(first.token_logprobs) == len(own) + 1
    # the written token goes after the prompt forward, before it backward
    got = first.token_logprobs[:-1] if order == "forward" else first.token_logprobs[1:]
    assert [g is None for g in got] == [k is None for k in lp.token_logprobs]
    assert all(abs(g - k) < 1e-5 for g, k in zip(got, lp.token_logprobs, strict=True)
               if g is not None)


def test_completions_stream_n_and_token_prompts(urls):
    api = client(urls["b0"])
    kw = {"model": "b0", "prompt": TEXT, "max_tokens": 16, "temperature": 1.0, "seed": 9}
    done = api.completions.create(**kw)
    joined = "".join(c.choices[0].text for c in api.completions.create(**kw, stream=True)
                     if c.choices)
    assert joined == done.choices[0].text and done.choices[0].text
    ids = httpx.post(urls["b0"] + "/tokenize", json={"prompt": TEXT}).json()["tokens"]
    bos = httpx.post(urls["b0"] + "/tokenize", json={"prompt": "<|bos|>"}).json()["tokens"]
    assert len(bos) == 1
    by_ids = api.completions.create(**{**kw, "prompt": ids})
    assert by_ids.choices[0].text == done.choices[0].text
    many = api.completions.create(**{**kw, "prompt": [TEXT, "beta"]}, n=2)
    assert [c.index for c in many.choices] == [0, 1, 2, 3]
    assert many.usage.prompt_tokens == 2 + len(ids) + len(
        httpx.post(urls["b0"] + "/tokenize", json={"prompt": "beta"}).json()["tokens"])
    for bad, param in (({"max_tokens": 0}, "max_tokens"), ({"logprobs": 21}, "logprobs"),
                       ({"prompt": [[10 ** 9]]}, "prompt"), ({"prompt": []}, "prompt"),
                       ({"n": 0}, "n"), ({"stop": [""]}, "stop")):
        r = httpx.post(urls["b0"] + "/v1/completions", json={**kw, **bad})
        assert r.status_code == 400 and r.json()["error"]["param"] == param, (bad, r.text)
