"""What the stream function does with one SNS message: check it, claim it, stream the answer,
close up, and give the connection's stream slot back.

The provider and the connection come from factories, and DynamoDB is passed in, so tests use
local or stubbed ones. Faults of the client or the model end in a frame and a normal return.
Our own failures also end in a frame, then raise: Lambda retries, the retry finds the request
settled as failed, and the event ends in the dead-letter queue with its client already told.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from .envelope import InvalidEnvelope, PromptEnvelope, parse_envelope
from .idempotency import Claim, Deduplicator, Status
from .llm import Provider
from .management import Connection
from .observability import logger
from .protocol import ErrorCode, encode, error_frame
from .ratelimit import release_stream
from .sender import FrameSender
from .settings import Settings
from .streaming import Outcome, StreamLimits, StreamResult, stream_answer

DOMAIN_PATTERN = re.compile(r"^[A-Za-z0-9.-]{1,253}(:[0-9]{1,5})?$")
STAGE_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,128}$")

INTERRUPTED = "the answer was interrupted; send the prompt again"
NOT_STARTED = "the answer could not be started; send the prompt again"
FAILED = "the answer failed on our side; send the prompt again"


class RequestFailed(Exception):
    """The request failed on our side and its client was told (where it is still connected).

    Raised so that the invocation fails: Lambda retries it, every retry finds the request
    settled as failed, and the event lands in the alarmed dead-letter queue.
    """


def run_prompt(
    raw_message: str,
    *,
    settings: Settings,
    provider: Callable[[PromptEnvelope], Provider],
    connection: Callable[[PromptEnvelope], Connection],
    remaining_time: Callable[[], float],
    dynamodb: Any = None,
) -> StreamResult | None:
    """Stream one prompt to its connection, once; None when there is nothing to stream."""
    envelope = _trusted_envelope(raw_message)
    if envelope is None:
        return None
    logger.append_keys(connection_id=envelope.connection_id, request_id=envelope.request_id)
    if settings.log_content:
        logger.info("prompt", extra={"messages": list(envelope.messages)})
    conn = connection(envelope)
    answer = _Answer(envelope, conn, settings, provider, remaining_time, dynamodb)
    if dynamodb is None or not settings.idempotency_table:
        logger.warning("IDEMPOTENCY_TABLE is not set: a duplicate delivery would stream again")
        return answer.run_and_release()

    dedupe = Deduplicator(
        dynamodb, settings.idempotency_table, expires_after=settings.connection_ttl_seconds
    )
    key = envelope.idempotency_key
    try:
        claim = dedupe.claim(key)
    except Exception:
        logger.exception("could not claim the request")
        answer.tell_and_close(NOT_STARTED)
        raise RequestFailed("the request could not be claimed") from None
    if claim in (Claim.IN_PROGRESS, Claim.COMPLETED):
        logger.info("duplicate delivery: not streaming again", extra={"claim": claim.value})
        return None
    if claim is Claim.FAILED:
        logger.warning("delivery of a request that failed before: failing again")
        raise RequestFailed("the request failed before and its client was told")
    if claim is Claim.INTERRUPTED:
        logger.error("the invocation streaming this request died: telling the client")
        answer.tell_and_close(INTERRUPTED)
        answer.release()
        raise RequestFailed("the request was interrupted")

    try:
        with dedupe.heartbeat(key, on_error=lambda: logger.warning("could not renew the lease")):
            result = answer.run()
    except Exception:
        logger.exception("the stream could not run")
        answer.tell_and_close(FAILED)
        _settle(dedupe, key, Status.FAILED)
        answer.release()
        raise
    failed = result.outcome == Outcome.FAILED
    _settle(dedupe, key, Status.FAILED if failed else Status.COMPLETED)
    answer.release()
    if failed:
        raise RequestFailed("the stream failed on our side")
    return result


def _trusted_envelope(raw_message: str) -> PromptEnvelope | None:
    try:
        envelope = parse_envelope(raw_message)
    except InvalidEnvelope as exc:
        # Never log the message itself: it may hold a prompt.
        logger.warning("ignoring a malformed prompt message", extra={"reason": str(exc)})
        return None
    # The endpoint is built from these two; nothing may smuggle a path or a scheme into it.
    if not DOMAIN_PATTERN.fullmatch(envelope.domain_name) or not STAGE_PATTERN.fullmatch(
        envelope.stage
    ):
        logger.warning(
            "ignoring a malformed prompt message", extra={"reason": "invalid domainName or stage"}
        )
        return None
    return envelope


def _settle(dedupe: Deduplicator, key: str, status: Status) -> None:
    """Record the end. A failure here must not fail the invocation: a retry would find a dead
    lease and tell a client that got its whole answer that it was interrupted."""
    try:
        dedupe.settle(key, status)
    except Exception:
        logger.exception("could not record the end of the request")


class _Answer:
    """One request's stream, and the few things done around it."""

    def __init__(
        self,
        envelope: PromptEnvelope,
        conn: Connection,
        settings: Settings,
        provider: Callable[[PromptEnvelope], Provider],
        remaining_time: Callable[[], float],
        dynamodb: Any,
    ) -> None:
        self.envelope = envelope
        self.conn = conn
        self.settings = settings
        self.provider = provider
        self.remaining_time = remaining_time
        self.dynamodb = dynamodb
        self._released = False

    def run(self) -> StreamResult:
        settings, envelope = self.settings, self.envelope
        llm = self.provider(envelope)
        sender = FrameSender(
            self.conn.post,
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
            remaining_time=self.remaining_time,
            keep_text=settings.log_content,
            on_finish=self.release,
        )
        if settings.log_content:
            logger.info("completion", extra={"text": result.text})
        if not sender.gone and (not envelope.keep_open or result.outcome == Outcome.FAILED):
            _close_quietly(self.conn)
        return result

    def run_and_release(self) -> StreamResult:
        try:
            result = self.run()
        except Exception:
            logger.exception("the stream could not run")
            self.tell_and_close(FAILED)
            self.release()
            raise
        self.release()
        if result.outcome == Outcome.FAILED:
            raise RequestFailed("the stream failed on our side")
        return result

    def tell_and_close(self, message: str) -> None:
        """Best effort: the client may be gone already."""
        frame = error_frame(self.envelope.request_id, ErrorCode.INTERNAL, message)
        try:
            self.conn.post(encode(frame))
        except Exception:
            logger.info("could not tell the client")
            return
        _close_quietly(self.conn)

    def release(self) -> None:
        """Give back the stream slot the message handler took for this request, once."""
        if self._released or self.dynamodb is None or not self.settings.connections_table:
            return
        self._released = True
        if self.settings.max_concurrent_streams <= 0:
            return
        try:
            release_stream(
                self.dynamodb, self.settings.connections_table, self.envelope.connection_id
            )
        except Exception:
            logger.exception("could not give back the stream slot")


def _close_quietly(conn: Connection) -> None:
    """Close the connection; a failure here must not fail the invocation (Lambda would retry)."""
    try:
        conn.close()
    except Exception:
        logger.exception("could not close the connection")
