"""The DynamoDB connections table: one item per open WebSocket connection, expiring with it."""

from __future__ import annotations

from typing import Any


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
    item: dict[str, Any] = {
        "connectionId": {"S": connection_id},
        "connectedAt": {"N": str(connected_at_ms)},
        "expiresAt": {"N": str(connected_at_ms // 1000 + ttl_seconds)},
    }
    if source_ip:
        item["sourceIp"] = {"S": source_ip}
    if principal_id:
        item["principalId"] = {"S": principal_id}
    dynamodb.put_item(TableName=table, Item=item)


def remove_connection(dynamodb: Any, table: str, connection_id: str) -> None:
    dynamodb.delete_item(TableName=table, Key={"connectionId": {"S": connection_id}})


def get_connection(dynamodb: Any, table: str, connection_id: str) -> dict[str, Any] | None:
    item = dynamodb.get_item(
        TableName=table, Key={"connectionId": {"S": connection_id}}, ConsistentRead=True
    ).get("Item")
    if item is None:
        return None
    return {key: next(iter(value.values())) for key, value in item.items()}
