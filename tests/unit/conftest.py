"""Unit fixtures: moto-backed AWS resources shaped like template.yaml's, and the mock LLM."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import boto3
import pytest
from moto import mock_aws

from devstack.mock_llm import MockLLM

API_DOMAIN = "abc123def4.execute-api.us-east-1.amazonaws.com"
SECRET_NAME = "llm-stream/openai-api-key"
TABLES = {
    "connections": [("connectionId", "S", "HASH")],
    "frames": [("requestId", "S", "HASH"), ("seq", "N", "RANGE")],
    "conversations": [("conversationId", "S", "HASH"), ("turn", "N", "RANGE")],
    "response_cache": [("cacheKey", "S", "HASH"), ("part", "N", "RANGE")],
}
"""The tables the functions require, keyed as template.yaml declares them."""


def create_tables(dynamodb: Any) -> None:
    """Every table of TABLES that does not exist yet."""
    existing = set(dynamodb.list_tables()["TableNames"])
    for name, keys in TABLES.items():
        if name in existing:
            continue
        dynamodb.create_table(
            TableName=name,
            KeySchema=[{"AttributeName": k, "KeyType": kind} for k, _, kind in keys],
            AttributeDefinitions=[{"AttributeName": k, "AttributeType": t} for k, t, _ in keys],
            BillingMode="PAY_PER_REQUEST",
        )


@dataclass
class Aws:
    dynamodb: Any
    sns: Any
    sqs: Any
    table: str
    topic_arn: str
    queue_url: str

    def published(self) -> list[dict[str, Any]]:
        """SNS notifications delivered to the test queue subscribed to the prompt topic."""
        out = []
        while True:
            batch = self.sqs.receive_message(
                QueueUrl=self.queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=0
            ).get("Messages", [])
            if not batch:
                return out
            for message in batch:
                out.append(json.loads(message["Body"]))
                self.sqs.delete_message(
                    QueueUrl=self.queue_url, ReceiptHandle=message["ReceiptHandle"]
                )


@pytest.fixture(scope="session")
def mock_llm() -> Iterator[MockLLM]:
    with MockLLM() as llm:
        yield llm


@pytest.fixture
def aws(monkeypatch) -> Iterator[Aws]:
    with mock_aws():
        dynamodb = boto3.client("dynamodb")
        create_tables(dynamodb)
        sns = boto3.client("sns")
        topic_arn = sns.create_topic(Name="prompts")["TopicArn"]
        sqs = boto3.client("sqs")
        queue_url = sqs.create_queue(QueueName="published")["QueueUrl"]
        queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])[
            "Attributes"
        ]["QueueArn"]
        sns.subscribe(TopicArn=topic_arn, Protocol="sqs", Endpoint=queue_arn)
        boto3.client("secretsmanager").create_secret(Name=SECRET_NAME, SecretString="sk-test")
        for key, value in {
            "CONNECTIONS_TABLE": "connections",
            "FRAMES_TABLE": "frames",
            "CONVERSATIONS_TABLE": "conversations",
            "RESPONSE_CACHE_TABLE": "response_cache",  # the cache stays off: TTL 0
            "PROMPT_TOPIC_ARN": topic_arn,
            "LLM_API_KEY_SECRET": SECRET_NAME,
            "LLM_MODEL": "gpt-4o-mini",
            "ALLOWED_MODELS": "gpt-4o-mini,gpt-4o",
            "SYSTEM_PROMPT": "You are a concise assistant.",
        }.items():
            monkeypatch.setenv(key, value)
        yield Aws(dynamodb, sns, sqs, "connections", topic_arn, queue_url)


@pytest.fixture
def stream_env(aws, mock_llm, monkeypatch):
    """The stream function's world: moto resources, the mock LLM, no batching delay."""
    from tests.unit.streams import prepare_stream_env

    return prepare_stream_env(aws, mock_llm, monkeypatch)


@pytest.fixture
def closed(monkeypatch) -> list[str]:
    """Connections the stream function closed (moto itself forgets them)."""
    from tests.unit.streams import record_closes

    return record_closes(monkeypatch)
