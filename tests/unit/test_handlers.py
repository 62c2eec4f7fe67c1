"""The route handlers, fed the same events/ files that `sam local invoke -e` uses, against moto."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT, load_event, load_handler


def answer(response: dict) -> dict:
    assert response["statusCode"] == 200
    return json.loads(response["body"])


def test_connect_records_the_connection_with_source_ip_and_a_two_hour_ttl(aws, lambda_context):
    event = load_event("connect.json")
    ctx = event["requestContext"]
    response = load_handler("connect").lambda_handler(event, lambda_context)
    assert response["statusCode"] == 200
    item = aws.dynamodb.get_item(
        TableName=aws.table, Key={"connectionId": {"S": ctx["connectionId"]}}
    )["Item"]
    assert item["connectedAt"]["N"] == str(ctx["connectedAt"])
    assert item["sourceIp"]["S"] == ctx["identity"]["sourceIp"]
    assert int(item["expiresAt"]["N"]) == ctx["connectedAt"] // 1000 + 7200


def test_disconnect_removes_the_connection(aws, lambda_context):
    connect, disconnect = load_event("connect.json"), load_event("disconnect.json")
    load_handler("connect").lambda_handler(connect, lambda_context)
    load_handler("disconnect").lambda_handler(disconnect, lambda_context)
    key = {"connectionId": {"S": disconnect["requestContext"]["connectionId"]}}
    assert "Item" not in aws.dynamodb.get_item(TableName=aws.table, Key=key)


def test_send_message_publishes_one_versioned_envelope_and_answers_accepted(aws, lambda_context):
    event = load_event("send-message.json")
    ctx = event["requestContext"]
    frame = answer(load_handler("message").lambda_handler(event, lambda_context))
    assert frame == {"type": "accepted", "requestId": "req-123"}
    [notification] = aws.published()
    document = json.loads(notification["Message"])
    assert document["version"] == 1
    assert document["requestId"] == "req-123"
    assert document["connectionId"] == ctx["connectionId"]
    assert document["domainName"] == ctx["domainName"]
    assert document["stage"] == ctx["stage"]
    assert document["messages"] == [
        {"role": "user", "content": json.loads(event["body"])["prompt"]}
    ]
    assert document["model"] == "gpt-4o-mini" and document["provider"] == "openai"
    assert document["options"]["maxTokens"] == 1024
    attributes = notification["MessageAttributes"]
    assert attributes["provider"] == {"Type": "String", "Value": "openai"}
    assert attributes["model"] == {"Type": "String", "Value": "gpt-4o-mini"}
    assert attributes["version"] == {"Type": "Number", "Value": "1"}


def test_send_message_with_history_publishes_the_messages(aws, lambda_context):
    event = load_event("send-message-history.json")
    answer(load_handler("message").lambda_handler(event, lambda_context))
    [notification] = aws.published()
    assert json.loads(notification["Message"])["messages"] == json.loads(event["body"])["messages"]


@pytest.mark.parametrize(
    ("event_file", "code"),
    [
        ("bad-message-not-json.json", "bad_request"),
        ("bad-message-empty-prompt.json", "bad_request"),
        ("unknown-action.json", "unknown_action"),
    ],
)
def test_bad_input_gets_an_error_frame_and_nothing_is_published(
    aws, lambda_context, event_file, code
):
    event = load_event(event_file)
    frame = answer(load_handler("message").lambda_handler(event, lambda_context))
    assert frame["type"] == "error" and frame["code"] == code
    assert frame["message"] and frame["requestId"]
    assert aws.published() == []


def test_a_model_outside_the_allow_list_is_refused(aws, lambda_context):
    event = load_event("send-message.json")
    event["body"] = json.dumps({"action": "sendMessage", "prompt": "hi", "model": "gpt-9"})
    frame = answer(load_handler("message").lambda_handler(event, lambda_context))
    assert frame["code"] == "model_not_allowed" and "gpt-4o" in frame["message"]
    assert aws.published() == []


def test_an_sns_outage_gets_an_internal_error_frame_not_a_stack_trace(
    aws, lambda_context, monkeypatch
):
    monkeypatch.setenv("PROMPT_TOPIC_ARN", aws.topic_arn.replace("prompts", "missing"))
    frame = answer(
        load_handler("message").lambda_handler(load_event("send-message.json"), lambda_context)
    )
    assert frame == {
        "type": "error",
        "requestId": "req-123",
        "code": "internal",
        "message": "the request could not be queued; try again",
    }


def test_the_message_handler_logs_no_prompt(aws, lambda_context, logs, monkeypatch):
    monkeypatch.setenv("POWERTOOLS_LOGGER_LOG_EVENT", "true")  # even if someone turns this on
    event = load_event("send-message.json")
    load_handler("message").lambda_handler(event, lambda_context)
    out = logs.getvalue()
    assert json.loads(event["body"])["prompt"] not in out
    assert "req-123" in out  # the logs do carry the request id


def test_the_message_handler_never_imports_the_llm_client(aws):
    code = (
        "import sys, json; sys.path[:0] = ['layers/stream', '.'];"
        "from tests.conftest import load_handler; load_handler('message');"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('openai', 'httpx', 'llmstream'))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    loaded = json.loads(out.strip().splitlines()[-1])
    assert not [m for m in loaded if m.startswith(("openai", "httpx", "llmstream.stream"))]


def test_a_bedrock_model_is_published_with_provider_bedrock_for_the_fan_out(
    aws, lambda_context, monkeypatch
):
    bedrock_model = "anthropic.claude-3-haiku-20240307-v1:0"
    monkeypatch.setenv("ALLOWED_MODELS", f"gpt-4o-mini,{bedrock_model}")
    monkeypatch.setenv("MODEL_PROVIDERS", f"{bedrock_model}=bedrock")
    event = load_event("send-message.json")
    event["body"] = json.dumps({"action": "sendMessage", "prompt": "hi", "model": bedrock_model})
    answer(load_handler("message").lambda_handler(event, lambda_context))
    [notification] = aws.published()
    assert notification["MessageAttributes"]["provider"] == {"Type": "String", "Value": "bedrock"}
    assert json.loads(notification["Message"])["provider"] == "bedrock"
