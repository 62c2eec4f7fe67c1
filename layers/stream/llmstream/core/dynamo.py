"""DynamoDB access for the data-access classes: plain Python values in and out, through boto3's
own TypeSerializer/TypeDeserializer and condition builder, on the low-level client that tests
pass in (moto-backed or stubbed).

boto3 builds condition expressions but no update expressions; ``Table.update`` writes the
SET/REMOVE clauses, with placeholders for every name and value.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from decimal import Decimal
from typing import Any

from boto3.dynamodb.conditions import ConditionBase, ConditionExpressionBuilder
from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from botocore.exceptions import ClientError

_serializer = TypeSerializer()
_deserializer = TypeDeserializer()


def conditional_failed(exc: ClientError) -> bool:
    """True when a write was refused by its condition (a lost race, not a fault)."""
    return exc.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException"


def to_item(values: Mapping[str, Any]) -> dict[str, Any]:
    """A DynamoDB item from plain values; None values are left out."""
    return {k: _serializer.serialize(v) for k, v in values.items() if v is not None}


def from_item(item: Mapping[str, Any]) -> dict[str, Any]:
    """Plain values from a DynamoDB item; whole numbers come back as int."""
    return {k: _plain(_deserializer.deserialize(v)) for k, v in item.items()}


def _plain(value: Any) -> Any:
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


class ConditionFailed(Exception):
    """The write's condition did not hold; ``old`` is the item as it was (when DynamoDB says)."""

    def __init__(self, old: dict[str, Any] | None) -> None:
        super().__init__("the condition did not hold")
        self.old = old


class Table:
    """One table, spoken to in plain values."""

    def __init__(self, client: Any, name: str) -> None:
        self.client = client
        self.name = name

    def get(self, key: Mapping[str, Any], *, attributes: Iterable[str] = ()) -> dict | None:
        kwargs: dict[str, Any] = {"TableName": self.name, "Key": to_item(key)}
        if attributes:
            names = {f"#p{i}": a for i, a in enumerate(attributes)}
            kwargs["ProjectionExpression"] = ", ".join(names)
            kwargs["ExpressionAttributeNames"] = names
        item = self.client.get_item(ConsistentRead=True, **kwargs).get("Item")
        return None if item is None else from_item(item)

    def put(self, values: Mapping[str, Any], *, condition: ConditionBase | None = None) -> None:
        """Write the item; ConditionFailed when ``condition`` does not hold."""
        self._write("put_item", {"Item": to_item(values)}, condition)

    def update(
        self,
        key: Mapping[str, Any],
        *,
        set: Mapping[str, Any] | None = None,
        set_if_absent: Mapping[str, Any] | None = None,
        add: Mapping[str, int] | None = None,
        remove: Iterable[str] = (),
        condition: ConditionBase | None = None,
    ) -> dict[str, Any]:
        """SET (or, for ``set_if_absent``, set where missing), ADD to numbers and REMOVE
        attributes; returns the item as it is now. ConditionFailed, with the old item, when
        ``condition`` does not hold."""
        names: dict[str, str] = {}
        values: dict[str, Any] = {}
        clauses: list[str] = []
        # A None value means "leave it out", as in to_item.
        set = {k: v for k, v in (set or {}).items() if v is not None}
        set_if_absent = {k: v for k, v in (set_if_absent or {}).items() if v is not None}
        for i, (attr, value) in enumerate(set.items()):
            names[f"#s{i}"], values[f":s{i}"] = attr, value
            clauses.append(f"#s{i} = :s{i}")
        for i, (attr, value) in enumerate(set_if_absent.items()):
            names[f"#i{i}"], values[f":i{i}"] = attr, value
            clauses.append(f"#i{i} = if_not_exists(#i{i}, :i{i})")
        expression = f"SET {', '.join(clauses)}" if clauses else ""
        added = []
        for i, (attr, amount) in enumerate((add or {}).items()):
            names[f"#a{i}"], values[f":a{i}"] = attr, amount
            added.append(f"#a{i} :a{i}")
        if added:
            expression += f" ADD {', '.join(added)}"
        removed = []
        for i, attr in enumerate(remove):
            names[f"#r{i}"] = attr
            removed.append(f"#r{i}")
        if removed:
            expression += f" REMOVE {', '.join(removed)}"
        kwargs: dict[str, Any] = {
            "Key": to_item(key),
            "UpdateExpression": expression.strip(),
            "ExpressionAttributeNames": names,
            "ReturnValues": "ALL_NEW",
        }
        if values:
            kwargs["ExpressionAttributeValues"] = to_item(values)
        response = self._write("update_item", kwargs, condition)
        return from_item(response.get("Attributes", {}))

    def delete(self, key: Mapping[str, Any]) -> None:
        self.client.delete_item(TableName=self.name, Key=to_item(key))

    def query(
        self, key_condition: ConditionBase, *, forward: bool = True, page_size: int | None = None
    ) -> Iterator[dict[str, Any]]:
        """Every item the key condition selects, in key order (``forward``) or reversed, page
        after page of ``page_size``; a caller that stops early reads no further page."""
        expression = ConditionExpressionBuilder().build_expression(key_condition, True)
        kwargs: dict[str, Any] = {
            "TableName": self.name,
            "KeyConditionExpression": expression.condition_expression,
            "ExpressionAttributeNames": expression.attribute_name_placeholders,
            "ExpressionAttributeValues": to_item(expression.attribute_value_placeholders),
            "ConsistentRead": True,
            "ScanIndexForward": forward,
        }
        if page_size is not None:
            kwargs["Limit"] = page_size
        while True:
            page = self.client.query(**kwargs)
            yield from (from_item(item) for item in page.get("Items", []))
            if "LastEvaluatedKey" not in page:
                return
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def _write(
        self, operation: str, kwargs: dict[str, Any], condition: ConditionBase | None
    ) -> dict[str, Any]:
        kwargs = {"TableName": self.name, **kwargs}
        if condition is not None:
            # The builder's placeholders (#n0, :v0) never collide with ours (#s0, #i0, #a0, #r0).
            built = ConditionExpressionBuilder().build_expression(condition)
            kwargs["ConditionExpression"] = built.condition_expression
            kwargs["ExpressionAttributeNames"] = {
                **kwargs.get("ExpressionAttributeNames", {}),
                **built.attribute_name_placeholders,
            }
            values = to_item(built.attribute_value_placeholders)
            if values:
                kwargs["ExpressionAttributeValues"] = {
                    **kwargs.get("ExpressionAttributeValues", {}),
                    **values,
                }
            kwargs["ReturnValuesOnConditionCheckFailure"] = "ALL_OLD"
        if not kwargs.get("ExpressionAttributeNames"):
            kwargs.pop("ExpressionAttributeNames", None)
        try:
            return dict(getattr(self.client, operation)(**kwargs))
        except ClientError as exc:
            if condition is not None and conditional_failed(exc):
                old = exc.response.get("Item")
                raise ConditionFailed(None if old is None else from_item(old)) from None
            raise
