"""LLM providers behind one small streaming interface; the OpenAI-compatible one is here.

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
    text: str = ""
    finish_reason: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None


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


class _OpenAIChunks:
    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def __iter__(self) -> Iterator[Chunk]:
        import openai

        try:
            for chunk in self._stream:
                usage = getattr(chunk, "usage", None)
                if usage is not None:
                    yield Chunk(
                        input_tokens=usage.prompt_tokens, output_tokens=usage.completion_tokens
                    )
                for choice in chunk.choices or ():
                    text = (choice.delta.content if choice.delta else None) or ""
                    if text or choice.finish_reason:
                        yield Chunk(text=text, finish_reason=choice.finish_reason)
        except openai.APITimeoutError:
            raise LLMTimeout("the model stopped sending for too long") from None
        except openai.APIError as exc:
            raise LLMError(_safe_message(exc)) from None
        except Exception as exc:  # httpx read errors and friends, mid-stream
            raise LLMError(f"the model's stream broke off ({type(exc).__name__})") from None

    def close(self) -> None:
        self._stream.close()

    def abort(self) -> None:
        """From another thread: end the stream now. Closing alone leaves a read that waits on a
        stalled model blocked until it times out; shutting the socket down wakes it at once."""
        response = getattr(self._stream, "response", None)
        network = getattr(response, "extensions", {}).get("network_stream")
        shutdown_socket(network.get_extra_info("socket") if network is not None else None)
        self.close()


def shutdown_socket(sock: Any) -> None:
    """Best effort: end a socket's reads and writes in every thread that is blocked on it."""
    if sock is None:
        return
    import socket

    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


def _safe_message(exc: Exception) -> str:
    """A short description for the client; never echoes the request or any key."""
    status = getattr(exc, "status_code", None)
    kind = type(exc).__name__
    return f"the model failed ({kind}{f', HTTP {status}' if status else ''})"


class OpenAIProvider:
    """Any OpenAI-compatible chat completions endpoint."""

    name = "openai"

    def __init__(self, client: Any) -> None:
        self._client = client

    def stream(
        self, messages: list[dict[str, str]], *, model: str, max_tokens: int, read_timeout: float
    ) -> ChunkStream:
        import openai

        try:
            raw = self._client.chat.completions.create(
                model=model,
                messages=messages,
                max_tokens=max_tokens,
                stream=True,
                stream_options={"include_usage": True},
                timeout=openai.Timeout(read_timeout, connect=5.0),
            )
        except openai.APITimeoutError:
            raise LLMTimeout("the model did not answer in time", retryable=True) from None
        except openai.APIStatusError as exc:
            raise LLMError(
                _safe_message(exc),
                retryable=exc.status_code in RETRYABLE_STATUS,
                status=exc.status_code,
            ) from None
        except openai.APIConnectionError as exc:
            raise LLMError(_safe_message(exc), retryable=True) from None
        return _OpenAIChunks(raw)


def openai_client(api_key: str, base_url: str | None) -> Any:
    """The OpenAI client, imported only by functions that talk to the model."""
    from openai import OpenAI

    return OpenAI(api_key=api_key, base_url=base_url or None, max_retries=0)
