"""The Vercel AI SDK's WebSocketChatTransport protocol (the ``ai`` package, version 7), spoken on
the same socket as ours: its client frames read into our messages, and our frames written as
its UI message chunks.

The client (``ai`` 7.0.173, ``dist/index.js``, ``WebSocketChatTransport``) sends ``send``,
``resume`` and ``abort`` frames, which carry no ``action`` and so reach ``$default``. It accepts
only ``start``, ``chunk`` (a gapless ``sequence`` from 0 for each requestId), ``end``, ``error``
and ``no-active`` frames, and drops the whole connection on anything else: so nothing of our own
protocol (``accepted``, ``delta``) ever reaches such a client. docs/protocol.md has the mapping.
No library writes these frames for Python, hence this module.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .protocol import ClientMessage, Limits

DIALECT = "ai-sdk"
"""The envelope's and the record's name for requests made through this transport."""
CLIENT_TYPES = ("send", "resume", "abort")
OVERHEAD_BYTES = 96
"""How much larger a text chunk frame is than our delta frame of the same text, at most: the
sender cuts text this much shorter, so that every chunk frame stays within 32 KB."""

FINISH_REASONS = {
    "stop": "stop",
    "length": "length",
    "content_filter": "content-filter",
    "error": "error",
}
"""Our finishReason → the SDK's (``stop``, ``length``, ``content-filter``, ``tool-calls``,
``error``, ``interrupted``, ``other``). A cancelled answer ends with an ``abort`` chunk."""


def is_transport_frame(doc: Mapping[str, Any]) -> bool:
    """A WebSocketChatTransport client frame: a ``type`` it sends, and no ``action`` of ours."""
    return "action" not in doc and doc.get("type") in CLIENT_TYPES


def error_frame(request_id: str, error_text: str) -> dict[str, Any]:
    return {"type": "error", "requestId": request_id, "errorText": error_text}


def no_active_frame(request_id: str) -> dict[str, Any]:
    return {"type": "no-active", "requestId": request_id}


def read_client_frame(doc: Mapping[str, Any], limits: Limits, fallback: str) -> ClientMessage:
    """A transport client frame as our message: ``send`` a SendMessage that keeps the socket
    open and is resumable (the chat id its conversation when only the newest message is sent),
    ``resume`` a Resume of the chat's running answer, ``abort`` a Cancel. Raises ProtocolError
    (answered with the transport's ``error`` frame) naming what is wrong."""
    from .protocol import (  # here: protocol imports this module
        REQUEST_ID_PATTERN,
        Cancel,
        ErrorCode,
        ProtocolError,
        Resume,
        send_message,
    )

    def refuse(code: ErrorCode, text: str, request_id: str) -> ProtocolError:
        return ProtocolError(code, text, request_id, dialect=DIALECT)

    rid = doc.get("requestId")
    if not isinstance(rid, str) or not REQUEST_ID_PATTERN.fullmatch(rid):
        raise refuse(
            ErrorCode.BAD_REQUEST, "'requestId' must be 1-128 letters, digits or ._:=+/-", fallback
        )
    if doc["type"] == "abort":
        return Cancel(rid, dialect=DIALECT)
    chat_id = doc.get("id")
    if not isinstance(chat_id, str) or not REQUEST_ID_PATTERN.fullmatch(chat_id):
        raise refuse(
            ErrorCode.BAD_REQUEST,
            "'id' (the chat id) must be 1-128 letters, digits or ._:=+/-",
            rid,
        )
    if doc["type"] == "resume":
        return Resume(rid, -1, dialect=DIALECT, chat_id=chat_id)
    raw, body = doc.get("messages"), doc.get("body")
    if not isinstance(raw, list) or not raw:
        raise refuse(
            ErrorCode.BAD_REQUEST, "'messages' must be a non-empty list of UI messages", rid
        )
    try:
        messages = [m for i, item in enumerate(raw) if (m := message_text(item, i)) is not None]
    except ValueError as exc:
        raise refuse(ErrorCode.BAD_REQUEST, str(exc), rid) from None
    ours: dict[str, Any] = {"messages": messages, "keepOpen": True, "resumable": True}
    if isinstance(body, dict):
        for name in ("model", "cache"):  # what a transport's `body` may choose, as in ours
            if body.get(name) is not None:
                ours[name] = body[name]
    if len(raw) == 1:  # the newest message only: the server keeps the chat's history
        ours["conversationId"] = chat_id
    try:
        send = send_message(ours, limits, rid)
    except ProtocolError as exc:
        raise exc.in_dialect(DIALECT) from None
    return send._replace(dialect=DIALECT, chat_id=chat_id)


def message_text(message: Any, index: int) -> dict[str, str] | None:
    """A UIMessage as one of our messages ({role, content}); None for one that holds no text
    (an assistant turn of reasoning only). Raises ValueError naming what cannot be sent."""
    if not isinstance(message, dict):
        raise ValueError(f"messages[{index}] must be an object")
    role = message.get("role")
    if role not in ("user", "assistant"):
        raise ValueError(
            f"messages[{index}].role must be 'user' or 'assistant' (the server sets the system "
            "prompt), not {role!r}"[:200]
        )
    parts = message.get("parts")
    if not isinstance(parts, list):
        raise ValueError(f"messages[{index}].parts must be a list")
    texts = []
    for part in parts:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind in ("reasoning", "step-start"):
            continue  # what the model thought before: not sent back to it (docs/protocol.md)
        else:
            shown = kind if isinstance(kind, str) else type(part).__name__
            raise ValueError(
                f"messages[{index}] has a part of type {shown[:40]!r}; only text parts are "
                "supported"
            )
    if not texts:
        if role == "user":
            raise ValueError(f"messages[{index}] has no text part")
        return None
    return {"role": role, "content": "".join(texts)}


class ChunkEncoder:
    """Our frames for one request, as the transport's frames under ``request_id``: every chunk
    numbered from 0, text and reasoning opened and closed as parts. A resume starts a new
    encoder (a new requestId, from 0) and replays the answer through it."""

    def __init__(self, request_id: str) -> None:
        self.request_id = request_id
        self.sequence = 0
        self._open: str | None = None  # "text" or "reasoning": the part a delta goes on
        self._parts = 0
        self._model = ""

    def encode(self, frame: Mapping[str, Any]) -> list[bytes]:
        kind = frame.get("type")
        if kind == "start":
            self._model = str(frame.get("model", ""))
            return [
                self._frame({"type": "start"}),
                self._chunk({"type": "start"}),
                self._chunk({"type": "start-step"}),
            ]
        if kind in ("delta", "reasoning"):
            part = "text" if kind == "delta" else "reasoning"
            out = [] if self._open == part else [*self._close(), *self._begin(part)]
            return [
                *out,
                self._chunk({"type": f"{part}-delta", "id": self._id, "delta": frame["text"]}),
            ]
        if kind == "end":
            reason = frame.get("finishReason")
            out = [*self._close(), self._chunk({"type": "finish-step"})]
            if reason == "cancelled":
                out.append(self._chunk({"type": "abort"}))
            else:
                metadata = {"model": self._model, "usage": frame.get("usage")}
                metadata.update({k: True for k in ("cached", "coalesced") if frame.get(k)})
                finish: dict[str, Any] = {"type": "finish", "messageMetadata": metadata}
                finish["finishReason"] = FINISH_REASONS.get(str(reason), "other")
                out.append(self._chunk(finish))
            return [*out, self._frame({"type": "end"})]
        if kind == "error":
            text = f"{frame.get('code', 'internal')}: {frame.get('message', '')}"
            return [self._frame({"type": "error", "errorText": text})]
        return []  # `accepted` and the like: nothing a transport client would take

    @property
    def _id(self) -> str:
        return f"{self._open}-{self._parts}"

    def _begin(self, part: str) -> list[bytes]:
        self._open, self._parts = part, self._parts + 1
        return [self._chunk({"type": f"{part}-start", "id": self._id})]

    def _close(self) -> list[bytes]:
        if self._open is None:
            return []
        closing = self._chunk({"type": f"{self._open}-end", "id": self._id})
        self._open = None
        return [closing]

    def _frame(self, fields: dict[str, Any]) -> bytes:
        return _encode({**fields, "requestId": self.request_id})

    def _chunk(self, chunk: dict[str, Any]) -> bytes:
        frame = {"type": "chunk", "requestId": self.request_id, "sequence": self.sequence}
        self.sequence += 1
        return _encode({**frame, "chunk": chunk})


def _encode(frame: dict[str, Any]) -> bytes:
    return json.dumps(frame, ensure_ascii=False, separators=(",", ":")).encode(
        "utf-8", errors="replace"
    )
