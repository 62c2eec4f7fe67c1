"""The WebSocket wire protocol: client messages, server frames (``frames``), and their
validation.

This module is the one definition of the protocol. The handlers, the local stack, the tests
and docs/protocol.md (its JSON Schema, ``schema.SCHEMA``, is built from these names) use it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from enum import StrEnum
from typing import Any, NamedTuple

from . import transport

# The server's frames are defined in frames.py, and are the protocol's too.
from .frames import (
    TEXT_FRAMES as TEXT_FRAMES,
)
from .frames import (
    Encoded as Encoded,
)
from .frames import (
    ErrorCode as ErrorCode,
)
from .frames import (
    FinishReason as FinishReason,
)
from .frames import (
    accepted_frame as accepted_frame,
)
from .frames import (
    delta_frame as delta_frame,
)
from .frames import (
    encode as encode,
)
from .frames import (
    end_frame as end_frame,
)
from .frames import (
    error_frame as error_frame,
)
from .frames import (
    reasoning_frame as reasoning_frame,
)
from .frames import (
    start_frame as start_frame,
)

PROTOCOL_VERSION = 1


class Action(StrEnum):
    SEND_MESSAGE = "sendMessage"
    CANCEL = "cancel"
    RESUME = "resume"


ROLES = ("user", "assistant")
# Match with fullmatch: "$" alone would let a trailing "\n" through.
REQUEST_ID_PATTERN = re.compile(r"^[A-Za-z0-9._:=+/-]{1,128}$")


# --------------------------------------------------------------------------- client messages


class ProtocolError(Exception):
    """A client mistake, answered with an error frame; never a bug.

    ``dialect`` is ``ai-sdk`` for a WebSocketChatTransport frame: answered in that protocol.
    """

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        request_id: str | None = None,
        dialect: str | None = None,
    ) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message
        self.request_id = request_id
        self.dialect = dialect

    def in_dialect(self, dialect: str) -> ProtocolError:
        """The same mistake, answered in ``dialect``'s words."""
        return ProtocolError(self.code, self.message, self.request_id, dialect)

    def __str__(self) -> str:
        return f"{self.code.value}: {self.message}"

    def frame(self, fallback_request_id: str | None = None) -> dict[str, Any]:
        request_id = self.request_id or fallback_request_id
        if self.dialect == transport.DIALECT:
            return transport.error_frame(request_id or "", f"{self.code.value}: {self.message}")
        return error_frame(request_id, self.code, self.message)


# A NamedTuple, not a dataclass: the message handler's cold start (docs/architecture.md).
class SendMessage(NamedTuple):
    """Answer these messages; the fields are the client's, checked (``send_message``)."""

    request_id: str
    messages: tuple[dict[str, str], ...]
    model: str
    keep_open: bool = False
    conversation_id: str | None = None
    resumable: bool = False
    dialect: str | None = None
    """``ai-sdk``: sent through the AI SDK's WebSocketChatTransport (core.transport)."""
    chat_id: str | None = None
    cache: bool = True
    """False: this request neither reads nor fills the response cache (docs/cache.md)."""

    @property
    def action(self) -> Action:
        return Action.SEND_MESSAGE


class Cancel(NamedTuple):
    """Stop the answer to ``request_id``; it ends with ``finishReason: "cancelled"``."""

    request_id: str
    dialect: str | None = None

    @property
    def action(self) -> Action:
        return Action.CANCEL


class Resume(NamedTuple):
    """Send the rest of ``request_id``'s answer, the deltas after ``after_seq``, to this socket."""

    request_id: str
    after_seq: int = -1
    dialect: str | None = None
    chat_id: str | None = None
    """With the transport: the chat whose running answer to replay, under ``request_id``."""

    @property
    def action(self) -> Action:
        return Action.RESUME


ClientMessage = SendMessage | Cancel | Resume

MAX_SEQ = 2**31 - 1
"""The largest ``seq`` (and ``afterSeq``) the protocol allows."""


class Limits(NamedTuple):
    """What a client may send; taken from Settings so each deployment can tune it."""

    max_prompt_bytes: int = 16 * 1024
    max_messages: int = 50
    default_model: str = "gpt-4o-mini"
    allowed_models: tuple[str, ...] = ()
    max_body_bytes: int = 128 * 1024

    @property
    def models(self) -> tuple[str, ...]:
        return (self.default_model, *(m for m in self.allowed_models if m != self.default_model))


def _require_str(obj: Mapping[str, Any], key: str, *, required: bool) -> str | None:
    value = obj.get(key)
    if value is None:
        if required:
            raise ProtocolError(ErrorCode.BAD_REQUEST, f"'{key}' is required")
        return None
    if not isinstance(value, str):
        raise ProtocolError(
            ErrorCode.BAD_REQUEST, f"'{key}' must be a string, not {_json_type(value)}"
        )
    return value


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


_NOT_UNICODE = "'{}' holds text that is not valid Unicode (a lone surrogate)"


def _is_unicode(text: str) -> bool:
    """False for text holding a lone surrogate, which JSON escapes ("\\ud800") can carry."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _utf8_len(text: str) -> int:
    return len(text.encode("utf-8", errors="surrogatepass"))


def _request_id(body: Mapping[str, Any], fallback: str) -> str:
    value = body.get("requestId")
    if value is None:
        return fallback
    if not isinstance(value, str) or not REQUEST_ID_PATTERN.fullmatch(value):
        raise ProtocolError(
            ErrorCode.BAD_REQUEST,
            "'requestId' must be 1-128 characters of letters, digits or ._:=+/-",
            fallback,
        )
    return value


def _messages(
    body: Mapping[str, Any], limits: Limits, request_id: str
) -> tuple[dict[str, str], ...]:
    has_prompt, has_messages = "prompt" in body, "messages" in body
    if has_prompt and has_messages:
        raise ProtocolError(
            ErrorCode.BAD_REQUEST, "send either 'prompt' or 'messages', not both", request_id
        )
    if has_messages:
        raw = body["messages"]
        if not isinstance(raw, list) or not raw:
            raise ProtocolError(
                ErrorCode.BAD_REQUEST, "'messages' must be a non-empty array", request_id
            )
        if len(raw) > limits.max_messages:
            raise ProtocolError(
                ErrorCode.PAYLOAD_TOO_LARGE,
                f"'messages' has {len(raw)} items; the limit is {limits.max_messages}",
                request_id,
            )
        messages = []
        for i, item in enumerate(raw):
            if not isinstance(item, dict):
                raise ProtocolError(
                    ErrorCode.BAD_REQUEST, f"'messages[{i}]' must be an object", request_id
                )
            role, content = item.get("role"), item.get("content")
            if role not in ROLES:
                raise ProtocolError(
                    ErrorCode.BAD_REQUEST,
                    f"'messages[{i}].role' must be one of {', '.join(ROLES)}",
                    request_id,
                )
            if not isinstance(content, str) or not content.strip():
                raise ProtocolError(
                    ErrorCode.BAD_REQUEST,
                    f"'messages[{i}].content' must be a non-empty string",
                    request_id,
                )
            if not _is_unicode(content):
                raise ProtocolError(
                    ErrorCode.BAD_REQUEST, _NOT_UNICODE.format(f"messages[{i}].content"), request_id
                )
            messages.append({"role": role, "content": content})
        if messages[-1]["role"] != "user":
            raise ProtocolError(
                ErrorCode.BAD_REQUEST, "the last of 'messages' must have role 'user'", request_id
            )
    else:
        try:
            prompt = _require_str(body, "prompt", required=True)
        except ProtocolError as exc:
            raise ProtocolError(exc.code, exc.message, request_id) from None
        assert prompt is not None
        if not prompt.strip():
            raise ProtocolError(ErrorCode.BAD_REQUEST, "'prompt' must not be empty", request_id)
        if not _is_unicode(prompt):
            raise ProtocolError(ErrorCode.BAD_REQUEST, _NOT_UNICODE.format("prompt"), request_id)
        messages = [{"role": "user", "content": prompt}]
    size = sum(_utf8_len(m["content"]) for m in messages)
    if size > limits.max_prompt_bytes:
        raise ProtocolError(
            ErrorCode.PAYLOAD_TOO_LARGE,
            f"the prompt is {size} bytes; the limit is {limits.max_prompt_bytes}",
            request_id,
        )
    return tuple(messages)


def send_message(body: Mapping[str, Any], limits: Limits, request_id: str) -> SendMessage:
    messages = _messages(body, limits, request_id)
    try:
        model = _require_str(body, "model", required=False) or limits.default_model
        conversation_id = _require_str(body, "conversationId", required=False)
    except ProtocolError as exc:
        raise ProtocolError(exc.code, exc.message, request_id) from None
    if model not in limits.models:
        raise ProtocolError(
            ErrorCode.MODEL_NOT_ALLOWED,
            f"model '{model[:64]}' is not allowed; choose one of {', '.join(limits.models)}",
            request_id,
        )
    keep_open = body.get("keepOpen", False)
    if not isinstance(keep_open, bool):
        raise ProtocolError(ErrorCode.BAD_REQUEST, "'keepOpen' must be a boolean", request_id)
    resumable = body.get("resumable", False)
    if not isinstance(resumable, bool):
        raise ProtocolError(ErrorCode.BAD_REQUEST, "'resumable' must be a boolean", request_id)
    cache = body.get("cache", True)
    if not isinstance(cache, bool):
        raise ProtocolError(ErrorCode.BAD_REQUEST, "'cache' must be a boolean", request_id)
    if conversation_id is not None and not REQUEST_ID_PATTERN.fullmatch(conversation_id):
        raise ProtocolError(
            ErrorCode.BAD_REQUEST,
            "'conversationId' must be 1-128 characters of letters, digits or ._:=+/-",
            request_id,
        )
    return SendMessage(
        request_id, messages, model, keep_open, conversation_id, resumable, cache=cache
    )


def _resume(body: Mapping[str, Any], request_id: str) -> Resume:
    after_seq = body.get("afterSeq", -1)
    if (
        isinstance(after_seq, bool)
        or not isinstance(after_seq, int)
        or not -1 <= after_seq <= MAX_SEQ
    ):
        raise ProtocolError(
            ErrorCode.BAD_REQUEST,
            "'afterSeq' must be an integer from -1 (nothing received yet) to the last seq received",
            request_id,
        )
    return Resume(request_id, after_seq)


def parse_client_message(
    body: str | bytes | None, *, fallback_request_id: str, limits: Limits
) -> ClientMessage:
    """Validate one client message, or raise ProtocolError naming what is wrong."""
    if body is None or body == "" or body == b"":
        raise ProtocolError(ErrorCode.BAD_REQUEST, "the message is empty", fallback_request_id)
    size = len(body) if isinstance(body, bytes) else _utf8_len(body)
    if size > limits.max_body_bytes:
        raise ProtocolError(
            ErrorCode.PAYLOAD_TOO_LARGE,
            f"the message is {size} bytes; the limit is {limits.max_body_bytes}",
            fallback_request_id,
        )
    try:
        parsed = json.loads(body)
    except (ValueError, RecursionError):
        raise ProtocolError(
            ErrorCode.BAD_REQUEST, "the message is not valid JSON", fallback_request_id
        ) from None
    if not isinstance(parsed, dict):
        raise ProtocolError(
            ErrorCode.BAD_REQUEST,
            f"the message must be a JSON object, not {_json_type(parsed)}",
            fallback_request_id,
        )
    if transport.is_transport_frame(parsed):
        return transport.read_client_frame(parsed, limits, fallback_request_id)
    request_id = _request_id(parsed, fallback_request_id)
    action = parsed.get("action")
    if action is None:
        raise ProtocolError(ErrorCode.BAD_REQUEST, "'action' is required", request_id)
    if not isinstance(action, str):  # a wrong type is a malformed message, not an unknown action
        raise ProtocolError(
            ErrorCode.BAD_REQUEST,
            f"'action' must be a string, not {_json_type(action)}",
            request_id,
        )
    if action == Action.SEND_MESSAGE.value:
        return send_message(parsed, limits, request_id)
    if action in (Action.CANCEL.value, Action.RESUME.value):
        # These name an answer the client asked for; the gateway's own id names nothing.
        if parsed.get("requestId") is None:
            raise ProtocolError(
                ErrorCode.BAD_REQUEST, f"'requestId' is required to {action}", request_id
            )
        return Cancel(request_id) if action == Action.CANCEL.value else _resume(parsed, request_id)
    shown = action[:64]
    known = ", ".join(a.value for a in Action)
    raise ProtocolError(
        ErrorCode.UNKNOWN_ACTION, f"unknown action '{shown}'; expected one of {known}", request_id
    )
