"""The small streaming interface every LLM provider implements, and its retry policy.

A provider turns messages into an iterator of Chunks that can be closed early (which closes the
HTTP stream), and, where the provider can, aborted from another thread while a read waits on a
stalled model. Failures become LLMError / LLMTimeout so the caller never sees a vendor exception.
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True)
class Chunk:
    """One piece of a model's stream. ``text`` is the answer's; ``reasoning`` is the thinking a
    reasoning model streams apart from the answer (usually all of it before the first text)."""

    text: str = ""
    reasoning: str = ""
    finish_reason: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None


@dataclass
class Ending:
    """How a model's stream ended, as far as its chunks said: the last finish reason and usage
    counts seen (a provider sends them on the last chunk or two, and a count may come alone)."""

    finish_reason: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None

    def take(self, chunk: Chunk) -> None:
        self.finish_reason = chunk.finish_reason or self.finish_reason
        if chunk.input_tokens is not None:
            self.input_tokens = chunk.input_tokens
        if chunk.output_tokens is not None:
            self.output_tokens = chunk.output_tokens


class LLMError(Exception):
    """The LLM failed; ``message`` is safe to show the client."""

    def __init__(self, message: str, *, retryable: bool = False, status: int | None = None):
        super().__init__(message)
        self.message = message
        self.retryable = retryable
        self.status = status


class LLMTimeout(LLMError):
    """The LLM sent nothing for longer than the stall timeout."""


class ChunkStream(Protocol):
    def __iter__(self) -> Iterator[Chunk]: ...

    def close(self) -> None: ...

    # Optional: ``abort()``, callable from another thread, ends a read blocked on the model.


class Provider(Protocol):
    name: str

    def stream(
        self, messages: list[dict[str, str]], *, model: str, max_tokens: int, read_timeout: float
    ) -> ChunkStream: ...


RETRYABLE_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})


def retry_before_first_token(
    open_stream: Callable[[], ChunkStream],
    *,
    budget: float,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    base: float = 0.25,
    cap: float = 4.0,
) -> ChunkStream:
    """Open a stream, retrying retryable failures with full-jitter backoff within ``budget`` s."""
    deadline = clock() + budget
    attempt = 0
    while True:
        try:
            return open_stream()
        except LLMError as exc:
            delay = random.uniform(0, min(cap, base * 2**attempt))
            if not exc.retryable or clock() + delay > deadline:
                raise
            attempt += 1
            sleep(delay)


def shutdown_socket(sock: Any) -> None:
    """Best effort: end a socket's reads and writes in every thread that is blocked on it."""
    if sock is None:
        return
    import socket

    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
