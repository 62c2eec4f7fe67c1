"""The OpenAI-compatible provider: any chat completions endpoint, streamed and abortable."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from .base import RETRYABLE_STATUS, Chunk, ChunkStream, LLMError, LLMTimeout, shutdown_socket


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
                    reasoning = _reasoning(choice.delta)
                    if text or reasoning or choice.finish_reason:
                        yield Chunk(
                            text=text, reasoning=reasoning, finish_reason=choice.finish_reason
                        )
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


REASONING_FIELDS = ("reasoning_content", "reasoning")
"""Where compatible servers put a delta's reasoning, which OpenAI's schema has no field for:
DeepSeek, vLLM and LiteLLM use ``reasoning_content``, OpenRouter ``reasoning``. The client keeps
unknown fields as attributes (its pydantic models allow extras)."""


def _reasoning(delta: Any) -> str:
    """The delta's reasoning text. The first field that has some wins: a server that fills both
    sends the same text twice, and it must be shown once."""
    for name in REASONING_FIELDS:
        value = getattr(delta, name, None)
        if isinstance(value, str) and value:
            return value
    return ""


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
