"""Conversation history kept by the service, for clients that send a ``conversationId``.

One item per turn in the conversations table (``turn`` = 0, 1, 2, ...): the messages the client
sent with one request and the answer it got. The stream function loads the latest turns before
calling the model, within a turn count and a token budget, oldest dropped first, and appends the
new turn before it sends ``end``, so a client that sends its next prompt on seeing ``end`` finds
it there. Keys are scoped to their owner like request ids (``record.owner_key``).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from boto3.dynamodb.conditions import Attr, Key

from ..core.dynamo import ConditionFailed, Table

MAX_ITEM_BYTES = 350 * 1024
"""Below DynamoDB's 400 KB item limit, with room for the key and attribute names."""
CHARS_PER_TOKEN = 4


def estimate_tokens(text: str) -> int:
    """A rough count (about four characters a token in English); no tokenizer is loaded."""
    return -(-len(text) // CHARS_PER_TOKEN)


@dataclass(frozen=True)
class History:
    messages: tuple[dict[str, str], ...]
    """The kept turns' messages, oldest first."""
    next_turn: int
    dropped: int = 0
    """Stored turns left out to stay within the limits."""


class Conversations:
    def __init__(
        self,
        dynamodb: Any,
        table: str,
        *,
        max_turns: int,
        max_tokens: int,
        ttl_seconds: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._table = Table(dynamodb, table)
        self.max_turns = max_turns
        self.max_tokens = max_tokens
        self.ttl_seconds = ttl_seconds
        self._clock = clock

    def load(self, key: str) -> History:
        """The latest turns that fit within ``max_turns`` and ``max_tokens``."""
        newest_first = self._table.query(
            Key("conversationId").eq(key),  # consistent: the turn written before the last `end`
            forward=False,
            page_size=max(1, self.max_turns),
        )
        items = list(itertools.islice(newest_first, self.max_turns))
        next_turn = items[0]["turn"] + 1 if items else 0
        now = int(self._clock())
        live = [i for i in items if i["expiresAt"] >= now]
        kept: list[list[dict[str, str]]] = []
        tokens = 0
        for item in live:  # newest first: the oldest are the ones dropped
            turn = [{"role": m["role"], "content": m["content"]} for m in item["messages"]]
            cost = sum(estimate_tokens(m["content"]) for m in turn)
            if tokens + cost > self.max_tokens:
                break
            kept.append(turn)
            tokens += cost
        messages = tuple(m for turn in reversed(kept) for m in turn)
        return History(messages, next_turn, dropped=len(items) - len(kept))

    def append(
        self,
        key: str,
        turn: int,
        *,
        request_id: str,
        messages: Sequence[dict[str, str]],
        answer: str,
    ) -> int:
        """Store one turn as number ``turn`` (or the next free one); returns the number used.
        A second write of the same request (a retry) finds its turn there and adds nothing."""
        stored = [dict(m) for m in messages] + [{"role": "assistant", "content": answer}]
        stored = _fit(stored)
        for _ in range(10):
            item = {
                "conversationId": key,
                "turn": turn,
                "requestId": request_id,
                "messages": stored,
                "createdAt": int(self._clock() * 1000),
                "expiresAt": int(self._clock()) + self.ttl_seconds,
            }
            try:
                self._table.put(item, condition=Attr("turn").not_exists())
                return turn
            except ConditionFailed as taken:
                existing = taken.old or self._table.get(
                    {"conversationId": key, "turn": turn}, attributes=("requestId",)
                )
            if existing and existing.get("requestId") == request_id:
                return turn
            turn += 1  # another request of this conversation took the number
        raise RuntimeError("no free turn number after ten tries")


def _fit(messages: list[dict[str, str]]) -> list[dict[str, str]]:
    """Shorten the answer (the last message) so that the item fits in DynamoDB."""
    size = sum(len(m["content"].encode("utf-8")) for m in messages)
    if size <= MAX_ITEM_BYTES:
        return messages
    answer = messages[-1]["content"].encode("utf-8")
    keep = max(0, len(answer) - (size - MAX_ITEM_BYTES))
    messages[-1] = {**messages[-1], "content": answer[:keep].decode("utf-8", errors="ignore")}
    return messages
