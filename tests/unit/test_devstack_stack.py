"""The local stack's wiring: template.yaml's resources, routes and environments in moto, extra
SNS subscribers, dead letters, safe env."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from devstack.runtime import FunctionSpec
from devstack.sns import Subscription
from devstack.stack import LocalStack, StackConfig
from devstack.template import Template

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
        SecretId=stack.function_env("stream")["LLM_API_KEY_SECRET"]
    )
    assert secret["SecretString"] == "sk-test-key"
    assert stack.topic_arn.endswith(":llm-stream-local-prompts")


def test_tables_have_the_templates_key_schemas_indexes_and_ttl(stack: LocalStack) -> None:
    dynamodb = stack.client("dynamodb")
    declared = Template().raw["Resources"]
    for logical_id, name in stack.resources.tables.items():
        props = declared[logical_id]["Properties"]
        table = dynamodb.describe_table(TableName=name)["Table"]
        assert table["KeySchema"] == props["KeySchema"], logical_id
        assert sorted(table["AttributeDefinitions"], key=str) == sorted(
            props["AttributeDefinitions"], key=str
        )
        indexes = [i["IndexName"] for i in table.get("GlobalSecondaryIndexes", [])]
        assert indexes == [i["IndexName"] for i in props.get("GlobalSecondaryIndexes", [])]
        ttl = dynamodb.describe_time_to_live(TableName=name)["TimeToLiveDescription"]
        assert ttl == {
            "AttributeName": props["TimeToLiveSpecification"]["AttributeName"],
            "TimeToLiveStatus": "ENABLED",
        }
    assert set(stack.resources.tables) == {
        name for name, r in declared.items() if r["Type"] == "AWS::DynamoDB::Table"
    }
    # The functions find them under the variables the template names them by.
    assert stack.tables["FRAMES_TABLE"] == stack.resources.tables["FramesTable"]


def test_queues_keep_the_templates_redrive_and_retention(stack: LocalStack) -> None:
    sqs = stack.client("sqs")
    attributes = sqs.get_queue_attributes(
        QueueUrl=stack.dead_letter_queue_url, AttributeNames=["All"]
    )["Attributes"]
    failed_arn = sqs.get_queue_attributes(
        QueueUrl=stack.failed_queue_url, AttributeNames=["QueueArn"]
    )["Attributes"]["QueueArn"]
    assert json.loads(attributes["RedrivePolicy"]) == {
        "deadLetterTargetArn": failed_arn,
        "maxReceiveCount": 5,
    }
    assert attributes["MessageRetentionPeriod"] == "1209600"
    # The one local change: a dead letter handed back comes round in 30 s, not 360 s.
    assert attributes["VisibilityTimeout"] == "30"
    env = stack.function_env("deadletter")
    assert env["FAILED_QUEUE_URL"] == stack.failed_queue_url


def test_each_function_gets_its_template_environment_with_local_names(stack: LocalStack) -> None:
    template = Template(
        parameters={"StageName": "local", "LlmBaseUrl": stack.llm_base_url},
        endpoint_url=stack.moto_url,
    )
    assert stack.runtime is not None
    specs = stack.runtime.specs
    for logical_id, function in template.functions().items():
        if function.name not in specs:
            continue  # the authorizer, with auth off
        env = specs[function.name].env
        assert {k: env[k] for k in function.environment} == function.environment, logical_id
    # Names the template gives resources, resolved to the ones in moto.
    message = specs["message"].env
    assert message["PROMPT_TOPIC_ARN"] == stack.topic_arn
    assert message["CONNECTIONS_TABLE"] == stack.tables["CONNECTIONS_TABLE"]
    assert "LLM_BASE_URL" not in message and "PROMPT_TOPIC_ARN" not in specs["stream"].env
    assert specs["stream"].env["LLM_BASE_URL"] == stack.mock_llm.base_url
    assert {s.name for s in specs.values()} >= {"connect", "disconnect", "message", "stream"}
    assert "authorizer" not in specs and "bedrock-stream" not in specs


def test_routes_and_limits_come_from_the_template(stack: LocalStack) -> None:
    assert stack.gateway is not None and stack.runtime is not None
    routes = {key: (r.function, r.two_way) for key, r in stack.gateway.config.routes.items()}
    assert routes == {
        "$connect": ("connect", False),
        "$disconnect": ("disconnect", False),
        "sendMessage": ("message", True),
        "cancel": ("message", True),
        "resume": ("message", True),
        "$default": ("message", True),
    }
    stream = stack.runtime.specs["stream"]
    assert (stream.timeout, stream.memory_mb, stream.function_name) == (
        900,
        512,
        "llm-stream-local-StreamFunction",
    )
    assert stack.runtime.specs["deadletter"].timeout == 60


def test_an_env_override_of_a_parameter_reaches_every_function_that_carries_it() -> None:
    # MIN_FRAME_INTERVAL_MS is MinFrameIntervalMs; ALLOWED_MODELS is AllowedModels, which the
    # message function joins with the Bedrock model under the fan-out, as the template does.
    stack = LocalStack(
        StackConfig(
            bedrock_fanout=True, env={"ALLOWED_MODELS": "gpt-4o", "STREAM_LEASE_SECONDS": "3"}
        )
    )
    assert stack.parameters()["AllowedModels"] == "gpt-4o"
    assert stack.function_env("message")["ALLOWED_MODELS"] == (
        "gpt-4o,anthropic.claude-3-haiku-20240307-v1:0"
    )
    assert stack.function_env("message")["MODEL_PROVIDERS"] == (
        "anthropic.claude-3-haiku-20240307-v1:0=bedrock"
    )
    # A variable no parameter carries is set as it is, on top of the template's value.
    assert stack.function_env("stream")["STREAM_LEASE_SECONDS"] == "3"
    assert stack.function_env("bedrock-stream")["LLM_PROVIDER"] == "bedrock"
    assert [s.filter_policy for s in stack.subscriptions()] == [
        {"provider": ["openai"]},
        {"provider": ["bedrock"]},
    ]


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
    assert record["eventSourceARN"].endswith(":llm-stream-local-StreamDeadLetterQueue")
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
    env = stack.function_env("stream")
    for name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "OPENAI_API_KEY", "LLM_API_KEY"):
        assert env[name] is None  # removed from the inherited environment
    assert env["AWS_ACCESS_KEY_ID"] == "testing"
    assert env["AWS_ENDPOINT_URL"] == stack.moto_url
    assert env["LLM_BASE_URL"] == stack.mock_llm.base_url
    assert env["MANAGEMENT_ENDPOINT_TEMPLATE"] == "http://{domainName}/{stage}"
