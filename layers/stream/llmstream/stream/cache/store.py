"""The cache table's items, and every DynamoDB call the cache makes.

One key holds one answer: its parts (``part`` 0, 1, ... in order, each a run of the answer's
text or reasoning of at most PART_BYTES) and, last in key order, its head (``part`` HEAD), which
says whose stream the answer is (``flight``), how far it got (``state``) and how it ended. A
follower's one Query (``part >= next``) so reads the new parts and the head together.

Items expire with the entry (``expiresAt``, DynamoDB's TTL); reads check it too, since TTL
deletes late. Parts of a stream that was given up stay until they expire or a later stream of
the same key overwrites them: each carries its flight, and only the head's flight counts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from boto3.dynamodb.conditions import Attr, Key

from ...core.dynamo import ConditionFailed, Table

HEAD = 2**31 - 1
"""The head's ``part``: after every part, so that a Query from any part reaches it."""
PART_BYTES = 8 * 1024
"""Most of the answer's UTF-8 one part holds: well inside a 32 KB frame and a 400 KB item."""

STREAMING, COMPLETE, ABANDONED = "streaming", "complete", "abandoned"
"""The head's states: its flight streams the answer (while its lease lasts); the answer ended
(``finishReason`` says how, and only ``stop`` is a hit); its flight gave it up."""


@dataclass
class Entry:
    """What one read of a key found: its head, if any, and the head's flight's parts in order."""

    head: dict[str, Any] | None
    parts: list[dict[str, Any]] = field(default_factory=list)

    def live(self, now: float) -> bool:
        """A flight streams it now: its lease has not run out."""
        return (
            self.head is not None
            and self.head.get("state") == STREAMING
            and self.head.get("leaseUntil", 0) > now
            and self.head.get("expiresAt", 0) > now
        )

    def hit(self, now: float) -> bool:
        """A whole answer that ended with ``stop``, not expired, every part present."""
        head = self.head
        return (
            head is not None
            and head.get("state") == COMPLETE
            and head.get("finishReason") == "stop"
            and head.get("expiresAt", 0) > now
            and [p["part"] for p in self.parts] == list(range(head.get("parts", -1)))
        )


class CacheStore:
    """The response cache table (RESPONSE_CACHE_TABLE)."""

    def __init__(self, dynamodb: Any, table: str) -> None:
        self.table = Table(dynamodb, table)

    def read(self, key: str, first_part: int = 0) -> Entry:
        """The head and the head's flight's parts from ``first_part`` on: one Query."""
        items = list(self.table.query(Key("cacheKey").eq(key) & Key("part").gte(first_part)))
        head = items.pop() if items and items[-1]["part"] == HEAD else None
        if head is None:
            return Entry(None)
        flight = head.get("flight")
        return Entry(head, [item for item in items if item.get("flight") == flight])

    def lead(self, key: str, flight: str, *, now: int, lease_until: int, expires_at: int) -> bool:
        """Make ``flight`` the key's stream, unless a live stream or a valid answer holds it."""
        free = (
            Attr("cacheKey").not_exists()
            | Attr("state").eq(ABANDONED)
            | Attr("expiresAt").lt(now)
            | (Attr("state").eq(STREAMING) & Attr("leaseUntil").lt(now))
            | (Attr("state").eq(COMPLETE) & Attr("finishReason").ne("stop"))
        )
        try:
            self.table.put(
                {
                    "cacheKey": key,
                    "part": HEAD,
                    "flight": flight,
                    "state": STREAMING,
                    "leaseUntil": lease_until,
                    "expiresAt": expires_at,
                },
                condition=free,
            )
        except ConditionFailed:
            return False
        return True

    def write_part(
        self, key: str, flight: str, part: int, kind: str, text: str, *, expires_at: int
    ) -> None:
        self.table.put(
            {
                "cacheKey": key,
                "part": part,
                "flight": flight,
                "kind": kind,
                "text": text,
                "expiresAt": expires_at,
            }
        )

    def renew(self, key: str, flight: str, lease_until: int) -> bool:
        """Extend the flight's lease; False when the key is no longer its own."""
        return self._update_own(key, flight, {"leaseUntil": lease_until})

    def complete(self, key: str, flight: str, *, parts: int, end: Mapping[str, Any]) -> bool:
        """The flight's answer ended: ``parts`` parts, and how (finishReason, usage, model)."""
        return self._update_own(key, flight, {"state": COMPLETE, "parts": parts, **end})

    def abandon(self, key: str, flight: str) -> bool:
        return self._update_own(key, flight, {"state": ABANDONED})

    def _update_own(self, key: str, flight: str, values: Mapping[str, Any]) -> bool:
        try:
            self.table.update(
                {"cacheKey": key, "part": HEAD},
                set=values,
                condition=Attr("flight").eq(flight) & Attr("state").eq(STREAMING),
            )
        except ConditionFailed:
            return False
        return True
