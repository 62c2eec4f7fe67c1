"""Data access for request records: every DynamoDB read and write of a record, one call each.

What the calls mean (who may claim, when a lease is dead) is ``lifecycle``'s to decide; this
module only says what each write changes and on what condition.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from boto3.dynamodb.conditions import Attr

from ..core.dynamo import ConditionFailed, Table
from ..core.envelope import Address
from .record import Request, Status, address_item, item_key

POLLED = (
    "rid",
    "status",
    "connectionId",
    "domainName",
    "stage",
    "attach",
    "afterSeq",
    "cancelRequested",
    "resumable",
    "alias",
)
"""What the watcher reads several times a second: only what a cancel or a resume changes."""


def final_json(frame: dict[str, Any] | None) -> str | None:
    return None if frame is None else json.dumps(frame, ensure_ascii=False)


class RequestStore:
    """The request records of one frames table."""

    def __init__(self, dynamodb: Any, table: str, *, clock: Callable[[], float] = time.time):
        self.table = Table(dynamodb, table)
        self.clock = clock

    def now(self) -> int:
        return int(self.clock())

    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    def read(self, key: str, *, polled: bool = False) -> Request | None:
        """The record (or, ``polled``, the few fields the watcher needs); None when absent."""
        item = self.table.get(item_key(key), attributes=POLLED if polled else ())
        return None if item is None else Request.from_item(item)

    def create(self, key: str, fields: dict[str, Any]) -> Request | None:
        """Write a new record: None once written, else the live record that holds the key
        (DynamoDB deletes expired items lazily, so an expired one counts as absent)."""
        try:
            self.table.put(
                {**item_key(key), **fields},
                condition=Attr("requestId").not_exists() | Attr("expiresAt").lt(self.now()),
            )
        except ConditionFailed as taken:
            return Request.from_item(taken.old or {"status": Status.QUEUED.value})
        return None

    def delete(self, key: str) -> None:
        self.table.delete(item_key(key))

    def take(
        self, key: str, *, status: Status, fields: dict[str, Any], defaults: dict[str, Any]
    ) -> Request:
        """Move a queued (or absent) record to ``status``, setting ``fields``, and ``defaults``
        where the record has none. ConditionFailed, with the record, when it is neither."""
        item = self.table.update(
            item_key(key),
            set={"status": status.value, **fields},
            set_if_absent=defaults,
            condition=Attr("requestId").not_exists() | Attr("status").eq(Status.QUEUED.value),
        )
        return Request.from_item(item)

    def take_over(self, key: str, lease_until_ms: int, fields: dict[str, Any]) -> Request:
        """Of all the callers that find the same dead lease, exactly one wins this write: the
        record becomes failed. ConditionFailed for the others."""
        item = self.table.update(
            item_key(key),
            set={"status": Status.FAILED.value, **fields},
            remove=("leaseUntil",),
            condition=Attr("status").eq(Status.STREAMING.value)
            & Attr("leaseUntil").eq(lease_until_ms),
        )
        return Request.from_item(item)

    def renew(self, key: str, lease_until_ms: int) -> Request | None:
        """Extend the lease of a record that streams; its state, or None when it has ended."""
        try:
            item = self.table.update(
                item_key(key),
                set={"leaseUntil": lease_until_ms},
                condition=Attr("status").eq(Status.STREAMING.value),
            )
        except ConditionFailed:
            return None
        return Request.from_item(item)

    def move(
        self, key: str, seen: Request, address: Address, after_seq: int, alias: str | None = None
    ) -> bool:
        """Point the record at ``address`` (its frames to carry ``alias`` as their requestId, if
        given), unless it changed since ``seen`` was read."""
        moved = {**address_item(address), "afterSeq": after_seq, "attach": seen.attach + 1}
        try:
            self.table.update(
                item_key(key),
                set={**moved, "alias": alias},
                condition=Attr("attach").eq(seen.attach) & Attr("status").eq(seen.status.value),
            )
        except ConditionFailed:
            return False
        return True

    def settle(
        self,
        key: str,
        *,
        status: Status,
        attach: int,
        last_seq: int,
        final: dict[str, Any] | None,
        resumable_until: int,
    ) -> bool:
        """Record how the answer ended. False when a client resumed it since ``attach``: the
        caller must move the answer to that client first, then settle again."""
        fields: dict[str, Any] = {
            "status": status.value,
            "lastSeq": last_seq,
            "resumableUntil": resumable_until,
        }
        if final is not None:
            fields["final"] = final_json(final)
        try:
            self.table.update(
                item_key(key),
                set=fields,
                remove=("leaseUntil",),
                condition=Attr("attach").eq(attach),
            )
        except ConditionFailed:
            return False
        return True

    def mark_replayed(self, key: str, attach: int) -> bool:
        """Exactly one delivery replays a given resume; False for a duplicate or a stale one."""
        try:
            self.table.update(
                item_key(key),
                set={"replayed": attach},
                condition=Attr("attach").eq(attach)
                & (Attr("replayed").not_exists() | Attr("replayed").lt(attach)),
            )
        except ConditionFailed:
            return False
        return True
