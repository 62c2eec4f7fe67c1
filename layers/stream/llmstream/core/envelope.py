"""The versioned SNS messages from the message handler to a stream function: a prompt to stream,
or (``"kind": "resume"``) a finished answer to replay to a client that reconnected.

The message handler builds them; every stream subscriber parses them and ignores what it cannot
trust. A prompt document has no ``kind``, so a stream function that predates resume ignores a
resume document as a prompt without messages.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any, NamedTuple

from .protocol import MAX_SEQ, REQUEST_ID_PATTERN, ROLES
from .transport import DIALECT

ENVELOPE_VERSION = 1
RESUME_KIND = "resume"


# The Management API endpoint is built from these two: nothing may smuggle a path or a scheme in.
DOMAIN_PATTERN = re.compile(r"^[A-Za-z0-9.-]{1,253}(:[0-9]{1,5})?$")
STAGE_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,128}$")


class InvalidEnvelope(ValueError):
    """The SNS message is not a version-1 prompt document; the reason never quotes the prompt."""


# A NamedTuple, not a dataclass: the message handler's cold start (docs/architecture.md).
class Address(NamedTuple):
    """Where a request's frames go: one connection of one API stage."""

    connection_id: str
    domain_name: str
    stage: str

    @property
    def valid(self) -> bool:
        """A connection id, and an endpoint that is a host name and a stage, nothing more."""
        return bool(
            self.connection_id
            and len(self.connection_id) <= 128
            and DOMAIN_PATTERN.fullmatch(self.domain_name)
            and STAGE_PATTERN.fullmatch(self.stage)
        )


def _address(doc: Mapping[str, Any]) -> Address:
    connection_id = _field(doc, "connectionId", str)
    if not connection_id or len(connection_id) > 128:
        raise InvalidEnvelope("field 'connectionId' has an invalid format")
    address = Address(connection_id, _field(doc, "domainName", str), _field(doc, "stage", str))
    if not address.valid:
        raise InvalidEnvelope("invalid domainName or stage")
    return address


def _addressed(envelope: PromptEnvelope | ResumeEnvelope) -> dict[str, Any]:
    """The fields every SNS document carries: its version, its request and where to answer."""
    return {
        "version": envelope.version,
        "requestId": envelope.request_id,
        "connectionId": envelope.connection_id,
        "domainName": envelope.domain_name,
        "stage": envelope.stage,
        "principalId": envelope.principal_id,
        "receivedAt": envelope.received_at,
    }


class PromptEnvelope(NamedTuple):
    """A prompt on its way to the stream function: where to answer, what to ask, and how."""

    request_id: str
    connection_id: str
    domain_name: str
    stage: str
    messages: tuple[dict[str, str], ...]
    model: str
    provider: str
    max_tokens: int
    keep_open: bool = False
    conversation_id: str | None = None
    principal_id: str | None = None
    received_at: int = 0
    resumable: bool = False
    version: int = ENVELOPE_VERSION
    dialect: str | None = None
    """``ai-sdk``: the client speaks the AI SDK's WebSocketChatTransport (core.transport)."""
    cache: bool = True
    """False: the answer neither comes from nor goes to the response cache."""

    @property
    def address(self) -> Address:
        return Address(self.connection_id, self.domain_name, self.stage)

    def to_json(self) -> str:
        doc = {
            **_addressed(self),
            "model": self.model,
            "provider": self.provider,
            "messages": [dict(m) for m in self.messages],
            "options": {
                "maxTokens": self.max_tokens,
                "keepOpen": self.keep_open,
                "conversationId": self.conversation_id,
                "resumable": self.resumable,
                "dialect": self.dialect,
                **({} if self.cache else {"cache": False}),  # only the opt-out is sent
            },
        }
        return json.dumps(doc, ensure_ascii=False, separators=(",", ":"))

    def message_attributes(self) -> dict[str, dict[str, str]]:
        """SNS message attributes, so that subscribers can filter by provider or model."""
        return {
            "provider": {"DataType": "String", "StringValue": self.provider},
            "model": {"DataType": "String", "StringValue": self.model},
            "version": {"DataType": "Number", "StringValue": str(self.version)},
        }


def _field(doc: Mapping[str, Any], key: str, kind: type, *, optional: bool = False) -> Any:
    value = doc.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, kind) or isinstance(value, bool) is not (kind is bool):
        raise InvalidEnvelope(f"field '{key}' is missing or not a {kind.__name__}")
    return value


def parse_envelope(raw: str) -> PromptEnvelope:
    """Parse and check a prompt message body; raise InvalidEnvelope without echoing content."""
    return _parse_prompt(json_object(raw))


def _parse_prompt(doc: Mapping[str, Any]) -> PromptEnvelope:
    if doc.get("kind") is not None:
        raise InvalidEnvelope("not a prompt")
    version = doc.get("version")
    if version != ENVELOPE_VERSION:
        raise InvalidEnvelope(
            f"unsupported version {version!r}" if isinstance(version, int) else "missing version"
        )
    addressing = _addressing(doc)
    messages = _field(doc, "messages", list)
    if not messages:
        raise InvalidEnvelope("field 'messages' is empty")
    for m in messages:
        if (
            not isinstance(m, dict)
            or m.get("role") not in ROLES
            or not isinstance(m.get("content"), str)
        ):
            raise InvalidEnvelope("field 'messages' holds an invalid message")
    options = doc.get("options") or {}
    if not isinstance(options, dict):
        raise InvalidEnvelope("field 'options' is not an object")
    max_tokens = _field(options, "maxTokens", int)
    if max_tokens <= 0:
        raise InvalidEnvelope("field 'maxTokens' must be positive")
    return PromptEnvelope(
        **addressing,
        messages=tuple({"role": m["role"], "content": m["content"]} for m in messages),
        model=_field(doc, "model", str),
        provider=_field(doc, "provider", str),
        max_tokens=max_tokens,
        keep_open=bool(options.get("keepOpen", False)),
        conversation_id=_field(options, "conversationId", str, optional=True),
        resumable=bool(options.get("resumable", False)),
        dialect=_dialect(options),
        cache=options.get("cache", True) is not False,
    )


class ResumeEnvelope(NamedTuple):
    """Replay a finished answer's stored frames after ``after_seq`` to another connection.

    ``attach`` is the request's resume count after this resume; the stream function replays a
    given attach once, however often SNS delivers the message.
    """

    request_id: str
    connection_id: str
    domain_name: str
    stage: str
    after_seq: int
    attach: int
    provider: str
    principal_id: str | None = None
    received_at: int = 0
    version: int = ENVELOPE_VERSION

    @property
    def address(self) -> Address:
        return Address(self.connection_id, self.domain_name, self.stage)

    def to_json(self) -> str:
        doc = {
            **_addressed(self),
            "kind": RESUME_KIND,
            "provider": self.provider,
            "afterSeq": self.after_seq,
            "attach": self.attach,
        }
        return json.dumps(doc, ensure_ascii=False, separators=(",", ":"))

    def message_attributes(self) -> dict[str, dict[str, str]]:
        """The provider attribute routes it to a stream function like any prompt."""
        return {
            "provider": {"DataType": "String", "StringValue": self.provider},
            "kind": {"DataType": "String", "StringValue": RESUME_KIND},
            "version": {"DataType": "Number", "StringValue": str(self.version)},
        }


def _dialect(options: Mapping[str, Any]) -> str | None:
    dialect = options.get("dialect")
    if dialect not in (None, DIALECT):
        raise InvalidEnvelope("field 'dialect' is not one this function speaks")
    return dialect


def _addressing(doc: Mapping[str, Any]) -> dict[str, Any]:
    """The fields every SNS document carries, checked (the parsing twin of ``_addressed``)."""
    request_id = _request_id(doc)
    address = _address(doc)
    return {
        "request_id": request_id,
        "connection_id": address.connection_id,
        "domain_name": address.domain_name,
        "stage": address.stage,
        "principal_id": _field(doc, "principalId", str, optional=True),
        "received_at": _field(doc, "receivedAt", int, optional=True) or 0,
    }


def _request_id(doc: Mapping[str, Any]) -> str:
    request_id: str = _field(doc, "requestId", str)
    if not REQUEST_ID_PATTERN.fullmatch(request_id):
        raise InvalidEnvelope("field 'requestId' has an invalid format")
    return request_id


def json_object(raw: str) -> dict[str, Any]:
    """``raw`` parsed as a JSON object, or InvalidEnvelope saying which it is not."""
    try:
        doc = json.loads(raw)
    except (TypeError, ValueError, RecursionError):
        raise InvalidEnvelope("message is not JSON") from None
    if not isinstance(doc, dict):
        raise InvalidEnvelope("message is not a JSON object")
    return doc


def _parse_resume(doc: Mapping[str, Any]) -> ResumeEnvelope:
    if doc.get("version") != ENVELOPE_VERSION:
        raise InvalidEnvelope("unsupported version")
    addressing = _addressing(doc)
    after_seq = _field(doc, "afterSeq", int)
    attach = _field(doc, "attach", int)
    if not -1 <= after_seq <= MAX_SEQ or attach < 1:
        raise InvalidEnvelope("field 'afterSeq' or 'attach' is out of range")
    return ResumeEnvelope(
        **addressing,
        after_seq=after_seq,
        attach=attach,
        provider=_field(doc, "provider", str),
    )


def parse_message(raw: str) -> PromptEnvelope | ResumeEnvelope:
    """Parse any stream message: a prompt, or a resume; raise InvalidEnvelope otherwise."""
    doc = json_object(raw)
    kind = doc.get("kind")
    if kind == RESUME_KIND:
        return _parse_resume(doc)
    if kind is not None:
        raise InvalidEnvelope("unknown kind")
    return _parse_prompt(doc)
