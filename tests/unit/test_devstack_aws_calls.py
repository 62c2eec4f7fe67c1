"""The AWS call counter: real boto3 calls to moto, counted per operation if a function made them."""

from __future__ import annotations

import asyncio
import textwrap
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.client import BaseClient
from moto import mock_aws

from devstack.aws_calls import AwsCallCounter
from devstack.runtime import FunctionSpec, Runtime

# Every call the benchmark cares about, and one from a thread the handler starts (as the sender
# and the lease renewer do).
HANDLER = """
import threading
import boto3

def lambda_handler(event, context):
    dynamodb, sns = boto3.client("dynamodb"), boto3.client("sns")
    table, key = event["table"], {"pk": {"S": "a"}}
    dynamodb.put_item(TableName=table, Item=key)
    dynamodb.put_item(TableName=table, Item={"pk": {"S": "b"}})
    dynamodb.update_item(
        TableName=table, Key=key, UpdateExpression="SET n = :n",
        ExpressionAttributeValues={":n": {"N": "1"}},
    )
    dynamodb.get_item(TableName=table, Key=key)
    dynamodb.query(
        TableName=table, KeyConditionExpression="pk = :a",
        ExpressionAttributeValues={":a": {"S": "a"}},
    )
    dynamodb.batch_write_item(
        RequestItems={table: [{"PutRequest": {"Item": {"pk": {"S": "c"}}}}]}
    )
    dynamodb.delete_item(TableName=table, Key={"pk": {"S": "b"}})
    sns.publish(TopicArn=event["topic"], Message="hello")
    thread = threading.Thread(target=lambda: dynamodb.get_item(TableName=table, Key=key))
    thread.start()
    thread.join()
    return {"ok": True}
"""

EXPECTED = {
    ("dynamodb", "BatchWriteItem"): 1,
    ("dynamodb", "DeleteItem"): 1,
    ("dynamodb", "GetItem"): 2,
    ("dynamodb", "PutItem"): 2,
    ("dynamodb", "Query"): 1,
    ("dynamodb", "UpdateItem"): 1,
    ("sns", "Publish"): 1,
}


def function_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "fn"
    folder.mkdir()
    (folder / "app.py").write_text(textwrap.dedent(HANDLER))
    return folder


def resources() -> dict[str, str]:
    """A table and a topic, made by the test: calls that must not count as the function's."""
    boto3.client("dynamodb").create_table(
        TableName="items",
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    topic = boto3.client("sns").create_topic(Name="prompts")["TopicArn"]
    return {"table": "items", "topic": topic}


def invoke(runtime: Runtime, event: dict[str, Any], times: int = 1) -> None:
    async def scenario() -> None:
        await runtime.start("http://127.0.0.1:9")  # thread isolation: no Runtime API needed
        try:
            for _ in range(times):
                assert await runtime.invoke("fn", event) == {"ok": True}
        finally:
            await runtime.stop()

    asyncio.run(asyncio.wait_for(scenario(), 30))


def test_the_functions_calls_are_counted_per_operation_and_the_tests_own_are_not(
    tmp_path: Path,
) -> None:
    runtime = Runtime([FunctionSpec("fn", code_dir=function_dir(tmp_path), isolation="thread")])
    with mock_aws(), AwsCallCounter.for_runtime(runtime) as calls:
        event = resources()
        invoke(runtime, event, times=2)
        boto3.client("dynamodb").get_item(TableName="items", Key={"pk": {"S": "a"}})
        assert calls.counts() == {operation: 2 * n for operation, n in EXPECTED.items()}
        assert calls.total() == 2 * sum(EXPECTED.values())


def test_reset_hands_back_the_counts_and_starts_again_from_zero(tmp_path: Path) -> None:
    runtime = Runtime([FunctionSpec("fn", code_dir=function_dir(tmp_path), isolation="thread")])
    with mock_aws(), AwsCallCounter.for_runtime(runtime) as calls:
        event = resources()
        invoke(runtime, event)
        assert calls.reset() == EXPECTED
        assert calls.counts() == {} and calls.total() == 0
        invoke(runtime, event)
        assert calls.counts() == EXPECTED


def test_without_roots_every_call_counts_and_uninstalling_restores_botocore() -> None:
    original = BaseClient._make_api_call
    with mock_aws():
        with AwsCallCounter() as everything, AwsCallCounter([Path("/nowhere")]) as none:
            resources()
            assert everything.counts() == {
                ("dynamodb", "CreateTable"): 1,
                ("sns", "CreateTopic"): 1,
            }
            assert none.counts() == {}
        boto3.client("dynamodb").list_tables()
        assert everything.total() == 2
    assert BaseClient._make_api_call is original


def test_a_runtime_with_containers_is_refused_rather_than_counted_as_zero(tmp_path: Path) -> None:
    runtime = Runtime([FunctionSpec("fn", code_dir=function_dir(tmp_path))])
    with pytest.raises(ValueError, match="isolation"):
        AwsCallCounter.for_runtime(runtime)
