"""The AI SDK example page (examples/ai-sdk-chat: React, useChat, WebSocketChatTransport) in
Debian's headless Chromium against the local stack, which serves the page's Vite build and its
/config.json. Playwright drives the system Chromium and never downloads a browser.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devstack.stack import LocalStack
from tests.browser import chromium
from tests.integration.conftest import running_stack
from tests.integration.test_ai_sdk import npm, npm_installed
from tests.integration.test_browser import (
    COUNT_SOCKETS,
    TIMEOUT_MS,
    WATCH_ANSWER,
    llm_request,
    tokens,
)

pytestmark = [pytest.mark.integration, pytest.mark.browser]


@pytest.fixture(scope="module")
def dist() -> Path:
    """The example page built from its sources (`npm run build`; no network once installed)."""
    example = npm_installed()
    npm("run", "build")
    return example / "dist"


@pytest.fixture(scope="module")
def stack(dist: Path) -> Iterator[LocalStack]:
    """The local stack of conftest.py, serving the built example page at its chat page's URL."""
    yield from running_stack(static_dir=dist)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium(TIMEOUT_MS, skippable=False) as launched:
        yield launched


def errors_shown(page: Any) -> list[str]:
    return page.locator(".notice.error").all_inner_texts()


@pytest.fixture
def page(browser: Any, stack: LocalStack) -> Iterator[Any]:
    """The example page, its WebSocket URL read from /config.json, the resume it sends on load
    answered (``no-active`` for a new chat), its uncaught errors checked."""
    from playwright.sync_api import expect

    context = browser.new_context(viewport={"width": 900, "height": 760})
    context.add_init_script(COUNT_SOCKETS)
    chat = context.new_page()
    chat.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []
    chat.on("pageerror", lambda exc: errors.append(str(exc)))
    # Any console error: a CSP violation is reported as one (even a caught one, see csp.js).
    chat.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    chat.goto(stack.http_url)
    expect(chat.locator("#ws-url")).to_have_text(stack.ws_url)
    expect(chat.locator("#send")).to_be_enabled()  # the resume on load has its answer
    assert errors_shown(chat) == [], "the resume sent on load failed"
    yield chat
    context.close()
    assert errors == [], "the page threw, logged an error, or broke its Content-Security-Policy"


def send(page: Any, prompt: str) -> Any:
    """Type ``prompt`` and press Enter; returns the new assistant message."""
    from playwright.sync_api import expect

    answers = page.locator(".message.assistant")
    before = answers.count()
    page.locator("#prompt").fill(prompt)
    page.locator("#prompt").press("Enter")
    expect(page.locator(".message.user").last).to_have_text(prompt)
    return answers.nth(before)


def requests_holding(stack: LocalStack, marker: str) -> list[Any]:
    assert stack.mock_llm is not None
    return [r for r in stack.mock_llm.requests if marker in json.dumps(r.body["messages"][-1])]


def test_a_prompt_streams_its_answer_into_the_page_with_the_model_and_usage(page: Any) -> None:
    from playwright.sync_api import expect

    page.evaluate(WATCH_ANSWER)
    answer = send(page, "Hello\n#mock tokens=40 rate=80")

    expect(answer.locator(".text")).to_have_text(tokens(40))
    expect(page.locator("#status")).to_have_attribute("data-status", "ready")
    expect(answer.locator(".meta")).to_contain_text("gpt-4o-mini")
    expect(answer.locator(".meta")).to_contain_text("40 out")
    assert errors_shown(page) == []
    seen = page.evaluate("window.__seen")
    assert len(seen) > 2, "the answer appeared at once, not as it streamed"
    assert all(later.startswith(earlier) for earlier, later in zip(seen, seen[1:], strict=False))


def test_reasoning_is_shown_folded_above_the_answer(page: Any) -> None:
    from playwright.sync_api import expect

    answer = send(page, "Think first.\n#mock reasoning=5 tokens=5")

    expect(answer.locator(".text")).to_have_text(tokens(5))
    reasoning = answer.locator("details.reasoning")
    expect(reasoning).to_have_count(1)
    expect(reasoning).not_to_have_attribute("open", "")
    expect(reasoning.locator(".reasoning-text")).to_be_hidden()  # folded until opened
    expect(reasoning.locator(".reasoning-text")).not_to_have_text("")
    assert answer.evaluate("a => a.firstElementChild.matches('details.reasoning')")
    reasoning.locator("summary").click()
    expect(reasoning.locator(".reasoning-text")).to_be_visible()


def test_stop_ends_the_answer_closes_the_models_stream_and_the_next_prompt_streams(
    page: Any, stack: LocalStack
) -> None:
    from playwright.sync_api import expect

    marker = uuid.uuid4().hex
    answer = send(page, f"Count slowly. {marker}\n#mock tokens=400 rate=20")
    expect(answer.locator(".text")).to_contain_text("t3 ")
    page.locator("#stop").click()

    expect(page.locator("#status")).to_have_attribute("data-status", "ready")
    expect(page.locator("#stop")).to_have_count(0)
    record = llm_request(stack, marker)
    assert stack.mock_llm is not None
    assert stack.mock_llm.wait_for(lambda: record.client_closed, timeout=10)
    assert record.tokens_sent < 400
    text = answer.locator(".text").inner_text()
    assert text == tokens(len(text.split())), "in order, no gap, cut short"

    again = send(page, "Again.\n#mock tokens=5 rate=0")
    expect(again.locator(".text")).to_have_text(tokens(5))
    expect(page.locator("#status")).to_have_attribute("data-status", "ready")
    assert errors_shown(page) == []
    assert len(page.evaluate("window.__sockets")) == 1, "stop cost the socket"


def test_a_reload_mid_answer_resumes_it_and_the_answer_completes_once(
    page: Any, stack: LocalStack
) -> None:
    from playwright.sync_api import expect

    marker = uuid.uuid4().hex
    prompt = f"A long story. {marker}\n#mock tokens=100 rate=20"
    answer = send(page, prompt)
    expect(answer.locator(".text")).to_contain_text("t5 ")

    page.reload()

    expect(page.locator(".message.user")).to_have_text([prompt])  # kept across the reload
    answer = page.locator(".message.assistant")
    expect(answer.locator(".text")).to_contain_text("t0 t1 ")  # replayed from the start
    expect(page.locator("#stop")).to_be_visible()  # and still streaming
    expect(answer.locator(".text")).to_have_text(tokens(100))
    expect(page.locator("#status")).to_have_attribute("data-status", "ready")
    expect(answer).to_have_count(1)
    assert errors_shown(page) == []
    assert len(requests_holding(stack, marker)) == 1, "the answer was asked for again"
