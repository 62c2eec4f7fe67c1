"""The server's frames (start, delta, reasoning, end, error, accepted), their codes and reasons,
and their one encoding: the exact bytes sent on the socket.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from enum import StrEnum
from typing import Any


class ErrorCode(StrEnum):
    BAD_REQUEST = "bad_request"
    UNKNOWN_ACTION = "unknown_action"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    MODEL_NOT_ALLOWED = "model_not_allowed"
    RATE_LIMITED = "rate_limited"
    UNAUTHORIZED = "unauthorized"
    NOT_FOUND = "not_found"
    LLM_ERROR = "llm_error"
    TIMEOUT = "timeout"
    INTERNAL = "internal"


class FinishReason(StrEnum):
    STOP = "stop"
    LENGTH = "length"
    CONTENT_FILTER = "content_filter"
    CANCELLED = "cancelled"
    ERROR = "error"


def accepted_frame(request_id: str) -> dict[str, Any]:
    return {"type": "accepted", "requestId": request_id}


def start_frame(request_id: str, model: str) -> dict[str, Any]:
    return {"type": "start", "requestId": request_id, "model": model}


def delta_frame(request_id: str, seq: int, text: str) -> dict[str, Any]:
    return {"type": "delta", "requestId": request_id, "seq": seq, "text": text}


def reasoning_frame(request_id: str, seq: int, text: str) -> dict[str, Any]:
    """The model's reasoning, apart from its answer, in the same gapless ``seq`` space."""
    return {"type": "reasoning", "requestId": request_id, "seq": seq, "text": text}


TEXT_FRAMES = {"delta": delta_frame, "reasoning": reasoning_frame}
"""The frames that carry text, each numbered in one ``seq`` space: answer and reasoning."""


def end_frame(
    request_id: str,
    finish_reason: str,
    input_tokens: int | None = None,
    output_tokens: int | None = None,
    *,
    cached: bool = False,
    coalesced: bool = False,
) -> dict[str, Any]:
    """The answer's last frame. ``cached``: it came from the response cache, and ``usage`` is the
    original answer's; ``coalesced``: it came from an identical request's stream (docs/cache.md)."""
    frame: dict[str, Any] = {
        "type": "end",
        "requestId": request_id,
        "finishReason": finish_reason,
        "usage": {"inputTokens": input_tokens, "outputTokens": output_tokens},
    }
    if cached:
        frame["cached"] = True
    if coalesced:
        frame["coalesced"] = True
    return frame


def error_frame(request_id: str | None, code: ErrorCode, message: str) -> dict[str, Any]:
    return {"type": "error", "requestId": request_id, "code": code.value, "message": message}


class Encoded(bytes):
    """A frame's exact bytes on the socket that still carry the frame they encode, so that
    whoever passes them on (the relay) reads its type and seq without decoding them again."""

    frame: Mapping[str, Any]


def encode(frame: Mapping[str, Any]) -> Encoded:
    """Serialise a frame as compact UTF-8 JSON, the exact bytes sent on the socket.

    An error message may quote a client's text, and JSON lets a client send a lone surrogate
    ("\\ud800") that UTF-8 cannot hold; it becomes "?" rather than an unsendable frame.
    """
    text = json.dumps(frame, ensure_ascii=False, separators=(",", ":"))
    data = Encoded(text.encode("utf-8", errors="replace"))
    data.frame = frame
    return data
