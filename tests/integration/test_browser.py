"""The chat page (devstack/static/) in headless Chromium against the local stack.

Needs Debian's ``chromium`` (``apt-get install chromium``); Playwright drives it, and never
downloads a browser of its own. ``UPDATE_SCREENSHOT=1`` rewrites docs/chat-page.png.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from devstack.stack import LocalStack
from tests.browser import chromium
from tests.integration.conftest import running_stack

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[2]
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

# Records every status an answer bubble goes through.
WATCH_STATUS = """
window.__statuses = [];
new MutationObserver((changes) => {
  for (const change of changes) window.__statuses.push(change.target.dataset.status);
}).observe(document.querySelector('#transcript'),
            {subtree: true, attributes: true, attributeFilter: ['data-status']});
"""


def tokens(n: int) -> str:
    """What the mock LLM streams for ``#mock tokens=n``."""
    return "".join(f"t{i} " for i in range(n))


@pytest.fixture(scope="module")
def stack() -> Iterator[LocalStack]:
    """The local stack of conftest.py, with a second model that clients may choose."""
    yield from running_stack(env={"ALLOWED_MODELS": "gpt-4o-mini,gpt-4o"})


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium(TIMEOUT_MS) as launched:
        yield launched


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
        page.on(
            "console",
            lambda msg: (
                errors.append(msg.text)
                if msg.type == "error" and "Content Security Policy" in msg.text
                else None
            ),
        )
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


def connection_of(stack: LocalStack, answer: Any) -> str:
    """The connection that an answer bubble's request streams to, from its control item."""
    rid = answer.get_attribute("data-request-id")
    item = stack.client("dynamodb").get_item(
        TableName=stack.tables["FRAMES_TABLE"],
        Key={"requestId": {"S": f"anon#{rid}"}, "seq": {"N": "-1"}},
        ConsistentRead=True,
    )["Item"]
    return item["connectionId"]["S"]


def drop(stack: LocalStack, connection_id: str) -> None:
    """End a socket from the server side (Management API DeleteConnection), as a drop would."""
    url = f"{stack.management_url}/@connections/{quote(connection_id, safe='')}"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(urllib.request.Request(url, method="DELETE"), timeout=5) as response:
        assert response.status == 204


def llm_request(stack: LocalStack, marker: str) -> Any:
    """The mock LLM's record of the request whose last message holds ``marker``."""
    mock = stack.mock_llm

    def find() -> Any:
        return next(
            (r for r in mock.requests if marker in json.dumps(r.body["messages"][-1])), None
        )

    assert mock.wait_for(lambda: find() is not None, timeout=10)
    return find()


def test_the_prompts_of_a_chat_share_one_socket_and_the_model_sees_the_earlier_turns(
    page: Any, stack: LocalStack
) -> None:
    from playwright.sync_api import expect

    marker = uuid.uuid4().hex
    first = send(page, "I am Ada.\n#mock tokens=5 rate=0")
    expect(first).to_have_attribute("data-status", "done")
    expect(page.locator("#conn-state")).to_have_attribute("data-state", "open")  # kept open

    second = send(page, f"Who am I? {marker}\n#mock tokens=8 rate=0")
    expect(second.locator(".text")).to_have_text(tokens(8))
    expect(second).to_have_attribute("data-status", "done")
    sockets = page.evaluate("window.__sockets")
    assert len(sockets) == 1 and sockets[0].startswith(stack.ws_url)
    assert first.get_attribute("data-request-id") != second.get_attribute("data-request-id")
    assert llm_request(stack, marker).body["messages"][1:3] == [
        {"role": "user", "content": "I am Ada.\n#mock tokens=5 rate=0"},
        {"role": "assistant", "content": tokens(5)},
    ]


def test_a_new_chat_starts_a_conversation_without_the_earlier_turns(
    page: Any, stack: LocalStack
) -> None:
    from playwright.sync_api import expect

    marker = uuid.uuid4().hex
    expect(send(page, "Remember me.\n#mock tokens=2 rate=0")).to_have_attribute(
        "data-status", "done"
    )
    page.locator("#new-chat").click()
    expect(page.locator(".message")).to_have_count(0)
    expect(send(page, f"Who? {marker}\n#mock tokens=2 rate=0")).to_have_attribute(
        "data-status", "done"
    )
    assert [m["role"] for m in llm_request(stack, marker).body["messages"]] == ["system", "user"]


def test_a_prompt_after_the_server_closed_an_idle_socket_reconnects(
    page: Any, stack: LocalStack
) -> None:
    from playwright.sync_api import expect

    first = send(page, "One\n#mock tokens=5 rate=0")
    expect(first).to_have_attribute("data-status", "done")
    drop(stack, connection_of(stack, first))  # e.g. API Gateway's 10-minute idle timeout
    expect(page.locator("#conn-state")).to_have_attribute("data-state", "idle")

    second = send(page, "Two\n#mock tokens=8 rate=0")
    expect(second.locator(".text")).to_have_text(tokens(8))
    expect(second).to_have_attribute("data-status", "done")
    assert len(page.evaluate("window.__sockets")) == 2


def test_stop_cancels_the_answer_and_the_models_stream_is_closed(
    page: Any, stack: LocalStack
) -> None:
    from playwright.sync_api import expect

    marker = uuid.uuid4().hex
    answer = send(page, f"Count slowly. {marker}\n#mock tokens=400 rate=20")
    expect(page.locator("#stop")).to_be_visible()
    expect(answer.locator(".text")).to_contain_text("t3 ")
    page.locator("#stop").click()

    expect(answer).to_have_attribute("data-status", "cancelled")
    expect(answer.locator(".usage")).to_contain_text("finished: cancelled")
    expect(page.locator("#stop")).to_be_hidden()
    expect(page.locator("#send")).to_be_enabled()
    text = answer.locator(".text").inner_text()
    assert text == tokens(len(text.split()))  # in order, no gap, cut short
    record = llm_request(stack, marker)
    assert stack.mock_llm.wait_for(lambda: record.client_closed, timeout=10)
    assert record.tokens_sent < 400


def test_a_socket_dropped_mid_answer_is_resumed_and_the_answer_completes_in_its_bubble(
    page: Any, stack: LocalStack
) -> None:
    from playwright.sync_api import expect

    page.evaluate(WATCH_ANSWER)
    page.evaluate(WATCH_STATUS)
    answer = send(page, "Tell me a long story.\n#mock tokens=60 rate=20")
    expect(answer.locator(".text")).to_contain_text("t5 ")
    first_socket = connection_of(stack, answer)
    drop(stack, first_socket)

    expect(answer.locator(".text")).to_have_text(tokens(60))
    expect(answer).to_have_attribute("data-status", "done")
    expect(answer.locator(".notice")).to_have_count(0)  # no gap, no error, no "resuming" left
    assert "resuming" in page.evaluate("window.__statuses")
    assert len(page.evaluate("window.__sockets")) == 2
    assert connection_of(stack, answer) != first_socket  # the answer moved to the new socket
    seen = page.evaluate("window.__seen")
    assert all(later.startswith(earlier) for earlier, later in zip(seen, seen[1:], strict=False))


def test_the_model_picker_offers_the_allowed_models_and_the_answer_uses_the_choice(
    page: Any, stack: LocalStack
) -> None:
    from playwright.sync_api import expect

    marker = uuid.uuid4().hex
    picker = page.get_by_label("Model")
    expect(picker).to_be_visible()
    assert picker.locator("option").all_inner_texts() == ["gpt-4o-mini", "gpt-4o"]
    picker.select_option("gpt-4o")
    answer = send(page, f"Hi {marker}\n#mock tokens=3 rate=0")
    expect(answer.locator(".meta")).to_have_text("gpt-4o")
    expect(answer).to_have_attribute("data-status", "done")
    assert llm_request(stack, marker).body["model"] == "gpt-4o"


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
