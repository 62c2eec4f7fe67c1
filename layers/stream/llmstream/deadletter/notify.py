"""What the dead-letter function does with one message of the stream dead-letter queue: find the
prompt's connection and tell its client that the answer could not be started, or was cut off.

Two shapes reach the queue. SNS could not invoke a stream function (subscription redrive): the
body is the SNS notification, or the bare envelope. Lambda dropped or gave up on an invocation
(on-failure destination): the body is Lambda's record, whose ``requestPayload`` is the SNS event.

Whether the client was told already is the request's idempotency record's to say. Our code
tells the client whenever it fails, and marks the record failed; but an invocation that is
killed (out of memory, timed out) tells nobody, and with no retry left nothing else would.
Such a request's record is still in progress with a lapsed lease: this module takes it over.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..apigw.connection import Connection, ConnectionGone
from ..core.envelope import (
    InvalidEnvelope,
    PromptEnvelope,
    ResumeEnvelope,
    json_object,
    parse_message,
)
from ..core.observability import logger
from ..core.protocol import ErrorCode, encode, error_frame
from ..core.settings import Settings
from ..requests.claim import Claim, deduplicator
from ..stream.worker import DOMAIN_PATTERN, INTERRUPTED, NOT_STARTED, STAGE_PATTERN, give_up

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
        return json_object(raw)
    except InvalidEnvelope as exc:
        raise _Unreadable(str(exc)) from None


def _read(body: str) -> tuple[PromptEnvelope | ResumeEnvelope, bool]:
    """The envelope, and whether Lambda's record says our stream function ran (and so, unless
    it died, told the client already)."""
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


class TryLater(Exception):
    """A live invocation holds the request: look again once it has ended or its lease ran out
    (the message goes back to the queue and comes round after its visibility timeout)."""


def notify_dead_letter(
    body: str,
    *,
    connection_factory: Callable[[Any], Connection],
    settings: Settings | None = None,
    dynamodb: Any = None,
) -> str:
    """Tell the client of a dead-lettered request (``error`` ``internal``) and close its
    connection, unless code of ours told it already. Returns the outcome; never raises for a
    message or a connection that is not ours to fix. Raises ``TryLater`` while the request is
    still held, and DynamoDB's errors, so that the message is looked at again.

    With the idempotency table the request's own record says whether its client was told:
    a request never claimed, or whose streaming invocation died with no retry left, was not.
    Without it, Lambda's record says whether our function ran."""
    try:
        envelope, ran = _read(body)
    except _Unreadable as exc:
        logger.warning("a dead letter holds no readable prompt", extra={"reason": str(exc)})
        return UNREADABLE
    ids = {"request_id": envelope.request_id, "connection_id": envelope.connection_id}
    conn: Connection | None = None
    if isinstance(envelope, ResumeEnvelope):
        reason = NOT_RESUMED
    elif dynamodb is not None and settings is not None and settings.idempotency_table:
        claim = deduplicator(dynamodb, settings).close_out(envelope.idempotency_key)
        if claim is Claim.IN_PROGRESS:
            logger.info("dead letter: the request is still being streamed", extra=ids)
            raise TryLater("the request is held by a live invocation")
        if claim in (Claim.COMPLETED, Claim.FAILED):
            logger.info("dead letter: the request ended and its client was told", extra=ids)
            return ALREADY_TOLD
        ran = False
        reason = NOT_STARTED if claim is Claim.NEW else INTERRUPTED
        conn = give_up(
            envelope,
            reason,
            settings=settings,
            connection=connection_factory,
            dynamodb=dynamodb,
        )
    else:
        reason = NOT_STARTED
    if ran:
        logger.info("dead letter: the stream function told the client already", extra=ids)
        return ALREADY_TOLD
    return _tell_and_close(conn or connection_factory(envelope), envelope.request_id, reason, ids)


def _tell_and_close(conn: Connection, request_id: str, reason: str, ids: dict[str, str]) -> str:
    try:
        conn.post(encode(error_frame(request_id, ErrorCode.INTERNAL, reason)))
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
