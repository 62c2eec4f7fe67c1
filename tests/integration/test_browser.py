"""The chat page (devstack/static/) in headless Chromium against the local stack.

Needs Debian's ``chromium`` (``apt-get install chromium``); Playwright drives it, and never
downloads a browser of its own. ``UPDATE_SCREENSHOT=1`` rewrites docs/chat-page.png.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devstack.stack import LocalStack

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path(os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
REQUEST_ID = re.compile(r"^[A-Za-z0-9._:=+/-]{1,128}$")
TIMEOUT_MS = 15_000

# Records every WebSocket the page opens, so a test can count connections.
COUNT_SOCKETS = """
window.__sockets = [];
const NativeWebSocket = window.WebSocket;
window.WebSocket = class extends NativeWebSocket {
  constructor(...args) { super(...args); window.__sockets.push(this.url); }
};
"""

# Records the answer's text at every change, to show it grows as deltas arrive.
WATCH_ANSWER = """
window.__seen = [];
new MutationObserver(() => {
  const text = document.querySelector('.message.assistant .text');
  if (text && text.textContent !== window.__seen.at(-1)) window.__seen.push(text.textContent);
}).observe(document.querySelector('#transcript'),
            {subtree: true, childList: true, characterData: true});
"""


def tokens(n: int) -> str:
    """What the mock LLM streams for ``#mock tokens=n``."""
    return "".join(f"t{i} " for i in range(n))


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        reason = f"{CHROMIUM} is missing: run `apt-get install chromium` (CI installs it)"
        if os.environ.get("CI_ALLOW_NO_BROWSER") == "1":
            pytest.skip(reason)
        pytest.fail(reason)
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=TIMEOUT_MS)
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def open_page(browser: Any, stack: LocalStack) -> Iterator[Any]:
    """``open_page(query="", **context_options)``: the chat page, its uncaught errors checked."""
    contexts = []
    errors: list[str] = []

    def opener(query: str = "", **options: Any) -> Any:
        context = browser.new_context(**{"viewport": {"width": 900, "height": 760}, **options})
        contexts.append(context)
        context.add_init_script(COUNT_SOCKETS)
        page = context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error"
                and "Content Security Policy" in msg.text else None)
        page.goto(stack.http_url + query)
        return page

    yield opener
    for context in contexts:
        context.close()
    assert errors == [], "the page threw, or broke its Content-Security-Policy"


@pytest.fixture
def page(open_page: Any, stack: LocalStack) -> Any:
    """The chat page, connected to the local stack's WebSocket URL from /config.json."""
    from playwright.sync_api import expect

    chat = open_page()
    expect(chat.locator("#ws-url")).to_have_value(stack.ws_url)
    expect(chat.locator("#conn-state")).to_have_attribute("data-state", "open")
    return chat


def send(page: Any, prompt: str) -> Any:
    """Type ``prompt`` and click Send; returns the new assistant bubble."""
    answers = page.locator(".message.assistant")
    before = answers.count()
    page.locator("#prompt").fill(prompt)
    page.locator("#send").click()
    return answers.nth(before)


def test_an_answer_streams_into_one_assistant_bubble_in_order(page: Any) -> None:
    from playwright.sync_api import expect

    page.evaluate(WATCH_ANSWER)
    prompt = page.locator("#prompt")
    prompt.type("Hello")
    prompt.press("Shift+Enter")  # a new line, not a send
    prompt.type("#mock tokens=40 rate=80")
    expect(prompt).to_have_value("Hello\n#mock tokens=40 rate=80")
    page.locator("#send").click()

    answer = page.locator(".message.assistant")
    expect(answer.locator(".text")).to_have_text(tokens(40))
    expect(answer).to_have_attribute("data-status", "done")
    expect(answer.locator(".usage")).to_contain_text("40 out")
    expect(answer.locator(".meta")).to_have_text("gpt-4o-mini")
    expect(answer.locator(".notice")).to_have_count(0)  # no seq gap, no error
    expect(page.locator(".message.user .text")).to_have_text("Hello\n#mock tokens=40 rate=80")
    assert REQUEST_ID.match(answer.get_attribute("data-request-id") or "")

    seen = page.evaluate("window.__seen")
    assert len(seen) > 2, "the answer appeared at once, not as it streamed"
    assert all(later.startswith(earlier) for earlier, later in zip(seen, seen[1:], strict=False))


def test_enter_sends_the_prompt(page: Any) -> None:
    from playwright.sync_api import expect

    page.locator("#prompt").fill("#mock tokens=3 rate=0")
    page.locator("#prompt").press("Enter")

    expect(page.locator(".message.assistant .text")).to_have_text(tokens(3))
    expect(page.locator("#prompt")).to_have_value("")


def test_a_prompt_over_the_size_limit_shows_the_payload_too_large_error(page: Any) -> None:
    from playwright.sync_api import expect

    answer = send(page, "x" * 17_000)

    expect(answer.locator(".notice.error")).to_contain_text("payload_too_large")
    expect(answer.locator(".notice.error")).to_contain_text("16384")
    expect(answer).to_have_attribute("data-status", "error")
    expect(page.locator("#send")).to_be_enabled()


def test_a_model_failure_mid_answer_keeps_the_text_and_shows_llm_error(page: Any) -> None:
    from playwright.sync_api import expect

    answer = send(page, "Hello\n#mock tokens=20 rate=100 fail_after=5")

    expect(answer.locator(".notice.error .code")).to_have_text("llm_error")
    expect(answer.locator(".text")).to_have_text(tokens(5))
    expect(answer).to_have_attribute("data-status", "error")
    expect(answer.locator(".usage")).to_have_count(0)


def test_a_second_prompt_after_the_server_closed_the_socket_reconnects(
    page: Any, stack: LocalStack
) -> None:
    from playwright.sync_api import expect

    first = send(page, "One\n#mock tokens=5 rate=0")
    expect(first.locator(".text")).to_have_text(tokens(5))
    # The page keeps a used socket open until the server closes it, as it does after `end`.
    expect(page.locator("#conn-state")).to_have_attribute("data-state", "idle")

    second = send(page, "Two\n#mock tokens=8 rate=0")
    expect(second.locator(".text")).to_have_text(tokens(8))
    expect(second).to_have_attribute("data-status", "done")
    sockets = page.evaluate("window.__sockets")
    assert len(sockets) == 2 and all(url.startswith(stack.ws_url) for url in sockets)
    assert first.get_attribute("data-request-id") != second.get_attribute("data-request-id")


def test_an_unreachable_url_from_the_query_shows_the_connection_error(open_page: Any) -> None:
    from playwright.sync_api import expect

    with socket.socket() as probe:  # a port nothing listens on once this closes
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"ws://127.0.0.1:{port}/prod"
    page = open_page(f"?ws={url}")

    expect(page.locator("#ws-url")).to_have_value(url)
    expect(page.locator("#conn-state")).to_have_attribute("data-state", "error")
    answer = send(page, "Anyone there?")
    expect(answer.locator(".notice.error")).to_contain_text(f"could not connect to {url}")
    expect(page.locator("#send")).to_be_enabled()


def test_a_malformed_url_is_reported_at_once_without_retrying(page: Any) -> None:
    from playwright.sync_api import expect

    page.locator("#ws-url").fill("not a url")
    page.locator("#ws-url").dispatch_event("change")
    expect(page.locator("#conn-state")).to_have_attribute("data-state", "error")

    answer = send(page, "Hello")
    expect(answer.locator(".notice.error")).to_contain_text("is not a ws:// or wss:// URL")
    expect(page.locator("#send")).to_be_enabled()


def test_the_page_is_labelled_and_fits_a_phone_in_dark_mode(open_page: Any) -> None:
    from playwright.sync_api import expect

    page = open_page(viewport={"width": 360, "height": 740}, color_scheme="dark")

    expect(page.get_by_label("WebSocket URL")).to_be_visible()
    expect(page.get_by_label("Your message")).to_be_visible()
    expect(page.get_by_role("button", name="Send")).to_be_visible()
    expect(page.locator("#transcript")).to_have_attribute("aria-live", "polite")
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    background = page.evaluate("getComputedStyle(document.body).backgroundColor")
    assert background == "rgb(15, 18, 22)", "the dark palette is not in use"


def test_a_conversation_screenshot_for_the_docs(page: Any, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    haiku = send(page, "Write a haiku about streaming.")
    expect(haiku).to_have_attribute("data-status", "done")
    failed = send(page, "And if the model fails?\n#mock tokens=30 rate=100 fail_after=9")
    expect(failed).to_have_attribute("data-status", "error")
    streaming = send(page, "Count for me, slowly.\n#mock tokens=40 rate=15")
    expect(streaming.locator(".text")).to_contain_text("t12 ")
    expect(streaming).to_have_attribute("data-status", "streaming")

    shot = tmp_path / "chat-page.png"
    page.screenshot(path=str(shot))
    expect(streaming.locator(".text")).to_have_text(tokens(40))  # let the stream finish cleanly
    if os.environ.get("UPDATE_SCREENSHOT") == "1":
        shutil.copyfile(shot, ROOT / "docs" / "chat-page.png")
