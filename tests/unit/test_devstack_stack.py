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


def test_an_async_invocation_that_keeps_failing_goes_through_the_dead_letter_function(
    stack: LocalStack,
) -> None:
    publish(stack, "broken", '{"doomed":true}')

    def dead_letter_runs(invocations: list[Any]) -> Any:
        return [i for i in invocations if i.function == "deadletter"] or None

    (invocation,) = stack.wait_for_invocations(dead_letter_runs, timeout=20)
    assert invocation.ok and invocation.result == {"batchItemFailures": []}
    (record,) = invocation.event["Records"]
    assert record["eventSource"] == "aws:sqs"
    assert record["eventSourceARN"].endswith(":llm-stream-local-stream-dlq")
    # Lambda's on-failure record, as the runtime wrote it to the dead-letter queue ...
    body = json.loads(record["body"])
    assert body["requestContext"]["condition"] == "RetriesExhausted"
    assert body["requestContext"]["approximateInvokeCount"] == 2
    assert body["responsePayload"]["errorType"] == "RuntimeError"
    assert body["requestPayload"]["Records"][0]["Sns"]["Message"] == '{"doomed":true}'
    assert [i.attempt for i in stack.invocations("broken")] == [0, 1]
    # ... is kept in the failed queue (its message is no prompt: nobody to tell), and the
    # dead-letter queue is drained.
    sqs = stack.client("sqs")
    kept = sqs.receive_message(QueueUrl=stack.failed_queue_url, WaitTimeSeconds=5)["Messages"]
    assert [m["Body"] for m in kept] == [record["body"]]
    depth = sqs.get_queue_attributes(
        QueueUrl=stack.dead_letter_queue_url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    assert depth == {
        "ApproximateNumberOfMessages": "0",
        "ApproximateNumberOfMessagesNotVisible": "0",
    }


def test_functions_never_see_real_credentials_or_the_llm_key(stack: LocalStack) -> None:
    env = stack.function_env()
    for name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "OPENAI_API_KEY", "LLM_API_KEY"):
        assert env[name] is None  # removed from the inherited environment
    assert env["AWS_ACCESS_KEY_ID"] == "testing"
    assert env["AWS_ENDPOINT_URL"] == stack.moto_url
    assert env["LLM_BASE_URL"] == stack.mock_llm.base_url
    assert env["MANAGEMENT_ENDPOINT_TEMPLATE"] == "http://{domainName}/{stage}"
