"""What the message handler does: validate a client message, apply the abuse limits, and queue
it as one SNS message; or cancel an answer, or move it to a client that resumes it.

No LLM code is imported here, so the message function stays quick to cold-start.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from ..core.envelope import Address, PromptEnvelope, ResumeEnvelope
from ..core.observability import logger
from ..core.protocol import (
    Cancel,
    ErrorCode,
    ProtocolError,
    Resume,
    SendMessage,
    accepted_frame,
    error_frame,
    parse_client_message,
)
from ..core.settings import Settings
from ..core.transport import DIALECT
from ..requests.lifecycle import Attached, NewRequest, Refused, Requests
from ..requests.record import owner_key
from .limits import ConnectionLimits
from .routing import provider_for_model

Publish = Callable[[PromptEnvelope | ResumeEnvelope], Any]


# A NamedTuple, not a dataclass: the message handler's cold start (docs/architecture.md).
class Caller(NamedTuple):
    """Who sent the message, from the WebSocket event's requestContext."""

    address: Address
    request_id: str
    """API Gateway's id of the message: the request id when the client names none."""
    principal_id: str | None = None

    @property
    def connection_id(self) -> str:
        return self.address.connection_id


class Intake(NamedTuple):
    """What handling one client message needs: who sent it, the deployment's settings, where
    prompts go, the clock, the limits and the request records."""

    caller: Caller
    settings: Settings
    publish: Publish
    now_ms: int
    limits: ConnectionLimits
    requests: Requests


def accept_message(
    body: str | None,
    caller: Caller,
    settings: Settings,
    publish: Publish,
    now_ms: int,
    limits: ConnectionLimits,
    requests: Requests,
) -> dict[str, Any] | None:
    """Return the frame to answer with: ``accepted`` once published (or, for cancel and resume,
    once the request's record says so), or an ``error``. A frame of the AI SDK's transport is
    answered in its words (intake.transport): with no frame, when all went well.

    What is wrong with the message itself is answered first (a malformed message, a request id
    in use), then the limits; a refused message costs nothing.
    """
    try:
        message = parse_client_message(
            body, fallback_request_id=caller.request_id, limits=settings.limits()
        )
    except ProtocolError as exc:
        return exc.frame(caller.request_id)
    intake = Intake(caller, settings, publish, now_ms, limits, requests)
    if message.dialect == DIALECT:
        from . import transport  # here: it builds on this module

        if isinstance(message, Cancel):
            transport.abort(message, intake)
            return None
        if isinstance(message, Resume):
            return transport.resume(message, intake)
        return transport.in_dialect(send(message, intake))
    if isinstance(message, Cancel):
        return cancel_answer(message, intake)
    if isinstance(message, Resume):
        return resume_answer(message, intake)
    return send(message, intake)


def send(message: SendMessage, intake: Intake) -> dict[str, Any]:
    """Register, admit and publish a prompt: ``accepted``, or the error that refused it."""
    caller, settings, now_ms = intake.caller, intake.settings, intake.now_ms
    limits, requests = intake.limits, intake.requests
    envelope = PromptEnvelope(
        request_id=message.request_id,
        connection_id=caller.address.connection_id,
        domain_name=caller.address.domain_name,
        stage=caller.address.stage,
        messages=message.messages,
        model=message.model,
        provider=provider_for_model(message.model, settings),
        max_tokens=settings.max_tokens,
        keep_open=message.keep_open,
        conversation_id=message.conversation_id,
        principal_id=caller.principal_id,
        received_at=now_ms,
        resumable=message.resumable,
        dialect=message.dialect,
        cache=message.cache,
    )
    key = owner_key(caller.principal_id, message.request_id)
    not_registered = _register(requests, key, envelope, settings)
    if not_registered is not None:
        return not_registered
    if message.chat_id is not None:  # a transport resume finds the request by its chat
        try:
            requests.chats.point(caller.principal_id, message.chat_id, key)
        except Exception:  # the answer streams all the same; only a resume would miss it
            logger.exception("could not record the chat's request")
    refused = _admit(limits, caller, message.request_id, now_ms)
    if refused is not None:
        _forget(requests, key)  # registered, then refused: the id is free again
        return refused
    try:
        intake.publish(envelope)
    except Exception:  # SNS unreachable or refusing: the client must hear of it, with its id
        logger.exception("could not queue the prompt")
        _give_back(limits, caller.connection_id, now_ms)
        _forget(requests, key)
        return error_frame(
            envelope.request_id, ErrorCode.INTERNAL, "the request could not be queued; try again"
        )
    return accepted_frame(envelope.request_id)


def _admit(
    limits: ConnectionLimits, caller: Caller, request_id: str, now_ms: int
) -> dict[str, Any] | None:
    """Count the request and take its stream slot; an error frame when a limit refuses it."""
    try:
        refusal = limits.admit(caller.connection_id, caller.principal_id, now_ms // 1000)
    except Exception:  # DynamoDB unreachable: refuse rather than run unmetered
        logger.exception("could not check the rate limits")
        return error_frame(
            request_id, ErrorCode.INTERNAL, "the request could not be queued; try again"
        )
    if refusal is None:
        return None
    logger.info("rate limited", extra={"limit": refusal.limit})
    return error_frame(request_id, ErrorCode.RATE_LIMITED, refusal.message)


def _forget(requests: Requests, key: str) -> None:
    try:
        requests.forget(key)
    except Exception:
        logger.exception("could not forget the request")


def _register(
    requests: Requests, key: str, envelope: PromptEnvelope, settings: Settings
) -> dict[str, Any] | None:
    """Create the request's record; an error frame when that cannot be done."""
    rid = envelope.request_id
    new = NewRequest(
        request_id=rid,
        address=envelope.address,
        owner=envelope.principal_id,
        resumable=envelope.resumable and settings.resume_grace_seconds > 0,
        keep_open=envelope.keep_open,
    )
    try:
        created = requests.register(key, new)
    except Exception:  # DynamoDB unreachable: refuse, like the rate limits
        logger.exception("could not record the request")
        return error_frame(rid, ErrorCode.INTERNAL, "the request could not be queued; try again")
    if not created:
        return error_frame(
            rid,
            ErrorCode.BAD_REQUEST,
            f"'requestId' {rid!r} is in use or was used lately; use a new one for every prompt",
        )
    return None


def cancel_answer(message: Cancel, intake: Intake) -> dict[str, Any]:
    """Flag the answer cancelled, and give its stream slot back; its stream function ends it
    within one frame."""
    caller, requests = intake.caller, intake.requests
    rid = message.request_id
    not_found = error_frame(rid, ErrorCode.NOT_FOUND, f"no answer {rid!r} is in progress here")
    key = owner_key(caller.principal_id, rid)
    try:
        cancelled = requests.cancels.cancel(
            key, principal_id=caller.principal_id, connection_id=caller.connection_id
        )
    except Exception:
        logger.exception("could not cancel the request")
        return error_frame(rid, ErrorCode.INTERNAL, "the answer could not be cancelled; try again")
    if cancelled is None:
        return not_found
    intake.limits.give_back_cancelled(requests.store.table.name, key, cancelled)
    return accepted_frame(rid)


RESUME_REFUSALS = {
    "not_found": (ErrorCode.NOT_FOUND, "no answer {rid!r} to resume"),
    "not_resumable": (
        ErrorCode.NOT_FOUND,
        "answer {rid!r} was not sent with resumable: true, so it cannot be resumed",
    ),
    "interrupted": (ErrorCode.INTERNAL, "the answer was interrupted; send the prompt again"),
    "busy": (ErrorCode.INTERNAL, "the answer could not be resumed; try again"),
}


def resume_answer(message: Resume, intake: Intake) -> dict[str, Any]:
    """Move the answer to the caller's connection: a live one follows at once, a finished one is
    replayed from the frames table by a stream function."""
    caller, settings, now_ms = intake.caller, intake.settings, intake.now_ms
    limits, requests, publish = intake.limits, intake.requests, intake.publish
    rid = message.request_id
    try:
        refusal = limits.count(caller.connection_id, caller.principal_id, now_ms // 1000)
        if refusal is not None:
            return error_frame(rid, ErrorCode.RATE_LIMITED, refusal.message)
        outcome = requests.attach(
            owner_key(caller.principal_id, rid),
            principal_id=caller.principal_id,
            address=caller.address,
            after_seq=message.after_seq,
        )
    except Exception:
        logger.exception("could not resume the request")
        return error_frame(rid, ErrorCode.INTERNAL, "the answer could not be resumed; try again")
    if isinstance(outcome, Refused):
        code, text = RESUME_REFUSALS[outcome.reason]
        logger.info("resume refused", extra={"reason": outcome.reason})
        return error_frame(rid, code, text.format(rid=rid))
    if isinstance(outcome, Attached):
        return accepted_frame(rid)
    try:
        publish(
            ResumeEnvelope(
                request_id=rid,
                connection_id=caller.address.connection_id,
                domain_name=caller.address.domain_name,
                stage=caller.address.stage,
                after_seq=message.after_seq,
                attach=outcome.attach,
                provider=settings.llm_provider,
                principal_id=caller.principal_id,
                received_at=now_ms,
            )
        )
    except Exception:
        logger.exception("could not queue the replay")
        return error_frame(rid, ErrorCode.INTERNAL, "the answer could not be resumed; try again")
    return accepted_frame(rid)


def _give_back(limits: ConnectionLimits, connection_id: str, now_ms: int) -> None:
    try:
        limits.give_back(connection_id, now_ms // 1000)
    except Exception:
        logger.exception("could not give back the stream slot")


def publish_prompt(sns: Any, topic_arn: str, envelope: PromptEnvelope | ResumeEnvelope) -> str:
    """Publish the envelope with attributes that subscription filter policies can match."""
    response = sns.publish(
        TopicArn=topic_arn,
        Message=envelope.to_json(),
        MessageAttributes=envelope.message_attributes(),
    )
    return str(response["MessageId"])
