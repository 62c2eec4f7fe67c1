"""Stream slots: how many answers a connection has in flight. The message handler takes one
before it publishes (``acquire_stream``); the stream or dead-letter function gives it back.

The count lives on the connection's item in the connections table, changed by conditional
atomic updates, so concurrent messages cannot both take the last slot.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

from ..core.dynamo import conditional_failed

STALE_SLOT_SECONDS = 30 * 60
"""Longer than any stream can be held up and then run: 15 minutes of event age in Lambda's
queue (StreamMaxEventAgeSeconds' default) plus the stream function's 15-minute timeout."""


@dataclass(frozen=True)
class Refusal:
    """Why a request was refused; ``message`` names the limit and is safe to show the client."""

    limit: str
    message: str


def acquire_stream(
    dynamodb: Any, table: str, *, connection_id: str, limit: int, now_s: int, expires_at: int
) -> Refusal | None:
    """Take one of the connection's stream slots; the stream function gives it back.

    A slot whose stream never ran (its event went to the dead-letter queue unprocessed) would
    be held until the connection closes; slots all taken longer ago than STALE_SLOT_SECONDS
    are presumed lost and reset. The item gets an expiry if it has none, so a counter never
    outlives its connection even when $connect's record is missing.
    """
    if limit <= 0:
        return None
    values = {":one": {"N": "1"}, ":now": {"N": str(now_s)}, ":expires": {"N": str(expires_at)}}
    try:
        dynamodb.update_item(
            TableName=table,
            Key={"connectionId": {"S": connection_id}},
            UpdateExpression=(
                "ADD activeStreams :one "
                "SET slotTakenAt = :now, expiresAt = if_not_exists(expiresAt, :expires)"
            ),
            ConditionExpression="attribute_not_exists(activeStreams) OR activeStreams < :limit",
            ExpressionAttributeValues={**values, ":limit": {"N": str(limit)}},
        )
        return None
    except ClientError as exc:
        if not conditional_failed(exc):
            raise
    try:
        dynamodb.update_item(
            TableName=table,
            Key={"connectionId": {"S": connection_id}},
            UpdateExpression="SET activeStreams = :one, slotTakenAt = :now",
            ConditionExpression="slotTakenAt < :stale",
            ExpressionAttributeValues={
                ":one": values[":one"],
                ":now": values[":now"],
                ":stale": {"N": str(now_s - STALE_SLOT_SECONDS)},
            },
        )
        return None
    except ClientError as exc:
        if not conditional_failed(exc):
            raise
    plural = "answer" if limit == 1 else "answers"
    return Refusal(
        "concurrent_streams",
        f"too many answers in progress: this connection may stream {limit} {plural} at once; "
        "wait for one to end",
    )


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
