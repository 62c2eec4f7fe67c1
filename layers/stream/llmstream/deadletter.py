"""What the dead-letter function does with one message of the stream dead-letter queue: find the
prompt's connection and tell its client that the answer could not be started.

Two shapes reach the queue. SNS could not invoke a stream function (subscription redrive): the
body is the SNS notification, or the bare envelope. Lambda dropped or gave up on an invocation
(on-failure destination): the body is Lambda's record, whose ``requestPayload`` is the SNS event.
When the record says our function ran and failed every retry, it told the client itself.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from .envelope import InvalidEnvelope, PromptEnvelope, ResumeEnvelope, parse_message
from .management import Connection, ConnectionGone
from .observability import logger
from .protocol import ErrorCode, encode, error_frame
from .worker import DOMAIN_PATTERN, NOT_STARTED, STAGE_PATTERN

TOLD, ALREADY_TOLD, GONE, UNREADABLE, NOT_TOLD = (
    "told",
    "already_told",
    "gone",
    "unreadable",
    "not_told",
)


NOT_RESUMED = "the answer could not be resumed; send resume again"


class _Unreadable(ValueError):
    """The message holds no prompt envelope we can trust; the reason never quotes content."""


def _object(raw: Any) -> dict[str, Any]:
    if isinstance(raw, dict):
        return raw
    try:
        doc = json.loads(raw)
    except (TypeError, ValueError, RecursionError):
        raise _Unreadable("not JSON") from None
    if not isinstance(doc, dict):
        raise _Unreadable("not a JSON object")
    return doc


def _read(body: str) -> tuple[PromptEnvelope | ResumeEnvelope, bool]:
    """The envelope, and whether our stream function ran and so told the client already."""
    doc = _object(body)
    told = False
    if "requestContext" in doc and "requestPayload" in doc:  # Lambda on-failure destination
        context = doc["requestContext"] if isinstance(doc["requestContext"], dict) else {}
        told = (
            context.get("condition") == "RetriesExhausted"
            and doc.get("responsePayload") is not None
        )
        try:
            message = _object(doc["requestPayload"])["Records"][0]["Sns"]["Message"]
        except (KeyError, IndexError, TypeError):
            raise _Unreadable("the request payload is not an SNS event") from None
    elif doc.get("Type") == "Notification":  # SNS redrive of a notification
        message = doc.get("Message")
    else:  # SNS redrive of the bare message
        message = body
    if not isinstance(message, str):
        raise _Unreadable("no SNS message")
    try:
        envelope = parse_message(message)
    except InvalidEnvelope as exc:
        raise _Unreadable(str(exc)) from None
    if not (
        DOMAIN_PATTERN.fullmatch(envelope.domain_name) and STAGE_PATTERN.fullmatch(envelope.stage)
    ):
        raise _Unreadable("invalid domainName or stage")
    return envelope, told


def notify_dead_letter(
    body: str, *, connection_factory: Callable[[Any], Connection]
) -> str:
    """Tell the client of a dead-lettered prompt (``error`` ``internal``) and close its
    connection, unless the stream function did already. Returns the outcome; never raises for
    a message or a connection that is not ours to fix."""
    try:
        envelope, told = _read(body)
    except _Unreadable as exc:
        logger.warning("a dead letter holds no readable prompt", extra={"reason": str(exc)})
        return UNREADABLE
    ids = {"request_id": envelope.request_id, "connection_id": envelope.connection_id}
    if told:
        logger.info("dead letter: the stream function told the client already", extra=ids)
        return ALREADY_TOLD
    conn = connection_factory(envelope)
    reason = NOT_RESUMED if isinstance(envelope, ResumeEnvelope) else NOT_STARTED
    frame = error_frame(envelope.request_id, ErrorCode.INTERNAL, reason)
    try:
        conn.post(encode(frame))
    except ConnectionGone:
        logger.info("dead letter: the client has gone", extra=ids)
        return GONE
    except Exception as exc:  # throttled or failed: the prompt is still kept
        logger.warning(
            "dead letter: could not tell the client", extra={**ids, "error": type(exc).__name__}
        )
        return NOT_TOLD
    try:
        conn.close()
    except Exception as exc:
        logger.warning(
            "dead letter: could not close the connection",
            extra={**ids, "error": type(exc).__name__},
        )
    logger.info("dead letter: told the client", extra=ids)
    return TOLD
