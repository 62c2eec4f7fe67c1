"""What the message handler does: validate a client message, apply the abuse limits, and queue
it as one SNS message; or cancel an answer, or move it to a client that resumes it.

No LLM code is imported here, so the message function stays quick to cold-start.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..core.envelope import PromptEnvelope, ResumeEnvelope
from ..core.observability import logger
from ..core.protocol import (
    Cancel,
    ErrorCode,
    ProtocolError,
    Resume,
    accepted_frame,
    error_frame,
    parse_client_message,
)
from ..core.settings import Settings
from ..requests.record import Attached, Refused, RequestControl, Target, owner_key
from .limits import ConnectionLimits, count_request
from .routing import provider_for_model

Publish = Callable[[PromptEnvelope | ResumeEnvelope], Any]


@dataclass(frozen=True)
class Caller:
    """Who sent the message, from the WebSocket event's requestContext."""

    connection_id: str
    domain_name: str
    stage: str
    request_id: str
    principal_id: str | None = None

    @property
    def target(self) -> Target:
        return Target(self.connection_id, self.domain_name, self.stage)


def accept_message(
    body: str | None,
    caller: Caller,
    settings: Settings,
    publish: Publish,
    now_ms: int,
    limits: ConnectionLimits | None = None,
    control: RequestControl | None = None,
) -> dict[str, Any]:
    """Return the frame to answer with: ``accepted`` once published (or, for cancel and resume,
    once the request's control item says so), or an ``error``.

    ``control`` (the frames table) is what makes answers cancellable and resumable; without it
    cancel and resume find nothing.
    """
    try:
        message = parse_client_message(
            body, fallback_request_id=caller.request_id, limits=settings.limits()
        )
    except ProtocolError as exc:
        return exc.frame(caller.request_id)
    if isinstance(message, Cancel):
        return cancel_answer(message, caller, control)
    if isinstance(message, Resume):
        return resume_answer(message, caller, settings, publish, now_ms, limits, control)
    if limits is not None:
        try:
            refusal = limits.admit(caller.connection_id, caller.principal_id, now_ms // 1000)
        except Exception:  # DynamoDB unreachable: refuse rather than run unmetered
            logger.exception("could not check the rate limits")
            return error_frame(
                message.request_id, ErrorCode.INTERNAL, "the request could not be queued; try again"
            )
        if refusal is not None:
            logger.info("rate limited", extra={"limit": refusal.limit})
            return error_frame(message.request_id, ErrorCode.RATE_LIMITED, refusal.message)
    envelope = PromptEnvelope(
        request_id=message.request_id,
        connection_id=caller.connection_id,
        domain_name=caller.domain_name,
        stage=caller.stage,
        messages=message.messages,
        model=message.model,
        provider=provider_for_model(message.model, settings),
        max_tokens=settings.max_tokens,
        keep_open=message.keep_open,
        conversation_id=message.conversation_id,
        principal_id=caller.principal_id,
        received_at=now_ms,
        resumable=message.resumable,
    )
    key = owner_key(caller.principal_id, message.request_id)
    if control is not None:
        not_registered = _register(control, key, envelope, caller, settings, now_ms)
        if not_registered is not None:
            if limits is not None:
                _give_back(limits, caller.connection_id)
            return not_registered
    try:
        publish(envelope)
    except Exception:  # SNS unreachable or refusing: the client must hear of it, with its id
        logger.exception("could not queue the prompt")
        if limits is not None:
            _give_back(limits, caller.connection_id)
        if control is not None:
            try:
                control.forget(key)
            except Exception:
                logger.exception("could not forget the request")
        return error_frame(
            envelope.request_id, ErrorCode.INTERNAL, "the request could not be queued; try again"
        )
    return accepted_frame(envelope.request_id)


def _register(
    control: RequestControl,
    key: str,
    envelope: PromptEnvelope,
    caller: Caller,
    settings: Settings,
    now_ms: int,
) -> dict[str, Any] | None:
    """Create the request's control item; an error frame when that cannot be done."""
    rid = envelope.request_id
    try:
        created = control.create(
            key,
            request_id=rid,
            owner=caller.principal_id,
            target=caller.target,
            resumable=envelope.resumable and settings.resume_grace_seconds > 0,
            keep_open=envelope.keep_open,
            expires_at=now_ms // 1000 + settings.connection_ttl_seconds,
        )
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


def cancel_answer(
    message: Cancel, caller: Caller, control: RequestControl | None
) -> dict[str, Any]:
    """Flag the answer cancelled; its stream function ends it within one frame."""
    rid = message.request_id
    not_found = error_frame(rid, ErrorCode.NOT_FOUND, f"no answer {rid!r} is in progress here")
    if control is None:
        return not_found
    try:
        cancelled = control.cancel(
            owner_key(caller.principal_id, rid),
            principal_id=caller.principal_id,
            connection_id=caller.connection_id,
        )
    except Exception:
        logger.exception("could not cancel the request")
        return error_frame(rid, ErrorCode.INTERNAL, "the answer could not be cancelled; try again")
    return accepted_frame(rid) if cancelled else not_found


RESUME_REFUSALS = {
    "not_found": (ErrorCode.NOT_FOUND, "no answer {rid!r} to resume"),
    "not_resumable": (
        ErrorCode.NOT_FOUND,
        "answer {rid!r} was not sent with resumable: true, so it cannot be resumed",
    ),
    "interrupted": (ErrorCode.INTERNAL, "the answer was interrupted; send the prompt again"),
    "busy": (ErrorCode.INTERNAL, "the answer could not be resumed; try again"),
}


def resume_answer(
    message: Resume,
    caller: Caller,
    settings: Settings,
    publish: Publish,
    now_ms: int,
    limits: ConnectionLimits | None,
    control: RequestControl | None,
) -> dict[str, Any]:
    """Move the answer to the caller's connection: a live one follows at once, a finished one is
    replayed from the frames table by a stream function."""
    rid = message.request_id
    if control is None:
        return error_frame(rid, ErrorCode.NOT_FOUND, f"no answer {rid!r} to resume")
    try:
        if limits is not None:
            refusal = count_request(
                limits.dynamodb,
                limits.table,
                connection_id=caller.connection_id,
                principal_id=caller.principal_id,
                per_connection=limits.per_connection,
                per_principal=limits.per_principal,
                now_s=now_ms // 1000,
            )
            if refusal is not None:
                return error_frame(rid, ErrorCode.RATE_LIMITED, refusal.message)
        outcome = control.attach_client(
            owner_key(caller.principal_id, rid),
            principal_id=caller.principal_id,
            target=caller.target,
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
                connection_id=caller.connection_id,
                domain_name=caller.domain_name,
                stage=caller.stage,
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


def _give_back(limits: ConnectionLimits, connection_id: str) -> None:
    try:
        limits.cancel(connection_id)
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
