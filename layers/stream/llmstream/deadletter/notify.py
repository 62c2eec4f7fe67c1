"""What the dead-letter function does with one message of the stream dead-letter queue: find the
prompt's connection and tell its client that the answer could not be started, or was cut off.

Two shapes reach the queue. SNS could not invoke a stream function (subscription redrive): the
body is the SNS notification, or the bare envelope. Lambda dropped or gave up on an invocation
(on-failure destination): the body is Lambda's record, whose ``requestPayload`` is the SNS event.

Whether the client was told already is the request's record's to say. Our code tells the client
whenever it fails, and marks the record failed; but an invocation that is killed (out of memory,
timed out) tells nobody, and with no retry left nothing else would. Such a request's record is
still streaming with a lapsed lease: this module takes it over.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum
from typing import Any

from ..apigw.connection import Connection, Delivery, tell_and_close
from ..core.envelope import (
    Address,
    InvalidEnvelope,
    PromptEnvelope,
    ResumeEnvelope,
    json_object,
    parse_message,
)
from ..core.observability import logger
from ..core.protocol import ErrorCode, error_frame
from ..core.settings import Settings
from ..requests import lifecycle
from ..requests.record import owner_key
from ..requests.slots import StreamSlot

NOT_RESUMED = "the answer could not be resumed; send resume again"


class Notice(StrEnum):
    """What became of a dead letter's client (not of its request: that is the record's)."""

    TOLD = "told"
    ALREADY_TOLD = "already_told"
    GONE = "gone"
    UNREADABLE = "unreadable"
    NOT_TOLD = "not_told"


TOLD, ALREADY_TOLD, GONE, UNREADABLE, NOT_TOLD = Notice

_NOTICE_OF_DELIVERY = {Delivery.SENT: TOLD, Delivery.GONE: GONE}
_LOGGED = {
    TOLD: "dead letter: told the client",
    GONE: "dead letter: the client has gone",
    NOT_TOLD: "dead letter: could not tell the client",
}


class _Unreadable(ValueError):
    """The message holds no prompt envelope we can trust; the reason never quotes content."""


class TryLater(Exception):
    """A live invocation holds the request: look again once it has ended or its lease ran out
    (the message goes back to the queue and comes round after its visibility timeout)."""


def _object(raw: Any) -> dict[str, Any]:
    if isinstance(raw, dict):
        return raw
    try:
        return json_object(raw)
    except InvalidEnvelope as exc:
        raise _Unreadable(str(exc)) from None


def _read(body: str) -> tuple[PromptEnvelope | ResumeEnvelope, bool]:
    """The envelope a dead letter holds, whichever of its shapes it came in, and whether Lambda's
    record says that our stream function ran (and failed every attempt)."""
    doc = _object(body)
    ran = False
    if "requestContext" in doc and "requestPayload" in doc:  # Lambda on-failure destination
        context = doc["requestContext"] if isinstance(doc["requestContext"], dict) else {}
        ran = (
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
        return parse_message(message), ran
    except InvalidEnvelope as exc:
        raise _Unreadable(str(exc)) from None


def notify_dead_letter(
    body: str,
    *,
    connection_factory: Callable[[Address], Connection],
    settings: Settings,
    dynamodb: Any,
) -> Notice:
    """Tell the client of a dead-lettered request (``error`` ``internal``) and close its
    connection, unless code of ours told it already. Returns what became of the client; never
    raises for a message or a connection that is not ours to fix. Raises ``TryLater`` while the
    request is still held, and DynamoDB's errors, so that the message is looked at again.

    The request's record says whether its client was told: a request never claimed, or whose
    streaming invocation died with no retry left, was not. Without a record, Lambda's says
    whether our function ran (and so told the client when it failed)."""
    try:
        envelope, ran = _read(body)
    except _Unreadable as exc:
        logger.warning("a dead letter holds no readable prompt", extra={"reason": str(exc)})
        return UNREADABLE
    ids = {"request_id": envelope.request_id, "connection_id": envelope.connection_id}
    if isinstance(envelope, ResumeEnvelope):
        return _tell(connection_factory(envelope.address), envelope.request_id, NOT_RESUMED, ids)
    new = lifecycle.NewRequest(envelope.request_id, envelope.address, owner=envelope.principal_id)
    key = owner_key(envelope.principal_id, envelope.request_id)
    requests = lifecycle.Requests.of(dynamodb, settings)
    if ran and requests.read(key) is None:
        # Our function ran and failed before the request had a record: it told the client.
        logger.info("dead letter: the stream function told the client already", extra=ids)
        return ALREADY_TOLD
    claim = requests.close_out(key, new)
    if claim.taken is lifecycle.Taken.HELD:
        logger.info("dead letter: the request is still being streamed", extra=ids)
        raise TryLater("the request is held by a live invocation")
    if claim.taken is lifecycle.Taken.ENDED:
        logger.info("dead letter: the request ended and its client was told", extra=ids)
        return ALREADY_TOLD
    StreamSlot(dynamodb, settings, key, envelope.connection_id).release()
    claimed = claim.taken is lifecycle.Taken.CLAIMED
    reason = lifecycle.NOT_STARTED if claimed else lifecycle.INTERRUPTED
    return _tell(connection_factory(claim.request.address), envelope.request_id, reason, ids)


def _tell(conn: Connection, request_id: str, reason: str, ids: dict[str, str]) -> Notice:
    delivery = tell_and_close(conn, error_frame(request_id, ErrorCode.INTERNAL, reason))
    notice = _NOTICE_OF_DELIVERY.get(delivery, NOT_TOLD)
    logger.info(_LOGGED[notice], extra=ids)
    return notice
