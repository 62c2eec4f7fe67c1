"""What the stream function does with one SNS message: check it, stream the answer, close up.

The provider and the connection come from factories, so tests pass in local or stubbed ones.
"""

from __future__ import annotations

from typing import Callable

from .envelope import InvalidEnvelope, PromptEnvelope, parse_envelope
from .llm import Provider
from .management import Connection
from .observability import logger
from .protocol import ErrorCode, encode, error_frame
from .sender import FrameSender
from .settings import Settings
from .streaming import StreamLimits, StreamResult, stream_answer


def run_prompt(
    raw_message: str,
    *,
    settings: Settings,
    provider: Callable[[PromptEnvelope], Provider],
    connection: Callable[[PromptEnvelope], Connection],
    remaining_time: Callable[[], float],
) -> StreamResult | None:
    """Stream one prompt to its connection; None when the message is not one we trust."""
    try:
        envelope = parse_envelope(raw_message)
    except InvalidEnvelope as exc:
        # Never log the message itself: it may hold a prompt.
        logger.warning("ignoring a malformed prompt message", extra={"reason": str(exc)})
        return None
    logger.append_keys(connection_id=envelope.connection_id, request_id=envelope.request_id)
    if settings.log_content:
        logger.info("prompt", extra={"messages": list(envelope.messages)})
    conn = connection(envelope)
    try:
        llm = provider(envelope)
    except Exception:
        logger.exception("the LLM provider could not be set up")
        frame = error_frame(envelope.request_id, ErrorCode.INTERNAL, "the model is not available")
        _post_quietly(conn, encode(frame))
        _close_quietly(conn)
        return None
    sender = FrameSender(
        conn.post,
        envelope.request_id,
        min_interval=settings.min_frame_interval,
        max_frame_bytes=settings.max_frame_bytes,
    )
    result = stream_answer(
        envelope,
        llm,
        sender,
        system_prompt=settings.system_prompt,
        limits=StreamLimits(
            read_timeout=settings.llm_stall_timeout,
            retry_budget=settings.llm_retry_budget,
            deadline_margin=settings.deadline_margin,
        ),
        remaining_time=remaining_time,
    )
    if not sender.gone and not envelope.keep_open:
        _close_quietly(conn)
    return result


def _post_quietly(conn: Connection, data: bytes) -> None:
    try:
        conn.post(data)
    except Exception:  # the client may be gone already; the failure is logged by the caller
        logger.info("could not tell the client")


def _close_quietly(conn: Connection) -> None:
    """Close the connection; a failure here must not fail the invocation (Lambda would retry)."""
    try:
        conn.close()
    except Exception:
        logger.exception("could not close the connection")
