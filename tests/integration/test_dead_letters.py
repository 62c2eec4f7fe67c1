"""A stream function killed mid-answer with no retry left (StreamMaxRetryAttempts: 0), on the
local stack: Lambda's on-failure record reaches the dead-letter queue, the real dead-letter
function finds the request's lease lapsed, and the client is told, through a real socket."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import websockets
from websockets.exceptions import ConnectionClosed

from devstack.stack import LocalStack
from tests.integration.conftest import running_stack
from tests.integration.test_local_stack import converse, llm_request, run, send_message

pytestmark = pytest.mark.integration

LEASE_SECONDS = 2


@pytest.fixture(scope="module")
def stack() -> Iterator[LocalStack]:
    yield from running_stack(
        async_retries={"stream": 0},
        dead_letter_visibility=1,
        env={"STREAM_LEASE_SECONDS": str(LEASE_SECONDS), "MIN_FRAME_INTERVAL_MS": "0"},
    )


def killed_mid_answer(stack: LocalStack, request_id: str) -> tuple[list[dict[str, Any]], float]:
    """Ask for a long answer, kill the stream function's container after the first delta, and
    read every frame until the server closes the socket; also how long the close took."""

    async def scenario() -> tuple[list[dict[str, Any]], float]:
        frames: list[dict[str, Any]] = []
        killed_at = 0.0
        async with websockets.connect(stack.ws_url, open_timeout=60) as ws:
            prompt = f"#mock tokens=400 rate=20 first_token_delay=0\nkill me {request_id}"
            await ws.send(send_message(prompt, request_id))
            try:
                async with asyncio.timeout(60):
                    async for raw in ws:
                        frames.append(json.loads(raw))
                        if frames[-1]["type"] == "delta" and not killed_at:
                            assert stack.runtime is not None
                            assert stack.runtime.crash("stream") == 1
                            killed_at = time.monotonic()
            except ConnectionClosed:
                pass
        return frames, time.monotonic() - killed_at

    return asyncio.run(scenario())


def test_a_stream_killed_with_no_retry_left_still_gets_its_client_an_error_frame(
    stack: LocalStack,
) -> None:
    request_id = uuid.uuid4().hex
    frames, took = killed_mid_answer(stack, request_id)

    kinds = [f["type"] for f in frames]
    assert kinds[:2] == ["accepted", "start"] and kinds[-1] == "error" and "end" not in kinds
    assert frames[-1] == {
        "type": "error",
        "requestId": request_id,
        "code": "internal",
        "message": "the answer was interrupted; send the prompt again",
    }
    deltas = [f for f in frames if f["type"] == "delta"]
    assert [d["seq"] for d in deltas] == list(range(len(deltas)))  # what arrived is in order
    # Told once the dead invocation's lease lapsed, not before it (and not minutes later).
    assert took >= LEASE_SECONDS / 2

    (stream,) = [i for i in stack.invocations("stream") if request_id in json.dumps(i.event)]
    assert stream.error is not None and stream.error["errorType"] == "Runtime.ExitError"
    assert stream.attempt == 0  # no retry

    def dead_letter_runs(invocations: list[Any]) -> list[Any]:
        return [
            i
            for i in invocations
            if i.function == "deadletter" and request_id in json.dumps(i.event)
        ]

    # The client saw the close before the run that told it finished (it forwards the record).
    stack.wait_for_invocations(
        lambda invocations: any(
            i.result == {"batchItemFailures": []} for i in dead_letter_runs(invocations)
        )
    )
    runs = dead_letter_runs(stack.invocations())
    assert runs[-1].result == {"batchItemFailures": []}
    # While the lease was live the message went back to the queue untold, alone.
    assert all(
        run.result == {"batchItemFailures": [{"itemIdentifier": r["messageId"]}]}
        for run in runs[:-1]
        for r in run.event["Records"]
    )

    # The record is kept in the alarmed failed queue.
    sqs = stack.client("sqs")
    kept = sqs.receive_message(QueueUrl=stack.failed_queue_url, WaitTimeSeconds=5)["Messages"]
    record = json.loads(kept[0]["Body"])
    assert record["requestContext"]["condition"] == "RetriesExhausted"
    assert request_id in record["requestPayload"]["Records"][0]["Sns"]["Message"]

    # The model's stream died with the container; the connection's stream slot is free again.
    record = llm_request(stack, f"kill me {request_id}")
    assert stack.mock_llm.wait_for(lambda: record.client_closed, timeout=10)
    again = run(converse(stack.ws_url, send_message("#mock tokens=3 rate=0")))
    assert again.frames[-1]["type"] == "end"
