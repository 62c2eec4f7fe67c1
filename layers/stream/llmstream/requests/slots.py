"""Stream slots: how many answers a connection has in flight. The message handler takes one
before it publishes (``intake.limits``); the stream or dead-letter function gives it back.

The count (``activeStreams``) lives on the connection's item in the connections table, changed
by conditional atomic updates, so concurrent messages cannot both take the last slot.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from botocore.exceptions import ClientError

from ..core.dynamo import conditional_failed, to_item
from ..core.observability import logger
from ..core.settings import Settings
from .record import item_key

STALE_SLOT_SECONDS = 30 * 60
"""Longer than any stream can be held up and then run: 15 minutes of event age in Lambda's
queue (StreamMaxEventAgeSeconds' default) plus the stream function's 15-minute timeout."""


# A NamedTuple, not a dataclass: the message handler's cold start (docs/architecture.md).
class Refusal(NamedTuple):
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


def release_once(
    dynamodb: Any, *, frames_table: str, key: str, connections_table: str, connection_id: str
) -> bool:
    """Give the request ``key``'s stream slot back unless someone did: its record's flag and its
    connection's count change together (one TransactWriteItems), so a slot given back when the
    client cancels is not given back again when the stream ends. False when nothing changed."""
    try:
        dynamodb.transact_write_items(
            TransactItems=[
                {
                    "Update": {
                        "TableName": frames_table,
                        "Key": to_item(item_key(key)),
                        "UpdateExpression": "SET slotReleased = :yes",
                        "ConditionExpression": "attribute_exists(requestId) AND "
                        "attribute_not_exists(slotReleased)",
                        "ExpressionAttributeValues": to_item({":yes": True}),
                    }
                },
                {
                    "Update": {
                        "TableName": connections_table,
                        "Key": to_item({"connectionId": connection_id}),
                        "UpdateExpression": "ADD activeStreams :minus_one",
                        "ConditionExpression": "attribute_exists(connectionId) AND "
                        "activeStreams > :zero",
                        "ExpressionAttributeValues": to_item({":minus_one": -1, ":zero": 0}),
                    }
                },
            ]
        )
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") == "TransactionCanceledException":
            return False
        raise
    return True


class StreamSlot:
    """The stream slot one request holds on its connection, given back once: as the answer's
    last frame is queued (so that a client that sends its next prompt on seeing ``end`` finds
    it free), when its client cancels it (intake), or, for a request that no invocation will
    answer, by the dead-letter function."""

    def __init__(self, dynamodb: Any, settings: Settings, key: str, connection_id: str) -> None:
        self._dynamodb = dynamodb
        self._settings = settings
        self._key = key
        self._connection_id = connection_id
        self._held = settings.max_concurrent_streams > 0  # no limit, no slot taken

    def release(self) -> None:
        if not self._held:
            return
        self._held = False
        try:
            release_once(
                self._dynamodb,
                frames_table=self._settings.frames_table,
                key=self._key,
                connections_table=self._settings.connections_table,
                connection_id=self._connection_id,
            )
        except Exception:
            logger.exception("could not give back the stream slot")
