"""Where failed asynchronous invocations go, as Lambda does it: the on-failure record to the
function's destination queue, and the SQS event source mappings that hand the queue's messages
to the dead-letter function, deleting what it settled."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from .runtime import REGION, Invocation, Runtime, function_arn
from .template import Template

log = logging.getLogger("devstack")


def sqs_record(message: dict[str, Any], queue_arn: str) -> dict[str, Any]:
    """One record of the SQS event Lambda's event source mapping builds from a message."""
    return {
        "messageId": message["MessageId"],
        "receiptHandle": message["ReceiptHandle"],
        "body": message["Body"],
        "attributes": message.get("Attributes", {}),
        "messageAttributes": {},
        "md5OfBody": message["MD5OfBody"],
        "eventSource": "aws:sqs",
        "eventSourceARN": queue_arn,
        "awsRegion": REGION,
    }


def on_failure_record(inv: Invocation, arn: str) -> dict[str, Any]:
    """Lambda's on-failure destination record: the event and its last error."""
    return {
        "version": "1.0",
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()),
        "requestContext": {
            "requestId": inv.request_id,
            "functionArn": arn,
            "condition": "RetriesExhausted",
            "approximateInvokeCount": inv.attempt + 1,
        },
        "requestPayload": inv.event,
        "responseContext": {
            "statusCode": 200,
            "executedVersion": "$LATEST",
            "functionError": "Unhandled",
        },
        "responsePayload": inv.error,
    }


class DeadLetters:
    """The template's on-failure destinations and event source mappings on moto's queues
    (``queues``: URLs by logical ID). ``runtime`` is set once the runtime exists."""

    def __init__(
        self,
        template: Template,
        client: Callable[[str], Any],
        queues: Mapping[str, str],
        default_queue: str,
    ) -> None:
        self.template, self.client = template, client
        self.queues, self.default_queue = queues, default_queue
        self.runtime: Runtime | None = None
        self._pollers: list[asyncio.Task[None]] = []

    async def on_failure(self, inv: Invocation) -> None:
        """Lambda's on-failure destination: the event and its last error, to the SQS queue."""
        spec = self.runtime.specs[inv.function] if self.runtime else None
        record = on_failure_record(inv, function_arn(spec.lambda_name if spec else inv.function))
        # A function of the template's has its own destination; an extra one, the stream's.
        function = {f.name: f for f in self.template.functions().values()}.get(inv.function)
        destination = function.on_failure if function and function.on_failure else None
        queue = self.queues[destination] if destination else self.default_queue
        await asyncio.to_thread(
            self.client("sqs").send_message, QueueUrl=queue, MessageBody=json.dumps(record)
        )

    def start(self) -> None:
        """Poll the queue of each event source mapping whose function this stack runs."""
        assert self.runtime is not None
        functions = self.template.functions()
        for function, queue, props in self.template.event_source_mappings():
            name = functions[function].name
            if name in self.runtime.specs:
                poll = self._consume(name, queue, int(props.get("BatchSize", 10)))
                self._pollers.append(asyncio.get_running_loop().create_task(poll))

    async def stop(self) -> None:
        for poller in self._pollers:
            poller.cancel()
        await asyncio.gather(*self._pollers, return_exceptions=True)

    async def _consume(self, function: str, queue: str, batch_size: int) -> None:
        """An SQS event source mapping (DeadLetterEventSource): poll the queue, hand each batch
        to the function, delete what it settled; the rest comes round again."""
        sqs = self.client("sqs")
        url, arn = self.queues[queue], self.template.arn(queue)
        while True:
            try:
                received = await asyncio.to_thread(
                    sqs.receive_message,
                    QueueUrl=url,
                    MaxNumberOfMessages=batch_size,
                    WaitTimeSeconds=1,
                    AttributeNames=["All"],
                )
            except Exception:  # moto is stopping
                await asyncio.sleep(1)
                continue
            messages = received.get("Messages", [])
            if not messages:
                continue
            event = {"Records": [sqs_record(m, arn) for m in messages]}
            try:
                result = await self.runtime.invoke(function, event) if self.runtime else None
            except Exception as exc:  # the whole batch comes round again
                log.warning("the %s function failed: %s", function, exc)
                continue
            failed = {f["itemIdentifier"] for f in (result or {}).get("batchItemFailures", [])}
            for message in messages:
                if message["MessageId"] not in failed:
                    await asyncio.to_thread(
                        sqs.delete_message, QueueUrl=url, ReceiptHandle=message["ReceiptHandle"]
                    )
