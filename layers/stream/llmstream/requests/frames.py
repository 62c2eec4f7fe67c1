"""A resumable answer's delta texts, kept after its record (``seq`` >= 0) so that a client that
comes back after the end can be replayed the answer: a few frames to an item (``seq`` = the
first frame's seq), written once the answer has ended.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from boto3.dynamodb.conditions import Key
from boto3.dynamodb.table import BatchWriter

from ..core.dynamo import Table, to_item
from .record import item_key

CHUNK_BYTES = 64 * 1024
"""Delta texts packed into one item, at most (a single frame may be up to 32 KB)."""


class StoredFrames:
    """The stored frames of one frames table."""

    def __init__(self, dynamodb: Any, table: str) -> None:
        self.table = Table(dynamodb, table)

    def store(
        self, key: str, texts: list[str], *, expires_at: int, kinds: list[str] | None = None
    ) -> int:
        """Write texts 0..n-1 (``kinds``: each one's frame type, ``delta`` by default, or
        ``reasoning``) as items of consecutive frames; returns the item count. boto3's
        BatchWriter sends 25 to a call and resends what DynamoDB left unprocessed."""
        count = 0
        with BatchWriter(self.table.name, self.table.client) as batch:
            for first, chunk in _chunks(texts):
                item = {**item_key(key, first), "texts": chunk, "expiresAt": expires_at}
                run = (kinds or [])[first : first + len(chunk)]
                if any(kind != "delta" for kind in run):  # an answer without reasoning: no list
                    item["reasoning"] = [i for i, kind in enumerate(run) if kind == "reasoning"]
                batch.put_item(Item=to_item(item))
                count += 1
        return count

    def load(self, key: str, after_seq: int) -> list[tuple[int, str]]:
        """Stored frames after ``after_seq``, as (seq, text), in order."""
        return [(seq, text) for seq, _, text in self.load_typed(key, after_seq)]

    def load_typed(self, key: str, after_seq: int) -> list[tuple[int, str, str]]:
        """Stored frames after ``after_seq``, as (seq, frame type, text), in order."""
        frames: list[tuple[int, str, str]] = []
        for item in self.table.query(Key("requestId").eq(key) & Key("seq").gte(0)):
            first, reasoning = item["seq"], set(item.get("reasoning", []))
            for i, text in enumerate(item.get("texts", [])):
                if first + i > after_seq:
                    frames.append((first + i, "reasoning" if i in reasoning else "delta", text))
        return frames


def _chunks(texts: list[str]) -> Iterable[tuple[int, list[str]]]:
    """(first seq, texts) runs of at most CHUNK_BYTES of UTF-8 each (and at least one text)."""
    first, size = 0, 0
    run: list[str] = []
    for seq, text in enumerate(texts):
        length = len(text.encode("utf-8", errors="surrogatepass"))
        if run and size + length > CHUNK_BYTES:
            yield first, run
            first, run, size = seq, [], 0
        run.append(text)
        size += length
    if run:
        yield first, run
