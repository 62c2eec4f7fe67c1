"""The JSON Schema of the wire protocol, built from the names in ``protocol``: docs/protocol.md
publishes it (``make schema`` writes docs/protocol.schema.json), and the tests validate every
frame against it.
"""

from __future__ import annotations

import json
from typing import Any

from .protocol import MAX_SEQ, REQUEST_ID_PATTERN, ROLES, ErrorCode, FinishReason

_REQUEST_ID = {"type": "string", "pattern": REQUEST_ID_PATTERN.pattern}


def _text_frame(kind: str) -> dict[str, Any]:
    """A frame of text (an answer's delta, or its reasoning): one seq space for both."""
    return {
        "type": "object",
        "required": ["type", "requestId", "seq", "text"],
        "properties": {
            "type": {"const": kind},
            "requestId": {"type": "string"},
            "seq": {"type": "integer", "minimum": 0},
            "text": {"type": "string"},
        },
        "additionalProperties": False,
    }


_NULLABLE_INT = {"type": ["integer", "null"], "minimum": 0}

SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "https://github.com/lambda-llm-stream/protocol.schema.json",
    "title": "lambda-llm-stream WebSocket protocol",
    "$defs": {
        "sendMessage": {
            "type": "object",
            "required": ["action"],
            "properties": {
                "action": {"const": "sendMessage"},
                "requestId": _REQUEST_ID,
                "prompt": {"type": "string", "minLength": 1},
                "messages": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["role", "content"],
                        "properties": {
                            "role": {"enum": list(ROLES)},
                            "content": {"type": "string", "minLength": 1},
                        },
                    },
                },
                "model": {"type": "string"},
                "keepOpen": {"type": "boolean"},
                "conversationId": _REQUEST_ID,
                "resumable": {"type": "boolean"},
                "cache": {"type": "boolean"},
            },
            "oneOf": [{"required": ["prompt"]}, {"required": ["messages"]}],
        },
        "cancel": {
            "type": "object",
            "required": ["action", "requestId"],
            "properties": {"action": {"const": "cancel"}, "requestId": _REQUEST_ID},
        },
        "resume": {
            "type": "object",
            "required": ["action", "requestId"],
            "properties": {
                "action": {"const": "resume"},
                "requestId": _REQUEST_ID,
                "afterSeq": {"type": "integer", "minimum": -1, "maximum": MAX_SEQ},
            },
        },
        "clientMessage": {
            "oneOf": [
                {"$ref": "#/$defs/sendMessage"},
                {"$ref": "#/$defs/cancel"},
                {"$ref": "#/$defs/resume"},
            ]
        },
        "accepted": {
            "type": "object",
            "required": ["type", "requestId"],
            "properties": {"type": {"const": "accepted"}, "requestId": {"type": "string"}},
            "additionalProperties": False,
        },
        "start": {
            "type": "object",
            "required": ["type", "requestId", "model"],
            "properties": {
                "type": {"const": "start"},
                "requestId": {"type": "string"},
                "model": {"type": "string"},
            },
            "additionalProperties": False,
        },
        "delta": _text_frame("delta"),
        "reasoning": _text_frame("reasoning"),
        "end": {
            "type": "object",
            "required": ["type", "requestId", "finishReason", "usage"],
            "properties": {
                "type": {"const": "end"},
                "requestId": {"type": "string"},
                "finishReason": {"enum": [r.value for r in FinishReason]},
                "usage": {
                    "type": "object",
                    "required": ["inputTokens", "outputTokens"],
                    "properties": {"inputTokens": _NULLABLE_INT, "outputTokens": _NULLABLE_INT},
                },
                "cached": {"const": True},
                "coalesced": {"const": True},
            },
            "additionalProperties": False,
        },
        "error": {
            "type": "object",
            "required": ["type", "requestId", "code", "message"],
            "properties": {
                "type": {"const": "error"},
                "requestId": {"type": ["string", "null"]},
                "code": {"enum": [c.value for c in ErrorCode]},
                "message": {"type": "string", "minLength": 1},
            },
            "additionalProperties": False,
        },
        "serverFrame": {
            "oneOf": [
                {"$ref": "#/$defs/accepted"},
                {"$ref": "#/$defs/start"},
                {"$ref": "#/$defs/delta"},
                {"$ref": "#/$defs/reasoning"},
                {"$ref": "#/$defs/end"},
                {"$ref": "#/$defs/error"},
            ]
        },
    },
}


if __name__ == "__main__":  # python -m llmstream.core.schema > docs/protocol.schema.json
    print(json.dumps(SCHEMA, indent=2))
