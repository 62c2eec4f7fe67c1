"""What the message handler does: validate a client message, apply the abuse limits, and queue
it as one SNS message.

No LLM code is imported here, so the message function stays quick to cold-start.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .envelope import PromptEnvelope
from .observability import logger
from .protocol import (
    ErrorCode,
    ProtocolError,
    accepted_frame,
    error_frame,
    parse_client_message,
)
from .ratelimit import ConnectionLimits
from .settings import Settings


@dataclass(frozen=True)
class Caller:
    """Who sent the message, from the WebSocket event's requestContext."""

    connection_id: str
    domain_name: str
    stage: str
    request_id: str
    principal_id: str | None = None


def accept_message(
    body: str | None,
    caller: Caller,
    settings: Settings,
    publish: Callable[[PromptEnvelope], Any],
    now_ms: int,
    limits: ConnectionLimits | None = None,
) -> dict[str, Any]:
    """Return the frame to answer with: ``accepted`` once published, or an ``error``."""
    try:
        message = parse_client_message(
            body, fallback_request_id=caller.request_id, limits=settings.limits()
        )
    except ProtocolError as exc:
        return exc.frame(caller.request_id)
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
        provider=settings.llm_provider,
        max_tokens=settings.max_tokens,
        keep_open=message.keep_open,
        conversation_id=message.conversation_id,
        principal_id=caller.principal_id,
        received_at=now_ms,
    )
    try:
        publish(envelope)
    except Exception:  # SNS unreachable or refusing: the client must hear of it, with its id
        logger.exception("could not queue the prompt")
        if limits is not None:
            _give_back(limits, caller.connection_id)
        return error_frame(
            envelope.request_id, ErrorCode.INTERNAL, "the request could not be queued; try again"
        )
    return accepted_frame(envelope.request_id)


def _give_back(limits: ConnectionLimits, connection_id: str) -> None:
    try:
        limits.cancel(connection_id)
    except Exception:
        logger.exception("could not give back the stream slot")


def publish_prompt(sns: Any, topic_arn: str, envelope: PromptEnvelope) -> str:
    """Publish the envelope with attributes that subscription filter policies can match."""
    response = sns.publish(
        TopicArn=topic_arn,
        Message=envelope.to_json(),
        MessageAttributes=envelope.message_attributes(),
    )
    return str(response["MessageId"])
