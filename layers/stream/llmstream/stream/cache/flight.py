"""The cache in front of a provider: a hit is streamed from storage, an identical request that
is streaming now is followed, and anything else calls the model while its answer is recorded.

Each is a ChunkStream, so the answer loop (``streaming``), the sender, the relay and both wire
protocols treat a cached or followed answer as one more model: the frames a client gets are
made the same way, numbered in the same gapless ``seq`` space.

What a follower gets when the stream it follows is given up (its client cancelled or left, the
model failed, the invocation died): if nothing was passed on yet, a fresh attempt (it leads, or
follows whoever leads now); otherwise an ``llm_error``, since its client already holds part of
an answer that will not be finished.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from ...core.observability import logger
from ..providers.base import Chunk, ChunkStream, Ending, LLMError, LLMTimeout, Provider
from ..streaming import normalise_finish_reason
from .key import cache_key
from .store import ABANDONED, COMPLETE, PART_BYTES, CacheStore, Entry

HIT, MISS, COALESCED = "hit", "miss", "coalesced"
"""What a request's answer came from: storage, the model, or another request's stream."""

INTERRUPTED = (
    "the identical request whose answer this one shared was interrupted; send the prompt again"
)


class CachingProvider:
    """``inner`` behind the response cache, for the requests of one scope (``cache_scope``).

    ``outcome`` says what the last ``stream()`` came to: HIT, MISS or COALESCED.
    """

    def __init__(
        self,
        inner: Provider,
        store: CacheStore,
        *,
        scope: str,
        ttl_seconds: int,
        lease_seconds: float,
        poll_interval: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.inner = inner
        self.name = inner.name
        self.store = store
        self.scope = scope
        self.ttl_seconds = ttl_seconds
        self.lease_seconds = lease_seconds
        self.poll_interval = poll_interval
        self.clock = clock
        self.outcome: str | None = None

    def stream(
        self, messages: list[dict[str, str]], *, model: str, max_tokens: int, read_timeout: float
    ) -> ChunkStream:
        key = cache_key(
            self.scope,
            provider=self.inner.name,
            model=model,
            messages=messages,
            max_tokens=max_tokens,
        )
        call = _Call(messages, model, max_tokens, read_timeout)
        try:
            return self.open(key, call)
        except LLMError:
            raise
        except Exception:  # the cache is an optimisation: without it, the model still answers
            logger.warning("the response cache failed: calling the model without it")
            self.outcome = MISS
            return call.model(self.inner)

    def open(self, key: str, call: _Call) -> ChunkStream:
        """The stream for ``key`` now: stored, followed, or the model's (recorded)."""
        while True:
            now = self.clock()
            entry = self.store.read(key)
            if entry.hit(now):
                self.outcome = HIT
                return Stored(entry)
            if entry.live(now):
                self.outcome = COALESCED
                return Following(self, key, call, entry)
            flight, expires_at = uuid.uuid4().hex, int(now + self.ttl_seconds)
            lease_until = now + self.lease_seconds
            if self.store.lead(
                key, flight, now=int(now), lease_until=int(lease_until), expires_at=expires_at
            ):
                self.outcome = MISS
                try:
                    model_stream = call.model(self.inner)
                except Exception:
                    self.store.abandon(key, flight)
                    raise
                return Recording(
                    model_stream, self, key, flight, expires_at=expires_at, lease_until=lease_until
                )
            # Another request took the key between our read and our write: look again.


@dataclass(frozen=True)
class _Call:
    """The model call a request makes if it has to."""

    messages: list[dict[str, str]]
    model_id: str
    max_tokens: int
    read_timeout: float

    def model(self, provider: Provider) -> ChunkStream:
        return provider.stream(
            self.messages,
            model=self.model_id,
            max_tokens=self.max_tokens,
            read_timeout=self.read_timeout,
        )


def _chunk(part: dict[str, Any]) -> Chunk:
    if part.get("kind") == "reasoning":
        return Chunk(reasoning=part.get("text", ""))
    return Chunk(text=part.get("text", ""))


def _last(head: dict[str, Any]) -> Chunk:
    """The chunk that ends a stored or followed answer: how it ended and its original usage."""
    return Chunk(
        finish_reason=head.get("finishReason"),
        input_tokens=head.get("inputTokens"),
        output_tokens=head.get("outputTokens"),
    )


class Stored:
    """A hit: the stored answer, at once, then its end as the model gave it."""

    cached = True

    def __init__(self, entry: Entry) -> None:
        assert entry.head is not None
        self.entry = entry

    def __iter__(self) -> Iterator[Chunk]:
        assert self.entry.head is not None
        for part in self.entry.parts:
            yield _chunk(part)
        yield _last(self.entry.head)

    def close(self) -> None:
        pass


class Recording:
    """The model's stream, passed on unchanged while it is written to the cache in parts:
    at once for the first text, then every poll interval, or PART_BYTES, or when the kind
    (text or reasoning) changes. An answer that ends with ``stop`` is marked complete; any other
    end, or a close before the end, gives the key up."""

    def __init__(
        self,
        stream: ChunkStream,
        cache: CachingProvider,
        key: str,
        flight: str,
        *,
        expires_at: int,
        lease_until: float,
    ) -> None:
        self.stream = stream
        self.cache = cache
        self.key = key
        self.flight = flight
        self.expires_at = expires_at
        self.parts = 0
        self.kind = "text"
        self.buffer: list[str] = []
        self.buffered = 0
        self.flushed_at = 0.0  # the first text goes out at once
        self.lease_until = lease_until  # as the head was written
        self.recording = True
        self.ended = False
        abort = getattr(stream, "abort", None)
        if abort is not None:
            self.abort = abort

    def __iter__(self) -> Iterator[Chunk]:
        ending = Ending()
        for chunk in self.stream:
            if chunk.reasoning:
                self._take("reasoning", chunk.reasoning)
            if chunk.text:
                self._take("text", chunk.text)
            ending.take(chunk)
            yield chunk
        self._flush()
        self.ended = True
        if self.recording:
            end = {
                "finishReason": normalise_finish_reason(ending.finish_reason),
                "inputTokens": ending.input_tokens,
                "outputTokens": ending.output_tokens,
            }
            store = self.cache.store
            self._quietly(store.complete, self.key, self.flight, parts=self.parts, end=end)

    def close(self) -> None:
        try:
            self.stream.close()
        finally:
            if not self.ended and self.recording:
                self._quietly(self.cache.store.abandon, self.key, self.flight)
                self.recording = False

    def _take(self, kind: str, text: str) -> None:
        if kind != self.kind:
            self._flush()
            self.kind = kind
        self.buffer.append(text)
        self.buffered += len(text.encode("utf-8"))
        now = self.cache.clock()
        if self.buffered >= PART_BYTES or now - self.flushed_at >= self.cache.poll_interval:
            self._flush()

    def _flush(self) -> None:
        if not self.buffer or not self.recording:
            self.buffer, self.buffered = [], 0
            return
        text, kind = "".join(self.buffer), self.kind
        self.buffer, self.buffered = [], 0
        self.flushed_at = now = self.cache.clock()
        store = self.cache.store
        for piece in _pieces(text, PART_BYTES):
            part = self.parts
            self.parts += 1
            self._quietly(
                store.write_part,
                self.key,
                self.flight,
                part,
                kind,
                piece,
                expires_at=self.expires_at,
            )
        if self.recording and self.lease_until - now < self.cache.lease_seconds / 2:
            self.lease_until = now + self.cache.lease_seconds
            if not self._quietly(store.renew, self.key, self.flight, int(self.lease_until)):
                self.recording = False  # the key is not ours any more: stop writing to it

    def _quietly(self, write: Callable[..., object], *args: Any, **kwargs: Any) -> bool:
        """A cache write; one that fails stops the recording, never the answer."""
        if not self.recording:
            return False
        try:
            return write(*args, **kwargs) is not False
        except Exception:
            logger.warning("could not write to the response cache: this answer is not kept")
            self.recording = False
            return False


class Following:
    """An identical request's stream, followed part by part as its recording lands, then its
    end. Reads once per poll interval; a stream that sends nothing for ``read_timeout`` is
    stalled, as a model would be."""

    coalesced = True

    def __init__(self, cache: CachingProvider, key: str, call: _Call, entry: Entry) -> None:
        assert entry.head is not None
        self.cache = cache
        self.key = key
        self.call = call
        self.entry = entry
        self.flight = entry.head.get("flight")
        self.stopped = threading.Event()
        self.taken_over: ChunkStream | None = None

    @property
    def cached(self) -> bool:
        return bool(getattr(self.taken_over, "cached", False))

    def __iter__(self) -> Iterator[Chunk]:
        cache, entry, next_part = self.cache, self.entry, 0
        progress_at = cache.clock()
        while not self.stopped.is_set():
            for part in entry.parts:
                if part["part"] != next_part:
                    break  # written out of order: wait for the gap to fill
                yield _chunk(part)
                next_part += 1
                progress_at = cache.clock()
            head, now = entry.head, cache.clock()
            if head is not None and head.get("flight") == self.flight:
                if head.get("state") == COMPLETE and next_part >= head.get("parts", 0):
                    yield _last(head)
                    return
                ended = head.get("state") == ABANDONED or not entry.live(now)
            else:
                ended = True  # expired, or another flight took the key
            if ended:
                if next_part:
                    raise LLMError(INTERRUPTED)
                logger.info("the answer followed was given up before any text: trying afresh")
                self.taken_over = cache.open(self.key, self.call)
                self.coalesced = isinstance(self.taken_over, Following)
                yield from self.taken_over
                return
            if now - progress_at > self.call.read_timeout:
                raise LLMTimeout(
                    f"the identical request this one follows sent nothing for "
                    f"{self.call.read_timeout:g} s"
                )
            if self.stopped.wait(cache.poll_interval):
                return
            entry = cache.store.read(self.key, next_part)

    def abort(self) -> None:
        self.stopped.set()
        abort = getattr(self.taken_over, "abort", None)
        if abort is not None:
            abort()

    def close(self) -> None:
        self.stopped.set()
        if self.taken_over is not None:
            self.taken_over.close()


def _pieces(text: str, limit: int) -> Iterator[str]:
    """``text`` in runs of at most ``limit`` bytes of UTF-8, cut between characters."""
    while text:
        piece = text.encode("utf-8")[:limit].decode("utf-8", errors="ignore") or text[0]
        yield piece
        text = text[len(piece) :]
