"""``llmstream.publish``: queue a prompt for the stream function from a handler of your own, one
that answers its own WebSocket route (examples/custom-handler).

It is the message function's ``sendMessage`` (``accept.send``) with the prompt given in code: the
same validation, limits and error messages, the request's record registered (so cancel, resume
and duplicate deliveries work), the connection's abuse limits, then the versioned envelope on
PromptTopic. What is refused raises ``ProtocolError``, whose ``frame()`` is the error to answer.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from aws_lambda_powertools.utilities.data_classes import APIGatewayWebSocketEvent

from ..core.clients import aws
from ..core.envelope import Address, PromptEnvelope, ResumeEnvelope
from ..core.protocol import (
    Action,
    ErrorCode,
    ProtocolError,
    SendMessage,
    accepted_frame,
    parse_client_message,
)
from ..core.settings import ConfigurationError, Settings, get_settings
from ..requests.lifecycle import NewRequest, Requests
from .accept import Caller, Intake, publish_prompt, send
from .limits import ConnectionLimits

OPTIONS = ("model", "keepOpen", "conversationId", "resumable", "cache")
"""What ``options`` may hold: a ``sendMessage``'s optional fields, in the protocol's words."""


@dataclass(frozen=True)
class Published:
    """A prompt on its way: the stream function answers it on the connection."""

    request_id: str
    message_id: str
    """SNS's id of the published message."""
    envelope: PromptEnvelope

    @property
    def frame(self) -> dict[str, Any]:
        """The ``accepted`` frame, for the route response."""
        return accepted_frame(self.request_id)


def publish(
    prompt: str | Sequence[Mapping[str, str]],
    *,
    connection: Mapping[str, Any] | Address,
    request_id: str | None = None,
    options: Mapping[str, Any] | None = None,
    principal_id: str | None = None,
    topic_arn: str | None = None,
    settings: Settings | None = None,
    sns: Any = None,
    dynamodb: Any = None,
) -> Published:
    """Publish ``prompt`` (text, or ``user``/``assistant`` messages ending with a user turn) for
    the stream function to answer on ``connection``.

    ``connection`` is the API Gateway WebSocket event the handler was invoked with (a dict or
    Powertools' ``APIGatewayWebSocketEvent``: connectionId, domainName, stage, and the
    ``$connect`` authorizer's principalId from its requestContext), or an ``Address`` with,
    for an authenticated connection, its ``principal_id``. ``request_id`` defaults to the
    event's requestId (a new id with an Address). ``options`` may hold ``model``,
    ``keepOpen``, ``conversationId``, ``resumable`` and ``cache``, as in a ``sendMessage``.

    The topic is ``topic_arn`` or PROMPT_TOPIC_ARN, and the settings (limits, models, tables)
    are the environment's, as template.yaml sets them for the message function. With
    FRAMES_TABLE the request's record is registered here; without it, none is, and the stream
    function's claim creates it (so a duplicate delivery still streams nothing, but a request
    id in use is not refused, and a cancel sent before the answer starts finds nothing). With
    CONNECTIONS_TABLE the connection's rate and stream limits apply, as to a ``sendMessage``.

    Raises ``ProtocolError`` (``code``, ``message``, ``frame()``) for what the message function
    would answer with an error frame: an invalid prompt or option, a request id in use, a
    limit, or (``internal``) a record or topic that could not be reached.
    """
    settings = settings or get_settings()
    topic = topic_arn or settings.prompt_topic_arn
    if not topic:
        raise ConfigurationError(
            "PROMPT_TOPIC_ARN is not set: set it to the main stack's PromptTopicArn output "
            "(exported as <stack>-PromptTopicArn), or pass topic_arn="
        )
    caller = caller_of(connection, principal_id)
    message = _message(prompt, caller.request_id, request_id, options, settings)
    sns = sns or aws("sns")
    dynamodb = dynamodb or aws("dynamodb")
    sent: list[tuple[PromptEnvelope, str]] = []

    def queue(envelope: PromptEnvelope | ResumeEnvelope) -> None:
        assert isinstance(envelope, PromptEnvelope)
        sent.append((envelope, publish_prompt(sns, topic, envelope)))

    limits, requests = _limits(dynamodb, settings), _requests(dynamodb, settings)
    frame = send(
        message, Intake(caller, settings, queue, int(time.time() * 1000), limits, requests)
    )
    if frame["type"] != "accepted" or not sent:
        raise ProtocolError(ErrorCode(frame["code"]), frame["message"], frame["requestId"])
    envelope, message_id = sent[0]
    return Published(envelope.request_id, message_id, envelope)


def caller_of(connection: Mapping[str, Any] | Address, principal_id: str | None = None) -> Caller:
    """Who the prompt is for: the event's connection and principal, or the Address given."""
    if isinstance(connection, Address):
        caller = Caller(connection, uuid.uuid4().hex, principal_id)
    else:
        raw = getattr(connection, "raw_event", connection)  # a Powertools event, or its dict
        if not isinstance(raw, Mapping) or not isinstance(raw.get("requestContext"), Mapping):
            raise TypeError(
                "connection must be an API Gateway WebSocket event (with its requestContext) "
                "or an llmstream.Address"
            )
        if principal_id is not None:
            raise TypeError("with an event, the principal is its authorizer's: leave it out")
        ctx = APIGatewayWebSocketEvent(dict(raw)).request_context
        caller = Caller(
            address=Address(ctx.connection_id, ctx.domain_name, ctx.stage),
            request_id=ctx.request_id,
            principal_id=(ctx.raw_event.get("authorizer") or {}).get("principalId"),
        )
    if not caller.address.valid:
        raise ProtocolError(
            ErrorCode.BAD_REQUEST,
            "the connection needs a connectionId, and a domainName and stage that are a host "
            "name and a stage name",
            caller.request_id,
        )
    return caller


def _message(
    prompt: str | Sequence[Mapping[str, str]],
    fallback_request_id: str,
    request_id: str | None,
    options: Mapping[str, Any] | None,
    settings: Settings,
) -> SendMessage:
    """The prompt as the ``sendMessage`` a client would send, validated as the message function
    validates one, so that its limits and error messages are the same."""
    unknown = sorted(set(options or {}) - set(OPTIONS))
    if unknown:
        raise ProtocolError(
            ErrorCode.BAD_REQUEST,
            f"unknown option {unknown[0][:64]!r}; expected {', '.join(OPTIONS)}",
            request_id or fallback_request_id,
        )
    body: dict[str, Any] = {"action": Action.SEND_MESSAGE.value, **(options or {})}
    if request_id is not None:
        body["requestId"] = request_id
    if isinstance(prompt, str):
        body["prompt"] = prompt
    else:
        body["messages"] = [dict(m) if isinstance(m, Mapping) else m for m in prompt]
    message = parse_client_message(
        json.dumps(body), fallback_request_id=fallback_request_id, limits=settings.limits()
    )
    assert isinstance(message, SendMessage)  # the action says so
    return message


class _Unregistered(Requests):
    """No FRAMES_TABLE: no record is made here; the stream function's claim creates it."""

    def register(self, key: str, new: NewRequest) -> bool:
        return True

    def forget(self, key: str) -> None:
        return None


def _requests(dynamodb: Any, settings: Settings) -> Requests:
    if not settings.frames_table:
        return _Unregistered(dynamodb, "")
    return Requests.of(dynamodb, settings)


def _limits(dynamodb: Any, settings: Settings) -> ConnectionLimits:
    """The message function's abuse limits on the connections table; none without one."""
    table = settings.connections_table
    return ConnectionLimits(
        dynamodb,
        table,
        per_connection=settings.rate_limit_per_minute if table else 0,
        per_principal=settings.principal_rate_limit_per_minute if table else 0,
        max_streams=settings.max_concurrent_streams if table else 0,
        connection_ttl_s=settings.connection_ttl_seconds,
    )
