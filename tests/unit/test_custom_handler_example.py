"""examples/custom-handler's function, fed its own event file (what `sam local invoke -e` uses),
against moto: its business logic, then llmstream.publish."""

from __future__ import annotations

import importlib.util
import json
import sys
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import pytest

from tests.conftest import ROOT

EXAMPLE = ROOT / "examples" / "custom-handler"


@pytest.fixture
def example(aws, monkeypatch) -> Iterator[ModuleType]:
    """The example's app.py, imported afresh as Lambda would, with src/ on the path."""
    from llmstream.core import clients, settings

    monkeypatch.setenv("MAX_CONCURRENT_STREAMS", "0")
    settings.get_settings.cache_clear()
    clients.aws.cache_clear()
    monkeypatch.syspath_prepend(str(EXAMPLE / "src"))
    for name in ("orders", "example_app"):
        sys.modules.pop(name, None)
    spec = importlib.util.spec_from_file_location("example_app", EXAMPLE / "src" / "app.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    yield module
    settings.get_settings.cache_clear()
    clients.aws.cache_clear()


def event(**body: Any) -> dict[str, Any]:
    loaded = json.loads((EXAMPLE / "events" / "ask-about-order.json").read_text())
    if body:
        loaded["body"] = json.dumps({"action": "askAboutOrder", **body})
    return loaded


def answer(example: ModuleType, lambda_context, given: dict[str, Any]) -> dict[str, Any]:
    response = example.lambda_handler(given, lambda_context)
    assert response["statusCode"] == 200
    return json.loads(response["body"])


def test_its_event_is_accepted_and_a_prompt_made_of_the_order_is_published(
    aws, example, lambda_context
):
    assert answer(example, lambda_context, event()) == {
        "type": "accepted",
        "requestId": "order-q-1",
    }
    [notification] = aws.published()
    document = json.loads(notification["Message"])
    assert document["requestId"] == "order-q-1"
    assert document["connectionId"] == event()["requestContext"]["connectionId"]
    [message] = document["messages"]
    assert message["role"] == "user"
    assert "Order A-1001 of Ada" in message["content"] and "DHL" in message["content"]
    assert message["content"].endswith("The customer asks: When will my grinder arrive?")


def test_an_unknown_order_gets_not_found_and_nothing_is_published(aws, example, lambda_context):
    frame = answer(example, lambda_context, event(orderId="Z-9", question="Where is it?"))
    assert (frame["type"], frame["code"], frame["message"]) == (
        "error",
        "not_found",
        "no order 'Z-9'",
    )
    assert frame["requestId"] == event()["requestContext"]["requestId"]
    assert aws.published() == []


@pytest.mark.parametrize(
    ("body", "code", "message"),
    [
        ({"orderId": "A-1001"}, "bad_request", "'question' must be a non-empty string"),
        (
            {"orderId": "A-1001", "question": "?", "keepOpen": "yes"},
            "bad_request",
            "'keepOpen' must be a boolean",
        ),
        (
            {"orderId": "A-1001", "question": "x" * 17_000},
            "payload_too_large",
            "the prompt is",
        ),
    ],
)
def test_what_it_or_publish_refuses_gets_an_error_frame(
    aws, example, lambda_context, body, code, message
):
    frame = answer(example, lambda_context, event(**body, requestId="q-bad"))
    assert (frame["type"], frame["code"]) == ("error", code)
    assert frame["message"].startswith(message)
    assert aws.published() == []


def test_its_template_routes_askaboutorder_to_its_function_with_the_main_stacks_topic() -> None:
    from devstack.template import Template

    main = Template(stack_name="llm-stream")  # MainStackName's default
    template = Template(EXAMPLE / "template.yaml", imports=main.exports())
    [function] = template.functions().values()
    assert (EXAMPLE / function.code_uri / "app.py").is_file()
    assert function.handler == "app.lambda_handler"
    route = template.routes()["askAboutOrder"]
    assert route.function == function.logical_id and route.two_way
    env = template.environment(function.logical_id)
    assert env["PROMPT_TOPIC_ARN"] == main.ref("PromptTopic")
    assert env["FRAMES_TABLE"] == main.ref("FramesTable")
    assert env["CONNECTIONS_TABLE"] == main.ref("ConnectionsTable")
