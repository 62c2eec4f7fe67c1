"""template.yaml's resources in moto: the moto server and its clients, and the tables, topics,
queues and secrets that the template declares, created as it declares them."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import threading
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from .runtime import REGION
from .template import Template, text

# SQS attributes the local queues take from template.yaml (moto ignores the rest).
QUEUE_ATTRIBUTES = (
    "DelaySeconds",
    "MaximumMessageSize",
    "MessageRetentionPeriod",
    "ReceiveMessageWaitTimeSeconds",
    "SqsManagedSseEnabled",
    "VisibilityTimeout",
)


@dataclass
class Resources:
    """What ``create_resources`` made: local names by logical ID."""

    tables: dict[str, str] = field(default_factory=dict)
    topics: dict[str, str] = field(default_factory=dict)  # ARNs
    queues: dict[str, str] = field(default_factory=dict)  # URLs


def create_resources(
    template: Template, client: Callable[[str], Any], visibility: Mapping[str, int] | None = None
) -> Resources:
    """Create template.yaml's tables (keys, indexes, TTL), topics and queues (redrive
    policies, retention) with ``client(service)``; ``visibility`` overrides queues' timeouts."""
    made = Resources()
    dynamodb = client("dynamodb")
    for table in template.tables():
        dynamodb.create_table(**table.create_table_args())
        if table.ttl_attribute:
            dynamodb.update_time_to_live(
                TableName=table.name,
                TimeToLiveSpecification={"AttributeName": table.ttl_attribute, "Enabled": True},
            )
        made.tables[table.logical_id] = table.name
    for logical_id in template.resources("AWS::SNS::Topic"):
        topic = client("sns").create_topic(Name=template.name(logical_id))
        made.topics[logical_id] = topic["TopicArn"]
    for logical_id in template.queues():
        props = template.properties(logical_id)
        attributes = {k: text(props[k]) for k in QUEUE_ATTRIBUTES if k in props}
        if logical_id in (visibility or {}):
            attributes["VisibilityTimeout"] = str(visibility[logical_id])  # type: ignore[index]
        if "RedrivePolicy" in props:
            attributes["RedrivePolicy"] = json.dumps(props["RedrivePolicy"])
        queue = client("sqs").create_queue(
            QueueName=template.name(logical_id), Attributes=attributes
        )
        made.queues[logical_id] = queue["QueueUrl"]
    return made


def create_secrets(
    template: Template, client: Callable[[str], Any], llm_api_key: str | None = None
) -> str:
    """The secrets the functions read: the LLM key (``llm_api_key``, else $LLM_API_KEY or
    $OPENAI_API_KEY, else a dummy) and, in hmac mode, the signing key, which it returns."""
    key = (
        llm_api_key
        or os.environ.get("LLM_API_KEY")
        or os.environ.get("OPENAI_API_KEY")
        or "sk-local-dummy-key"
    )
    client("secretsmanager").create_secret(
        Name=template.parameters["LlmApiKeySecretName"], SecretString=key
    )
    if template.parameters["AuthMode"] != "hmac":
        return ""
    hmac_secret = os.environ.get("AUTH_HMAC_SECRET") or secrets.token_urlsafe(32)
    client("secretsmanager").create_secret(
        Name=template.parameters["AuthHmacSecretName"], SecretString=hmac_secret
    )
    return hmac_secret


class _SharedOrExclusive:
    """Many holders at once, or one alone: a readers-writer lock."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._shared = 0
        self._exclusive = False

    @contextlib.contextmanager
    def hold(self, exclusive: bool) -> Iterator[None]:
        with self._cond:
            while self._exclusive or (exclusive and self._shared):
                self._cond.wait()
            if exclusive:
                self._exclusive = True
            else:
                self._shared += 1
        try:
            yield
        finally:
            with self._cond:
                if exclusive:
                    self._exclusive = False
                else:
                    self._shared -= 1
                self._cond.notify_all()


def isolate_dynamodb_transactions() -> None:
    """moto copies the tables to roll a TransactWriteItems back, and another request thread
    writing meanwhile breaks the copy ("dictionary changed size during iteration"), which real
    DynamoDB never does: a transaction here runs alone, every other request beside the others."""
    from moto.dynamodb.responses import DynamoHandler

    if getattr(DynamoHandler.call_action, "_devstack", False):
        return
    lock, call_action = _SharedOrExclusive(), DynamoHandler.call_action

    def serialized(self: Any) -> Any:
        action = str(self.headers.get("X-Amz-Target", "")).rsplit(".", 1)[-1]
        with lock.hold(exclusive=action.startswith("Transact")):
            return call_action(self)

    serialized._devstack = True  # type: ignore[attr-defined]
    DynamoHandler.call_action = serialized  # type: ignore[method-assign]


class MotoServer:
    """moto's server on a free port. Its state is per process (an earlier stack's tables live
    on), so it is reset when it starts and when it stops."""

    def __init__(self, host: str) -> None:
        self.host = host
        self.url = ""
        self._server: Any = None

    def start(self) -> MotoServer:
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.WARNING)
        isolate_dynamodb_transactions()
        self._server = ThreadedMotoServer(ip_address=self.host, port=0, verbose=False)
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.url = f"http://{host}:{port}"
        self.reset()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self.reset()
            self._server.stop()
            self._server = None

    def reset(self) -> None:
        request = urllib.request.Request(self.url + "/moto-api/reset", method="POST")
        with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(request, timeout=10):
            pass


def moto_client(service: str, endpoint_url: str) -> Any:
    """A boto3 client of moto's at ``endpoint_url``, with dummy credentials."""
    import boto3

    return boto3.client(
        service,
        endpoint_url=endpoint_url,
        region_name=REGION,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
