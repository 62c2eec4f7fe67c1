"""The chat page (devstack/static/) shows a reasoning model's thinking folded away above the answer,
and counts reasoning frames in the answer's one gapless seq, for gap warnings and for resume.

Headless Chromium (Debian's ``chromium``, driven by Playwright) loads the page from a plain HTTP
server, with a fake WebSocket in place of the real one, so each test plays the server's frames
exactly and reads what the page sends back; no stack runs.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.browser import chromium

pytestmark = pytest.mark.browser

STATIC = Path(__file__).resolve().parents[2] / "devstack" / "static"
TIMEOUT_MS = 10_000

# Every socket the page opens, with what it sent; ``push`` plays a server frame, ``drop`` hangs up.
FAKE_SOCKET = """
window.__sockets = [];
window.WebSocket = class FakeWebSocket {
  static CONNECTING = 0; static OPEN = 1; static CLOSING = 2; static CLOSED = 3;
  constructor(url) {
    this.url = url; this.readyState = 0; this.sent = [];
    window.__sockets.push(this);
    setTimeout(() => { this.readyState = 1; this.onopen?.({}); }, 0);
  }
  send(data) { this.sent.push(JSON.parse(data)); }
  close(code = 1000) { if (this.readyState < 2) this.drop(code); }
  drop(code = 1006) { this.readyState = 3; setTimeout(() => this.onclose?.({ code }), 0); }
  push(frame) { this.onmessage?.({ data: JSON.stringify(frame) }); }
};
"""


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def static_url() -> Iterator[str]:
    server = ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(STATIC))
    )
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/index.html?ws=ws://fake.invalid/"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium(TIMEOUT_MS) as launched:
        yield launched


@pytest.fixture
def page(browser: Any, static_url: str) -> Iterator[Any]:
    context = browser.new_context()
    context.add_init_script(FAKE_SOCKET)
    chat = context.new_page()
    chat.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []
    chat.on("pageerror", lambda exc: errors.append(str(exc)))
    chat.goto(static_url)
    chat.wait_for_function(
        "() => window.__sockets.length === 1 && window.__sockets[0].readyState === 1"
    )
    yield chat
    context.close()
    assert errors == [], "the page threw"


def ask(page: Any, prompt: str = "Think first.") -> str:
    """Send a prompt; returns the requestId the page gave it."""
    page.locator("#prompt").fill(prompt)
    page.locator("#send").click()
    page.wait_for_function("() => window.__sockets.at(-1).sent.length > 0")
    return page.evaluate("window.__sockets.at(-1).sent.at(-1).requestId")


def play(page: Any, *frames: dict[str, Any]) -> None:
    page.evaluate("(frames) => frames.forEach((f) => window.__sockets.at(-1).push(f))", frames)


def reasoning(request_id: str, seq: int, text: str) -> dict[str, Any]:
    return {"type": "reasoning", "requestId": request_id, "seq": seq, "text": text}


def delta(request_id: str, seq: int, text: str) -> dict[str, Any]:
    return {"type": "delta", "requestId": request_id, "seq": seq, "text": text}


def end(request_id: str) -> dict[str, Any]:
    usage = {"inputTokens": 3, "outputTokens": 4}
    return {"type": "end", "requestId": request_id, "finishReason": "stop", "usage": usage}


def test_reasoning_is_folded_away_above_the_answer_and_shares_its_seq(page: Any) -> None:
    from playwright.sync_api import expect

    rid = ask(page)
    play(page, {"type": "accepted", "requestId": rid}, {"type": "start", "requestId": rid})
    play(page, reasoning(rid, 0, "r0 "), reasoning(rid, 1, "r1 "))
    bubble = page.locator(".message.assistant")
    folded = bubble.locator("details.reasoning")
    expect(folded.locator("summary")).to_have_text("Reasoning")
    expect(bubble.locator(".text")).to_have_text("")  # the answer has not begun

    play(page, delta(rid, 2, "t0 "), delta(rid, 3, "t1 "), end(rid))
    expect(bubble).to_have_attribute("data-status", "done")
    expect(bubble.locator(".text")).to_have_text("t0 t1 ")
    expect(folded).to_have_count(1)
    expect(folded.locator(".reasoning-text")).to_have_text("r0 r1 ")
    expect(folded.locator(".reasoning-text")).to_be_hidden()  # folded until the reader opens it
    expect(bubble.locator(".notice")).to_have_count(0)  # seq 0-3 with no gap
    order = bubble.evaluate("b => [...b.children].map((c) => c.className)")
    assert order.index("reasoning") == order.index("text") - 1

    folded.locator("summary").click()
    expect(folded.locator(".reasoning-text")).to_be_visible()


def test_a_resume_after_reasoning_frames_asks_for_what_follows_them(page: Any) -> None:
    from playwright.sync_api import expect

    rid = ask(page)
    play(page, {"type": "accepted", "requestId": rid}, {"type": "start", "requestId": rid})
    play(page, reasoning(rid, 0, "r0 "), reasoning(rid, 1, "r1 "))
    page.evaluate("window.__sockets.at(-1).drop()")

    page.wait_for_function(
        "() => window.__sockets.length === 2 && window.__sockets[1].sent.length > 0"
    )
    assert page.evaluate("window.__sockets[1].sent[0]") == {
        "action": "resume",
        "requestId": rid,
        "afterSeq": 1,
    }
    # A repeat of a reasoning frame the page has is not shown twice.
    play(page, {"type": "accepted", "requestId": rid}, reasoning(rid, 1, "r1 "))
    play(page, delta(rid, 2, "t0 "), end(rid))
    bubble = page.locator(".message.assistant")
    expect(bubble).to_have_attribute("data-status", "done")
    expect(bubble.locator(".reasoning-text")).to_have_text("r0 r1 ")
    expect(bubble.locator(".text")).to_have_text("t0 ")
    expect(bubble.locator(".notice")).to_have_count(0)


def test_a_seq_missing_between_reasoning_and_the_answer_is_reported(page: Any) -> None:
    from playwright.sync_api import expect

    rid = ask(page)
    play(page, {"type": "start", "requestId": rid}, reasoning(rid, 0, "r0 "))
    play(page, delta(rid, 2, "t0 "), end(rid))
    bubble = page.locator(".message.assistant")
    expect(bubble.locator(".notice.warning")).to_have_text("Missing part of the answer (seq 1).")
    expect(bubble.locator(".reasoning-text")).to_have_text("r0 ")
    expect(bubble.locator(".text")).to_have_text("t0 ")
