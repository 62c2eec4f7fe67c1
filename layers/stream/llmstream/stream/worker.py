"""What the stream function does with one SNS message: parse it, claim its request, stream the
answer, and give the connection's stream slot back. A resume message instead replays a finished
answer's stored frames to the connection of a client that came back.

The provider and the connection come from factories, and DynamoDB is passed in, so tests use
local or stubbed ones. Faults of the client or the model end in a frame and a normal return.
Our own failures also end in a frame, then raise: Lambda retries, the retry finds the request
failed, and the event ends in the dead-letter queue with its client already told.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..apigw.connection import Connection, tell_and_close
from ..core.envelope import Address, InvalidEnvelope, PromptEnvelope, ResumeEnvelope, parse_message
from ..core.observability import logger
from ..core.protocol import ErrorCode, error_frame
from ..core.settings import Settings
from ..requests.frames import StoredFrames
from ..requests.lifecycle import FAILED, INTERRUPTED, NOT_STARTED, NewRequest, Requests, Taken
from ..requests.record import Status, owner_key
from ..requests.slots import StreamSlot
from .answer import Answer
from .providers.base import Provider
from .replay import replay_answer
from .streaming import StreamResult


class RequestFailed(Exception):
    """The request failed on our side and its client was told (where it is still connected).

    Raised so that the invocation fails: Lambda retries it, every retry finds the request
    failed, and the event lands in the alarmed dead-letter queue.
    """


def run_prompt(
    raw_message: str,
    *,
    settings: Settings,
    provider: Callable[[PromptEnvelope], Provider],
    connection: Callable[[Address], Connection],
    remaining_time: Callable[[], float],
    dynamodb: Any,
) -> StreamResult | None:
    """Stream one prompt to its connection, once; None when there is nothing to stream."""
    try:
        message = parse_message(raw_message)
    except InvalidEnvelope as exc:
        # Never log the message itself: it may hold a prompt.
        logger.warning("ignoring a malformed prompt message", extra={"reason": str(exc)})
        return None
    logger.append_keys(connection_id=message.connection_id, request_id=message.request_id)
    requests = Requests.of(dynamodb, settings)
    if isinstance(message, ResumeEnvelope):
        frames = StoredFrames(dynamodb, settings.frames_table)
        replay_answer(message, requests=requests, frames=frames, connection=connection)
        return None
    envelope = message
    if settings.log_content:
        logger.info("prompt", extra={"messages": list(envelope.messages)})
    key = owner_key(envelope.principal_id, envelope.request_id)
    slot = StreamSlot(dynamodb, settings, key, envelope.connection_id)
    try:
        claim = requests.claim(key, new_request(envelope, settings))
    except Exception:
        logger.exception("could not claim the request")
        _tell(connection(envelope.address), envelope, NOT_STARTED)
        raise RequestFailed("the request could not be claimed") from None
    if claim.taken in (Taken.HELD, Taken.ENDED) and claim.request.status is not Status.FAILED:
        logger.info(
            "duplicate delivery: not streaming again", extra={"status": claim.request.status}
        )
        return None
    if claim.taken is Taken.ENDED:
        logger.warning("delivery of a request that failed before: failing again")
        raise RequestFailed("the request failed before and its client was told")
    if claim.taken is Taken.TAKEN_OVER:
        logger.error("the invocation streaming this request died: telling the client")
        _tell(connection(claim.request.address), envelope, INTERRUPTED)
        slot.release()
        raise RequestFailed("the request was interrupted")
    answer = Answer(
        envelope,
        claim.request,
        settings=settings,
        requests=requests,
        dynamodb=dynamodb,
        connection=connection,
        provider=provider,
        remaining_time=remaining_time,
        on_finish=slot.release,
    )
    try:
        result = answer.run()
    except Exception:
        logger.exception("the stream could not run")
        _tell(answer.relay.current, envelope, FAILED)  # where the client is now
        try:
            requests.fail(key, envelope.request_id, attach=answer.attach, message=INTERRUPTED)
        except Exception:
            logger.exception("could not record the end of the request")
        slot.release()
        raise
    slot.release()
    if result.outcome == Status.FAILED:
        raise RequestFailed("the stream failed on our side")
    return result


def new_request(envelope: PromptEnvelope, settings: Settings) -> NewRequest:
    """The record a prompt gets when it has none yet (the message handler makes one first)."""
    return NewRequest(
        request_id=envelope.request_id,
        address=envelope.address,
        owner=envelope.principal_id,
        resumable=envelope.resumable and settings.resume_grace_seconds > 0,
        keep_open=envelope.keep_open,
    )


def _tell(conn: Connection, envelope: PromptEnvelope, message: str) -> None:
    tell_and_close(conn, error_frame(envelope.request_id, ErrorCode.INTERNAL, message))
