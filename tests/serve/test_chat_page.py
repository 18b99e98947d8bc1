"""The chat page ``backlm serve`` shows at ``/`` (backlm/serve/web/chat.html), driven in headless
Chromium against the real app: the header, the direction toggle, forward turns appended at the
end, backward turns written at the top, pieces placed where the server says while they stream,
the server's conversation kept, errors shown without touching the conversation.

Needs Playwright (Python) and a ``chromium`` binary (Debian's; Playwright's own browsers are
never downloaded); without either the tests skip and say which is missing.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import urllib.request
from pathlib import Path

import pytest

from tests.helpers import serving

# checked before any fixture, so a machine without them skips without building models
sync_api = pytest.importorskip("playwright.sync_api",
                               reason="playwright is not installed: pip install 'backlm[test]'")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None,
                                reason="no chromium binary on PATH: apt-get install chromium")

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
TOKENS = 24  # short greedy turns: fast, and well inside the tiny models' context

# Records the streaming message's text each time the page changes it, and whether the send
# button was disabled then (installed once per page; reset before each turn).
WATCH = """() => {
  window.__snaps = [];
  if (window.__watching) return;
  window.__watching = true;
  const box = document.getElementById("messages");
  new MutationObserver(() => {
    const el = box.querySelector(".msg.streaming");
    if (el) window.__snaps.push({role: el.dataset.role, at: [...box.children].indexOf(el),
      text: el.querySelector(".content").textContent,
      sendDisabled: document.getElementById("send").disabled});
  }).observe(box, {childList: true, subtree: true, characterData: true, attributes: true});
}"""
IDLE = """() => document.getElementById("messages").getAttribute("aria-busy") === "false"
  && !document.querySelector(".msg.streaming")"""


@pytest.fixture(scope="module")
def browser():
    """One headless Chromium for the module (it takes seconds to start on small machines)."""
    pw = sync_api.sync_playwright().start()
    try:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                      args=CHROMIUM_ARGS)
    except BaseException:
        pw.stop()
        raise
    yield chromium
    chromium.close()
    pw.stop()


@pytest.fixture
def serve(served):
    """``serve(EXP)``: the real app for that experiment of the serve world on 127.0.0.1 in a
    daemon thread; returns its URL. Stopped after the test."""
    from backlm.experiment.loading import load_model
    from backlm.serve.app import create_app

    with contextlib.ExitStack() as stack:

        def start(exp_id: str) -> str:
            app = create_app(load_model(exp_id, served, device="cpu"))
            return stack.enter_context(serving(app))

        yield start


@pytest.fixture
def page(browser, serve):
    """A fresh page; fails the test on any uncaught script error."""
    context = browser.new_context(viewport={"width": 1000, "height": 760})
    tab = context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda exc: errors.append(str(exc)))
    yield tab
    context.close()
    assert not errors, f"script errors on the page: {errors}"


def open_chat(page, url: str) -> None:
    page.goto(url)
    page.wait_for_selector("#send:enabled", timeout=10_000)


def settings(page, temperature: str = "0", max_tokens: str = str(TOKENS)) -> None:
    page.fill("#temperature", temperature)
    page.fill("#max-tokens", max_tokens)


def shown(page) -> list[dict[str, str]]:
    """The conversation as the page shows it, top to bottom."""
    return page.eval_on_selector_all(
        ".msg", "els => els.map(e => ({role: e.dataset.role, "
                "content: e.querySelector('.content').textContent}))")


def say(page, text: str) -> list[dict]:
    """Type ``text``, press Enter, wait for the turn to finish; the streaming snapshots."""
    page.evaluate(WATCH)
    page.fill("#input", text)
    page.press("#input", "Enter")
    page.wait_for_function(IDLE, timeout=15_000)
    return page.evaluate("window.__snaps")


def complete(url: str, **body) -> dict:
    """A non-streamed chat completion from the same server."""
    request = urllib.request.Request(f"{url}/v1/chat/completions", json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback only
    with opener.open(request, timeout=30) as res:
        return json.load(res)


def check_streamed(snaps: list[dict], final: str, role: str, at: int, grows_at: str) -> None:
    """The streaming message was marked, sat where it belongs, grew at the right end (pieces
    appended forward, prepended backward) while send was disabled, and ended as ``final``."""
    assert snaps, "the reply never showed as streaming"
    assert {(s["role"], s["at"]) for s in snaps} == {(role, at)}
    assert all(s["sendDisabled"] for s in snaps)
    for s in snaps:
        assert (final.startswith(s["text"]) if grows_at == "end"
                else final.endswith(s["text"])), (s["text"], final)
    assert snaps[-1]["text"] == final


def artifacts() -> Path:
    folder = Path(os.environ.get("BACKLM_TEST_ARTIFACTS") or ROOT / "test-artifacts")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def test_bidirectional_chat_forward_then_backward(page, serve):
    url = serve("bi1")
    open_chat(page, url)
    assert page.inner_text("#model-id") == "bi1"
    assert page.inner_text("#phase") == "sft"
    assert page.inner_text("#direction") == "↔ bidirectional"
    assert page.is_visible("#dir-forward") and page.is_visible("#dir-backward")
    assert page.get_attribute("#dir-forward", "aria-pressed") == "true"
    assert page.get_attribute("#dir-backward", "aria-pressed") == "false"
    settings(page)

    # forward: the person's turn at the end, the model's reply streamed after it
    snaps = say(page, "What is a list?")
    forward = complete(url, model="bi1", direction="forward", temperature=0, max_tokens=TOKENS,
                       messages=[{"role": "user", "content": "What is a list?"}])
    first = forward["backlm"]["conversation"]
    assert [m["role"] for m in first] == ["user", "assistant"]
    assert shown(page) == first
    check_streamed(snaps, first[1]["content"], "assistant", 1, "end")
    assert "tokens/s" in page.inner_text("#status")
    assert "error" not in (page.get_attribute("#status", "class") or "")
    assert page.input_value("#input") == ""

    # backward: the person's ending goes first, the model writes the user turn above it
    page.click("#dir-backward")
    assert page.get_attribute("#dir-backward", "aria-pressed") == "true"
    assert page.get_attribute("#dir-forward", "aria-pressed") == "false"
    snaps = say(page, "A list holds items in order.")
    backward = complete(url, model="bi1", direction="backward", temperature=0,
                        max_tokens=TOKENS, messages=[
                            {"role": "assistant", "content": "A list holds items in order."},
                            *first])
    final = backward["backlm"]["conversation"]
    page_now = shown(page)
    assert page_now == final
    assert [m["role"] for m in page_now] == ["user", "assistant", "user", "assistant"]
    assert page_now[1]["content"] == "A list holds items in order."
    assert page_now[2:] == first  # the earlier turns stay, in order, after the new ones
    check_streamed(snaps, final[0]["content"], "user", 0, "start")
    assert "tokens/s" in page.inner_text("#status")

    shot = artifacts() / "chat_page.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 0
    import matplotlib.image

    pixels = matplotlib.image.imread(str(shot))
    assert pixels.ndim == 3 and pixels.shape[0] >= 760
    assert pixels[..., :3].std() > 0.02, "the screenshot is a blank page"

    page.click("#clear")
    assert shown(page) == []


def test_backward_only_model_has_no_toggle_and_writes_at_the_top(page, serve):
    url = serve("s1")
    open_chat(page, url)
    assert page.inner_text("#model-id") == "s1"
    assert page.inner_text("#direction") == "← backward"
    assert page.locator("#dir-forward, #dir-backward").count() == 0
    assert page.locator('[aria-pressed="true"]').count() == 0
    settings(page)
    snaps = say(page, "Thanks, that helps.")
    final = complete(url, model="s1", temperature=0, max_tokens=TOKENS, messages=[
        {"role": "assistant", "content": "Thanks, that helps."}])["backlm"]["conversation"]
    assert shown(page) == final
    assert [m["role"] for m in final] == ["user", "assistant"]
    assert final[1]["content"] == "Thanks, that helps."
    check_streamed(snaps, final[0]["content"], "user", 0, "start")


def test_base_model_shows_one_running_text(page, serve):
    url = serve("b0")  # backward base: the model writes the text that comes before
    open_chat(page, url)
    assert page.inner_text("#phase") == "base"
    settings(page)
    snaps = say(page, "the end.")
    final = complete(url, model="b0", temperature=0, max_tokens=TOKENS, messages=[
        {"role": "user", "content": "the end."}])["backlm"]["conversation"]
    assert [m["role"] for m in final] == ["text"]
    assert shown(page) == final
    assert final[0]["content"].endswith("the end.")
    check_streamed(snaps, final[0]["content"], "text", 0, "start")


@pytest.mark.parametrize("max_tokens", ["0", "99999"])
def test_server_errors_show_and_leave_the_conversation(page, serve, max_tokens):
    open_chat(page, serve("bi1"))
    settings(page)
    say(page, "Hello?")
    before = shown(page)
    assert len(before) == 2
    page.fill("#max-tokens", max_tokens)
    say(page, "And then?")
    status = page.locator("#status")
    assert "error" in (status.get_attribute("class") or "").split()
    assert "max_tokens" in status.inner_text()
    assert shown(page) == before
    assert page.input_value("#input") == "And then?"  # the person's text is not lost
    assert page.is_enabled("#send")
    # a good turn afterwards clears the error
    page.fill("#max-tokens", "4")
    say(page, "And then?")
    assert "error" not in (status.get_attribute("class") or "").split()
    assert [m["role"] for m in shown(page)] == ["user", "assistant", "user", "assistant"]
