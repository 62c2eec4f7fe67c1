"""The Amazon Bedrock provider: ConverseStream through boto3's bedrock-runtime client, IAM only.

Bedrock's events become Chunks and its errors become LLMError / LLMTimeout, as for OpenAI.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator
from functools import lru_cache
from typing import Any

from botocore.exceptions import ClientError, HTTPClientError, ReadTimeoutError
from botocore.exceptions import ConnectionError as BotocoreConnectionError
from urllib3.exceptions import ReadTimeoutError as StreamReadTimeoutError

from ...core.protocol import FinishReason
from .base import RETRYABLE_STATUS, Chunk, ChunkStream, LLMError, LLMTimeout, shutdown_socket

ClientFactory = Callable[[float], Any]
"""Returns a bedrock-runtime client whose socket read timeout is (at most) the given seconds."""

STOP_REASONS = {
    "end_turn": FinishReason.STOP,
    "stop_sequence": FinishReason.STOP,
    "tool_use": FinishReason.STOP,
    "max_tokens": FinishReason.LENGTH,
    "model_context_window_exceeded": FinishReason.LENGTH,
    "content_filtered": FinishReason.CONTENT_FILTER,
    "guardrail_intervened": FinishReason.CONTENT_FILTER,
    "malformed_model_output": FinishReason.ERROR,
    "malformed_tool_use": FinishReason.ERROR,
}
"""Bedrock's stopReason → the protocol's finishReason (anything else counts as a stop)."""

RETRYABLE_CODES = frozenset(
    {
        "throttlingexception",
        "serviceunavailableexception",
        "internalserverexception",
        "modelnotreadyexception",
    }
)
"""Error codes worth another attempt, compared in lower case: a request's errors are spelt
``ThrottlingException``, the same errors inside a stream ``throttlingException``."""

STREAM_ERROR_STATUS = {
    "throttlingexception": 429,
    "serviceunavailableexception": 503,
    "internalserverexception": 500,
    "validationexception": 400,
    "modelstreamerrorexception": 424,
}
"""An in-stream exception carries no HTTP status; these are the ones its request form has."""


@lru_cache(maxsize=4)
def _client(read_timeout: int) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.client(
        "bedrock-runtime",
        config=Config(
            read_timeout=read_timeout,
            connect_timeout=5,
            # retry_before_first_token retries within the stream's budget; botocore must not.
            retries={"total_max_attempts": 1, "mode": "standard"},
            tcp_keepalive=True,
        ),
    )


def bedrock_client(read_timeout: float) -> Any:
    """The container's bedrock-runtime client for this read timeout.

    botocore fixes the socket timeout when a client is made, and the stream's read timeout
    shrinks as the invocation's deadline nears. So there is one client per whole second of
    timeout, rounded down so a stall is noticed before the deadline; in practice that is one
    client (the stall timeout) plus one or two made near the end of a long invocation.
    AWS_ENDPOINT_URL_BEDROCK_RUNTIME points it elsewhere (a local fake, a VPC endpoint).
    """
    return _client(max(1, int(read_timeout)))


def to_converse(
    messages: list[dict[str, str]],
) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """Split chat messages into Converse ``messages`` and ``system`` blocks.

    Bedrock wants the roles to alternate, so consecutive turns of one role (a client may send
    two user messages in a row) become one message of several text blocks.
    """
    system: list[dict[str, str]] = []
    turns: list[dict[str, Any]] = []
    for m in messages:
        if m["role"] == "system":
            system.append({"text": m["content"]})
        elif turns and turns[-1]["role"] == m["role"]:
            turns[-1]["content"].append({"text": m["content"]})
        else:
            turns.append({"role": m["role"], "content": [{"text": m["content"]}]})
    return turns, system


def _error_code(exc: Exception) -> str:
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", "")) or type(exc).__name__


def _http_status(exc: Exception) -> int | None:
    response = getattr(exc, "response", None) or {}
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return int(status) if status else None


def _request_error(exc: Exception) -> LLMError:
    """An error answer to the ConverseStream request; never quotes Bedrock's message, which
    may echo parts of the prompt."""
    code = _error_code(exc)
    status = _http_status(exc)
    message = f"the model failed ({code}{f', HTTP {status}' if status else ''})"
    if code.lower() == "modeltimeoutexception":
        return LLMTimeout(message, retryable=True, status=status)
    retryable = code.lower() in RETRYABLE_CODES or status in RETRYABLE_STATUS
    return LLMError(message, retryable=retryable, status=status)


def _stream_error(exc: Exception, *, before_first_token: bool) -> LLMError:
    """An exception event inside the stream; worth retrying only if nothing was shown yet."""
    code = _error_code(exc)
    return LLMError(
        f"the model failed mid-stream ({code})",
        retryable=before_first_token and code.lower() in RETRYABLE_CODES,
        status=STREAM_ERROR_STATUS.get(code.lower()),
    )


class _BedrockChunks:
    """Bedrock's event stream as Chunks. ``prime`` reads up to the first Chunk so that an
    exception event before any text surfaces while the request can still be retried."""

    def __init__(self, events: Any) -> None:
        self._events = events
        self._chunks = self._read()
        self._primed: list[Chunk] = []
        self._output_seen = False

    def prime(self) -> None:
        for chunk in self._chunks:
            self._primed.append(chunk)
            return

    def __iter__(self) -> Iterator[Chunk]:
        yield from self._primed
        self._primed.clear()
        yield from self._chunks

    def _read(self) -> Generator[Chunk, None, None]:
        try:
            for event in self._events:
                if "contentBlockDelta" in event:
                    # Tool use deltas are not part of the answer; of reasoning, only its text is
                    # shown (its signature and redacted content are for sending it back).
                    delta = event["contentBlockDelta"].get("delta") or {}
                    text = delta.get("text") or ""
                    reasoning = (delta.get("reasoningContent") or {}).get("text") or ""
                    if text or reasoning:
                        self._output_seen = True  # the client saw it: a retry would repeat it
                        yield Chunk(text=text, reasoning=reasoning)
                elif "messageStop" in event:
                    reason = event["messageStop"].get("stopReason")
                    yield Chunk(finish_reason=STOP_REASONS.get(reason, FinishReason.STOP).value)
                elif "metadata" in event:
                    usage = event["metadata"].get("usage") or {}
                    yield Chunk(
                        input_tokens=usage.get("inputTokens"),
                        output_tokens=usage.get("outputTokens"),
                    )
        except (StreamReadTimeoutError, ReadTimeoutError):  # urllib3's, while streaming
            raise LLMTimeout(
                "the model stopped sending for too long", retryable=not self._output_seen
            ) from None
        except ClientError as exc:  # EventStreamError: an exception event in the stream
            raise _stream_error(exc, before_first_token=not self._output_seen) from None
        except Exception as exc:  # a broken connection or a corrupt frame
            raise LLMError(
                f"the model's stream broke off ({type(exc).__name__})",
                retryable=not self._output_seen,
            ) from None

    def close(self) -> None:
        """Close the HTTP response, so that Bedrock stops generating at once."""
        try:
            self._events.close()
        finally:
            self._chunks.close()

    def abort(self) -> None:
        """From another thread: end a read that waits on a stalled model (urllib3's socket is
        shut down; the generator itself is closed later, by the thread that runs it)."""
        connection = getattr(getattr(self._events, "_raw_stream", None), "connection", None)
        shutdown_socket(getattr(connection, "sock", None))
        self._events.close()


class BedrockProvider:
    """Amazon Bedrock's ConverseStream API; credentials come from the function's IAM role."""

    name = "bedrock"

    def __init__(self, client_for: ClientFactory = bedrock_client) -> None:
        self._client_for = client_for

    def stream(
        self, messages: list[dict[str, str]], *, model: str, max_tokens: int, read_timeout: float
    ) -> ChunkStream:
        turns, system = to_converse(messages)
        request: dict[str, Any] = {
            "modelId": model,
            "messages": turns,
            "inferenceConfig": {"maxTokens": max_tokens},
        }
        if system:
            request["system"] = system
        try:
            response = self._client_for(read_timeout).converse_stream(**request)
        except ReadTimeoutError:
            raise LLMTimeout("the model did not answer in time", retryable=True) from None
        except ClientError as exc:
            raise _request_error(exc) from None
        except (BotocoreConnectionError, HTTPClientError) as exc:  # refused, reset, TLS, DNS
            raise LLMError(
                f"the model could not be reached ({type(exc).__name__})", retryable=True
            ) from None
        chunks = _BedrockChunks(response["stream"])
        try:
            chunks.prime()
        except BaseException:
            chunks.close()
            raise
        return chunks
