"""What the mock LLM answers, in OpenAI's chat completions shapes: a request's checks, its
answer (tokens, finish reason, usage) or the error OpenAI would send instead.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .mock_directive import Directive

MODELS = ("gpt-4o-mini", "gpt-4o", "gpt-4.1-mini", "mock-llm")


def error_body(
    status: int, message: str, code: str | None = None, param: str | None = None
) -> dict[str, Any]:
    """An error in the shape OpenAI uses, both as a response body and as an in-stream event."""
    if status == 429:
        kind, code = "requests", code or "rate_limit_exceeded"
    elif status >= 500:
        kind = "server_error"
    else:
        kind = "invalid_request_error"
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


@dataclass(frozen=True)
class Refusal:
    """An error response instead of an answer."""

    status: int
    message: str
    code: str | None = None
    param: str | None = None
    headers: dict[str, str] | None = None


UNAUTHORIZED = Refusal(
    401,
    "You didn't provide an API key. You need to provide your API key in an Authorization "
    "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
    code="invalid_api_key",
)


@dataclass
class Answer:
    """What one request gets: the tokens to send and how the answer ends."""

    model: str
    directive: Directive
    count: int
    finish_reason: str
    prompt_tokens: int
    id: str = field(default_factory=lambda: f"chatcmpl-mock{uuid.uuid4().hex[:24]}")
    created: int = field(default_factory=lambda: int(time.time()))

    @property
    def stop_at(self) -> int:
        """Tokens sent before the answer ends: normally, by failing, or by stalling."""
        ends = (self.count, self.directive.fail_after, self.directive.stall_after)
        return min(k for k in ends if k is not None)

    @property
    def fails(self) -> bool:
        return self.directive.fail_after == self.stop_at

    @property
    def stalls(self) -> bool:
        return not self.fails and self.directive.stall_after == self.stop_at

    @property
    def usage(self) -> dict[str, Any]:
        """As OpenAI counts: completion tokens include the reasoning tokens, broken out apart."""
        reasoning = self.directive.reasoning
        usage: dict[str, Any] = {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.count + reasoning,
            "total_tokens": self.prompt_tokens + self.count + reasoning,
        }
        if reasoning:
            usage["completion_tokens_details"] = {"reasoning_tokens": reasoning}
        return usage

    def deltas(self) -> list[tuple[dict[str, Any], bool]]:
        """The deltas to stream, each with whether it is reasoning: every reasoning token in the
        directive's field (``content`` null, as DeepSeek sends it), then the answer's tokens up to
        where the answer ends."""
        d = self.directive
        thinking = [
            ({"content": None, d.reasoning_field: d.reasoning_token(i)}, True)
            for i in range(d.reasoning)
        ]
        return thinking + [({"content": d.token(i)}, False) for i in range(self.stop_at)]

    @property
    def reasoning_text(self) -> str:
        return "".join(self.directive.reasoning_token(i) for i in range(self.directive.reasoning))

    def envelope(self, obj: str, **rest: Any) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": obj,
            "created": self.created,
            "model": self.model,
            "system_fingerprint": "fp_mock",
            **rest,
        }

    def failure(self) -> dict[str, Any]:
        message = (
            "The server had an error while processing your request "
            f"(#mock fail_after={self.directive.fail_after})."
        )
        return error_body(500, message, code="server_error")


def answer_for(body: Any, should_fail: Callable[[Directive, str], bool]) -> Answer | Refusal:
    """The answer to a chat completions request, or why it gets none. ``should_fail`` decides
    (and counts) a ``#mock status=`` failure for the request's prompt."""
    if not isinstance(body, dict):
        return Refusal(400, "We could not parse the JSON body of the request.")
    model, messages = body.get("model"), body.get("messages")
    if not isinstance(model, str) or not model:
        return Refusal(400, "You must provide a model parameter.", param="model")
    if not isinstance(messages, list) or not messages:
        return Refusal(400, "'messages' must be a non-empty array.", param="messages")
    prompt = _last_user_text(messages)
    try:
        directive = Directive.parse(prompt)
        limit = _token_limit(body)
    except ValueError as err:
        return Refusal(400, str(err), code="invalid_mock_directive")
    if directive.status is not None and should_fail(directive, prompt):
        return Refusal(
            directive.status,
            f"Mock failure requested by '#mock status={directive.status}'.",
            headers={"retry-after": "0"} if directive.status == 429 else None,
        )
    count = directive.tokens if limit is None else min(directive.tokens, limit)
    return Answer(
        model=model,
        directive=directive,
        count=count,
        finish_reason="length" if count < directive.tokens else "stop",
        prompt_tokens=_prompt_tokens(messages),
    )


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: [{"type": "text", "text": ...}, ...]
        return "\n".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def _last_user_text(messages: list[Any]) -> str:
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            return _text(message.get("content"))
    return ""


def _prompt_tokens(messages: list[Any]) -> int:
    return sum(len(_text(m.get("content")).split()) for m in messages if isinstance(m, dict))


def _token_limit(body: dict[str, Any]) -> int | None:
    limits = []
    for key in ("max_tokens", "max_completion_tokens"):
        value = body.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"Invalid '{key}': expected a non-negative integer, got {value!r}.")
        limits.append(value)
    return min(limits) if limits else None
