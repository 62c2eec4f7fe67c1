"""Cancels: a live request's record flagged, or, for a request not registered yet, a cancel held
in its place for PENDING_CANCEL_SECONDS. API Gateway runs one connection's messages in no fixed
order, so a cancel sent right behind its sendMessage may be handled first; the request it was
meant for then starts cancelled.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from boto3.dynamodb.conditions import Attr

from ..core.dynamo import ConditionFailed
from .record import Request, Status, item_key

if TYPE_CHECKING:
    from .lifecycle import NewRequest
    from .store import RequestStore

PENDING_CANCEL_SECONDS = 30
"""How long a cancel that came before its sendMessage waits for it."""


class Cancels:
    """The cancels of one frames table's request records."""

    def __init__(self, store: RequestStore) -> None:
        self.store = store

    def cancel(self, key: str, *, principal_id: str | None, connection_id: str) -> Request | None:
        """Flag the request cancelled: the request as it is now; None when there is none the
        caller may cancel. With no record at all yet, hold the cancel for the request to come."""
        for _ in range(2):  # a record may appear between the two writes: then flag it
            done, old = self.flag_cancelled(
                key, principal_id=principal_id, connection_id=connection_id
            )
            if done:
                return old
            if old is not None and old.expires_at >= self.store.now():
                return None  # there is one, but not the caller's, or over
            held = {
                "status": Status.QUEUED.value,
                "connectionId": connection_id,
                "owner": principal_id,
                "expiresAt": self.store.now() + PENDING_CANCEL_SECONDS,
            }
            if self.hold_cancel(key, held):
                return None
        return None

    def register_over_held(self, key: str, fields: dict[str, Any], new: NewRequest) -> bool:
        """Register a request over the cancel held for it: by its connection, or principal."""
        whose = (
            Attr("owner").eq(new.owner)
            if new.owner
            else Attr("connectionId").eq(new.address.connection_id)
        )
        return self.create_over_held_cancel(key, fields, whose)

    def flag_cancelled(
        self, key: str, *, principal_id: str | None, connection_id: str
    ) -> tuple[bool, Request | None]:
        """Flag a live record cancelled: (True, the record now); (False, as it was, or None)
        when there is none the caller may cancel. With auth on the caller must be its principal;
        with auth off, its connection, or anyone who knows the request id of a resumable answer
        (who could resume it too: the same secret)."""
        if principal_id:
            whose = Attr("owner").eq(principal_id)
        else:
            whose = Attr("connectionId").eq(connection_id) | Attr("resumable").eq(True)
        try:
            now = self.store.table.update(
                item_key(key),
                set={"cancelRequested": True},
                condition=Attr("status").is_in([Status.QUEUED.value, Status.STREAMING.value])
                & Attr("expiresAt").gt(self.store.now())
                & Attr("pendingCancel").not_exists()
                & whose,
            )
        except ConditionFailed as refused:
            return False, None if refused.old is None else Request.from_item(refused.old)
        return True, Request.from_item(now)

    def hold_cancel(self, key: str, fields: dict[str, Any]) -> bool:
        """Record a cancel for a request not registered yet (its sendMessage may still be on its
        way: API Gateway runs one connection's messages in no fixed order). False when a record
        came first: registered meanwhile, or a cancel held already."""
        try:
            self.store.table.put(
                {**item_key(key), **fields, "pendingCancel": True, "cancelRequested": True},
                condition=Attr("requestId").not_exists() | Attr("expiresAt").lt(self.store.now()),
            )
        except ConditionFailed:
            return False
        return True

    def create_over_held_cancel(self, key: str, fields: dict[str, Any], whose: Any) -> bool:
        """Register a request whose cancel came first: it starts cancelled."""
        try:
            self.store.table.put(
                {**item_key(key), **fields, "cancelRequested": True},
                condition=Attr("pendingCancel").eq(True)
                & Attr("expiresAt").gt(self.store.now())
                & whose,
            )
        except ConditionFailed:
            return False
        return True
