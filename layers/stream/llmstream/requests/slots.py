"""Stream slots: how many answers a connection has in flight. The message handler takes one
before it publishes (``intake.limits``); the stream or dead-letter function gives it back.

The count (``activeStreams``) lives on the connection's item in the connections table, changed
by conditional atomic updates, so concurrent messages cannot both take the last slot.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

from ..core.dynamo import conditional_failed
from ..core.observability import logger
from ..core.settings import Settings

STALE_SLOT_SECONDS = 30 * 60
"""Longer than any stream can be held up and then run: 15 minutes of event age in Lambda's
queue (StreamMaxEventAgeSeconds' default) plus the stream function's 15-minute timeout."""


@dataclass(frozen=True)
class Refusal:
    """Why a request was refused; ``message`` names the limit and is safe to show the client."""

    limit: str
    message: str


def release_stream(dynamodb: Any, table: str, connection_id: str) -> bool:
    """Give a stream slot back. Never below zero, and never recreates a forgotten connection."""
    try:
        dynamodb.update_item(
            TableName=table,
            Key={"connectionId": {"S": connection_id}},
            UpdateExpression="ADD activeStreams :minus_one",
            ConditionExpression="attribute_exists(connectionId) AND activeStreams > :zero",
            ExpressionAttributeValues={":minus_one": {"N": "-1"}, ":zero": {"N": "0"}},
        )
        return True
    except ClientError as exc:
        if conditional_failed(exc):
            return False
        raise


class StreamSlot:
    """The stream slot one request holds on its connection, given back once: as the answer's
    last frame is queued (so that a client that sends its next prompt on seeing ``end`` finds
    it free), or, for a request that no invocation will answer, by the dead-letter function."""

    def __init__(self, dynamodb: Any, table: str, connection_id: str, *, held: bool) -> None:
        self._dynamodb = dynamodb
        self._table = table
        self._connection_id = connection_id
        self._held = held

    @classmethod
    def of(cls, dynamodb: Any, settings: Settings, connection_id: str) -> StreamSlot:
        held = settings.max_concurrent_streams > 0  # no limit, no slot taken
        return cls(dynamodb, settings.connections_table, connection_id, held=held)

    def release(self) -> None:
        if not self._held:
            return
        self._held = False
        try:
            release_stream(self._dynamodb, self._table, self._connection_id)
        except Exception:
            logger.exception("could not give back the stream slot")
