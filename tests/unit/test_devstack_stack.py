"""The local stack's wiring: resources in moto, extra SNS subscribers, dead letters, safe env."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from devstack.runtime import FunctionSpec
from devstack.sns import Subscription
from devstack.stack import LocalStack, StackConfig

audited: list[dict[str, Any]] = []
audit_lock = threading.Lock()


def audit(event: dict[str, Any], context: Any) -> None:
    with audit_lock:
        audited.append(event)


def broken(event: dict[str, Any], context: Any) -> None:
    raise RuntimeError("this subscriber always fails")


@pytest.fixture(scope="module")
def stack() -> Iterator[LocalStack]:
    config = StackConfig(
        ws_port=0,
        http_port=0,
        llm_base_url="",
        llm_api_key="sk-test-key",
        auth_mode="none",
        isolation="thread",
        prewarm=False,
        retry_delays=(0.0,),
        extra_functions=[
            FunctionSpec("audit", handler=audit, isolation="thread"),
            FunctionSpec("broken", handler=broken, isolation="thread", async_retries=1),
        ],
        subscriptions=[
            Subscription("audit", {"provider": ["bedrock"]}),
            Subscription("broken", {"provider": ["broken"]}),
        ],
    )
    with LocalStack(config) as running:
        yield running


def publish(stack: LocalStack, provider: str, message: str = "{}") -> str:
    attributes = {"provider": {"DataType": "String", "StringValue": provider}}
    response = stack.client("sns").publish(
        TopicArn=stack.topic_arn, Message=message, MessageAttributes=attributes
    )
    return str(response["MessageId"])


def test_tables_topic_and_secret_are_created_in_moto(stack: LocalStack) -> None:
    tables = stack.client("dynamodb").list_tables()["TableNames"]
    assert sorted(stack.tables.values()) == sorted(tables)
    secret = stack.client("secretsmanager").get_secret_value(
        SecretId=stack.function_env()["LLM_API_KEY_SECRET"]
    )
    assert secret["SecretString"] == "sk-test-key"
    assert stack.topic_arn.endswith(":llm-stream-local-prompts")


def test_an_extra_subscriber_gets_only_the_prompts_its_filter_policy_matches(
    stack: LocalStack,
) -> None:
    message_id = publish(stack, "bedrock", '{"for":"audit"}')

    def audit_runs(invocations: list[Any]) -> Any:
        return [i for i in invocations if i.function == "audit"] or None

    (invocation,) = stack.wait_for_invocations(audit_runs)
    assert invocation.ok
    assert invocation.event["Records"][0]["Sns"]["MessageId"] == message_id
    assert not stack.invocations("stream")  # StreamFunction only takes provider=openai


def test_an_async_invocation_that_keeps_failing_lands_in_the_dead_letter_queue(
    stack: LocalStack,
) -> None:
    publish(stack, "broken", '{"doomed":true}')
    sqs = stack.client("sqs")
    messages = sqs.receive_message(
        QueueUrl=stack.dead_letter_queue_url, WaitTimeSeconds=10, MaxNumberOfMessages=1
    )["Messages"]
    record = json.loads(messages[0]["Body"])
    assert record["requestContext"]["condition"] == "RetriesExhausted"
    assert record["requestContext"]["approximateInvokeCount"] == 2
    assert record["responsePayload"]["errorType"] == "RuntimeError"
    assert record["requestPayload"]["Records"][0]["Sns"]["Message"] == '{"doomed":true}'
    assert [i.attempt for i in stack.invocations("broken")] == [0, 1]


def test_functions_never_see_real_credentials_or_the_llm_key(stack: LocalStack) -> None:
    env = stack.function_env()
    for name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "OPENAI_API_KEY", "LLM_API_KEY"):
        assert env[name] is None  # removed from the inherited environment
    assert env["AWS_ACCESS_KEY_ID"] == "testing"
    assert env["AWS_ENDPOINT_URL"] == stack.moto_url
    assert env["LLM_BASE_URL"] == stack.mock_llm.base_url
    assert env["MANAGEMENT_ENDPOINT_TEMPLATE"] == "http://{domainName}/{stage}"
