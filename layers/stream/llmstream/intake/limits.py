"""Abuse limits, checked by the message handler before it publishes: requests per minute per
connection and per principal, and streams in flight per connection.

The connection's two limits live on its item in the connections table (``rate<minute>`` counts
the current fixed one-minute window, ``activeStreams`` the stream slots) and are taken in one
conditional update, so concurrent messages cannot both take the last slot, and a refused
message changes nothing. The per-principal counter is an item of its own (``rate#...``,
expiring through the table's TTL), counted only with auth on.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

from boto3.dynamodb.conditions import Attr

from ..core.dynamo import ConditionFailed, Table
from ..core.observability import logger
from ..requests.record import Request
from ..requests.slots import STALE_SLOT_SECONDS, Refusal, release_once, release_stream

WINDOW_SECONDS = 60
RATE_KEY_PREFIX = "rate#"
"""Connection ids never contain '#', so a rate counter can never be mistaken for a connection."""


def _window_attribute(now_s: int, ago: int = 0) -> str:
    return f"rate{now_s // WINDOW_SECONDS - ago}"


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
        """Count the request and take a stream slot; a Refusal, costing nothing, when any limit
        is reached."""
        refusal = self._take(connection_id, now_s, slot=self.max_streams > 0)
        if refusal is None and not self._count_principal(principal_id, now_s):
            self.give_back(connection_id, now_s)
            refusal = self._principal_refusal()
        return refusal

    def count(self, connection_id: str, principal_id: str | None, now_s: int) -> Refusal | None:
        """Count a request that takes no stream slot (a resume)."""
        refusal = self._take(connection_id, now_s, slot=False)
        if refusal is None and not self._count_principal(principal_id, now_s):
            self._undo(connection_id, now_s, slot=False)
            refusal = self._principal_refusal()
        return refusal

    def give_back_cancelled(self, frames_table: str, key: str, cancelled: Request) -> None:
        """A cancelled answer gives its stream slot back at once, so that a client that stops
        an answer and sends its next prompt straight away is not refused. The stream function,
        ending the answer a moment later, then gives back nothing (release_once)."""
        if self.max_streams <= 0 or not cancelled.slot_connection:
            return
        try:
            release_once(
                self.dynamodb,
                frames_table=frames_table,
                key=key,
                connections_table=self.table,
                connection_id=cancelled.slot_connection,
            )
        except Exception:  # the stream function gives it back when the answer ends
            logger.exception("could not give back the stream slot of a cancelled answer")

    def give_back(self, connection_id: str, now_s: int) -> None:
        """Undo ``admit`` for a request that was admitted but never published."""
        self._undo(connection_id, now_s, slot=self.max_streams > 0)

    # ------------------------------------------------------------------ the connection's item

    def _take(self, connection_id: str, now_s: int, *, slot: bool) -> Refusal | None:
        counted = self.per_connection > 0
        if not counted and not slot:
            return None
        window = _window_attribute(now_s)
        sets: dict[str, Any] = {"slotTakenAt": now_s} if slot else {}
        condition = None
        if counted:
            condition = Attr(window).not_exists() | Attr(window).lt(self.per_connection)
        if slot:
            free = Attr("activeStreams").not_exists() | Attr("activeStreams").lt(self.max_streams)
            condition = free if condition is None else condition & free
        table = Table(self.dynamodb, self.table)
        try:
            table.update(
                {"connectionId": connection_id},
                set=sets,
                set_if_absent={"expiresAt": now_s + self.connection_ttl_s},
                add={**({window: 1} if counted else {}), **({"activeStreams": 1} if slot else {})},
                # Windows before the last one are done with: they go as the next one comes.
                remove=(_window_attribute(now_s, 2),) if counted else (),
                condition=condition,
            )
            return None
        except ConditionFailed as refused:
            old = refused.old or {}
        if counted and old.get(window, 0) >= self.per_connection:
            return Refusal(
                "connection_rate",
                f"too many requests: this connection may send {self.per_connection} per minute",
            )
        return self._reclaim_stale_slot(table, connection_id, now_s, counted)

    def _reclaim_stale_slot(
        self, table: Table, connection_id: str, now_s: int, counted: bool
    ) -> Refusal | None:
        """Every slot is taken. A slot whose stream never ran (its event went to the dead-letter
        queue unprocessed) would be held until the connection closes; slots all taken longer ago
        than STALE_SLOT_SECONDS are presumed lost and reset."""
        window = _window_attribute(now_s)
        stale = Attr("slotTakenAt").lt(now_s - STALE_SLOT_SECONDS)
        if counted:
            stale = stale & (Attr(window).not_exists() | Attr(window).lt(self.per_connection))
        try:
            table.update(
                {"connectionId": connection_id},
                set={"activeStreams": 1, "slotTakenAt": now_s},
                add={window: 1} if counted else {},
                condition=stale,
            )
            return None
        except ConditionFailed:
            plural = "answer" if self.max_streams == 1 else "answers"
            return Refusal(
                "concurrent_streams",
                f"too many answers in progress: this connection may stream {self.max_streams} "
                f"{plural} at once; wait for one to end",
            )

    def _undo(self, connection_id: str, now_s: int, *, slot: bool) -> None:
        if self.per_connection > 0:
            window = _window_attribute(now_s)
            with contextlib.suppress(ConditionFailed):  # a new minute began: nothing to undo
                Table(self.dynamodb, self.table).update(
                    {"connectionId": connection_id}, add={window: -1}, condition=Attr(window).gt(0)
                )
        if slot:
            release_stream(self.dynamodb, self.table, connection_id)

    # ------------------------------------------------------------------ the principal's item

    def _count_principal(self, principal_id: str | None, now_s: int) -> bool:
        """Count one request in the principal's current window; False when it is full."""
        if not principal_id or self.per_principal <= 0:
            return True
        window = now_s // WINDOW_SECONDS
        try:
            Table(self.dynamodb, self.table).update(
                {"connectionId": f"{RATE_KEY_PREFIX}principal#{principal_id}#{window}"},
                set={"expiresAt": (window + 2) * WINDOW_SECONDS},
                add={"requests": 1},
                condition=Attr("requests").not_exists() | Attr("requests").lt(self.per_principal),
            )
        except ConditionFailed:
            return False
        return True

    def _principal_refusal(self) -> Refusal:
        return Refusal(
            "principal_rate",
            f"too many requests: each user may send {self.per_principal} per minute",
        )
