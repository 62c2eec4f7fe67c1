"""Abuse limits, checked by the message handler before it publishes: requests per minute per
connection and per principal, and streams in flight per connection.

Counters are DynamoDB atomic updates with a condition, so concurrent messages cannot both take
the last slot. They live in the connections table: per-minute counters as their own items
(``rate#...``, expiring through the table's TTL), the stream count on the connection's item.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

from ..core.dynamo import conditional_failed
from ..requests.slots import Refusal, acquire_stream, release_stream

WINDOW_SECONDS = 60
RATE_KEY_PREFIX = "rate#"
"""Connection ids never contain '#', so a rate counter can never be mistaken for a connection."""


def _count_in_window(dynamodb: Any, table: str, key: str, *, limit: int, now_s: int) -> bool:
    """Count one request in the current fixed one-minute window; False when it is full."""
    window = now_s // WINDOW_SECONDS
    try:
        dynamodb.update_item(
            TableName=table,
            Key={"connectionId": {"S": f"{RATE_KEY_PREFIX}{key}#{window}"}},
            UpdateExpression="ADD requests :one SET expiresAt = :expires",
            ConditionExpression="attribute_not_exists(requests) OR requests < :limit",
            ExpressionAttributeValues={
                ":one": {"N": "1"},
                ":limit": {"N": str(limit)},
                ":expires": {"N": str((window + 2) * WINDOW_SECONDS)},
            },
        )
        return True
    except ClientError as exc:
        if conditional_failed(exc):
            return False
        raise


def count_request(
    dynamodb: Any,
    table: str,
    *,
    connection_id: str,
    principal_id: str | None,
    per_connection: int,
    per_principal: int,
    now_s: int,
) -> Refusal | None:
    """Count one request against the connection's and the principal's per-minute limits."""
    if per_connection > 0 and not _count_in_window(
        dynamodb, table, f"connection#{connection_id}", limit=per_connection, now_s=now_s
    ):
        return Refusal(
            "connection_rate",
            f"too many requests: this connection may send {per_connection} per minute",
        )
    if (
        principal_id
        and per_principal > 0
        and not _count_in_window(
            dynamodb, table, f"principal#{principal_id}", limit=per_principal, now_s=now_s
        )
    ):
        return Refusal(
            "principal_rate",
            f"too many requests: each user may send {per_principal} per minute",
        )
    return None


@dataclass(frozen=True)
class ConnectionLimits:
    """The message handler's limits, bound to the connections table."""

    dynamodb: Any
    table: str
    per_connection: int
    per_principal: int
    max_streams: int
    connection_ttl_s: int

    def admit(self, connection_id: str, principal_id: str | None, now_s: int) -> Refusal | None:
        """Count the request, then take a stream slot; a Refusal when any limit is reached."""
        refusal = count_request(
            self.dynamodb,
            self.table,
            connection_id=connection_id,
            principal_id=principal_id,
            per_connection=self.per_connection,
            per_principal=self.per_principal,
            now_s=now_s,
        )
        return refusal or acquire_stream(
            self.dynamodb,
            self.table,
            connection_id=connection_id,
            limit=self.max_streams,
            now_s=now_s,
            expires_at=now_s + self.connection_ttl_s,
        )

    def cancel(self, connection_id: str) -> None:
        """Give back the slot of a request that was admitted but never published."""
        if self.max_streams > 0:
            release_stream(self.dynamodb, self.table, connection_id)
