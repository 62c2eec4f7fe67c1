"""The DynamoDB connections table: one item per open WebSocket connection, expiring with it."""

from __future__ import annotations

from typing import Any

from ..core.dynamo import Table


def add_connection(
    dynamodb: Any,
    table: str,
    *,
    connection_id: str,
    connected_at_ms: int,
    source_ip: str | None,
    ttl_seconds: int,
    principal_id: str | None = None,
) -> None:
    """Record a new connection. ``expiresAt`` is when API Gateway will have closed it anyway."""
    Table(dynamodb, table).put(
        {
            "connectionId": connection_id,
            "connectedAt": connected_at_ms,
            "expiresAt": connected_at_ms // 1000 + ttl_seconds,
            "sourceIp": source_ip or None,
            "principalId": principal_id or None,
        }
    )


def remove_connection(dynamodb: Any, table: str, connection_id: str) -> None:
    Table(dynamodb, table).delete({"connectionId": connection_id})
