"""Where the AI SDK transport's requests are found again: a chat's running answer, by chat id (a
resume names the chat, not the request), and a resumed request by the requestId it was resumed
under (an abort names that one). Each is a small pointer item beside the records, under the
owner's key space, with the record's lifetime.
"""

from __future__ import annotations

from .record import item_key, owner_key
from .store import RequestStore

CHAT_SEQ = -2
"""A chat pointer's sort key: beside a record (-1) and its stored frames (0 and up), so that a
chat id can never be mistaken for a request id."""
ALIAS_SEQ = -3


class Chats:
    """The chat and alias pointers of one frames table."""

    def __init__(self, store: RequestStore, ttl_seconds: int) -> None:
        self.store = store
        self.ttl_seconds = ttl_seconds

    def point(self, principal_id: str | None, chat_id: str, request_key: str) -> None:
        """The chat's answer is the request ``request_key`` from now on."""
        self._put(owner_key(principal_id, chat_id), CHAT_SEQ, request_key)

    def running(self, principal_id: str | None, chat_id: str) -> str | None:
        """The key of the chat's latest request, if it has one."""
        return self._get(owner_key(principal_id, chat_id), CHAT_SEQ)

    def alias(self, principal_id: str | None, request_id: str, request_key: str) -> None:
        """``request_id`` (a resume's) names the request ``request_key`` from now on."""
        self._put(owner_key(principal_id, request_id), ALIAS_SEQ, request_key)

    def resolve(self, principal_id: str | None, request_id: str) -> str | None:
        """The key of the request that ``request_id`` was resumed as, if it was."""
        return self._get(owner_key(principal_id, request_id), ALIAS_SEQ)

    def _put(self, key: str, seq: int, request_key: str) -> None:
        item = {**item_key(key, seq), "points": request_key}
        item["expiresAt"] = self.store.now() + self.ttl_seconds
        self.store.table.put(item)

    def _get(self, key: str, seq: int) -> str | None:
        item = self.store.table.get(item_key(key, seq))
        if item is None or item.get("expiresAt", 0) < self.store.now():
            return None
        return str(item["points"])
