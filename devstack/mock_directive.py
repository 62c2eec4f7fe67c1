"""The ``#mock key=value ...`` line that scripts a mock model's answer (token count, pace,
reasoning, failures, stalls), shared by the mock LLM and the mock Bedrock endpoint.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

REPLY = (
    "Here is a short answer from the mock language model. It arrives one word at a time, "
    "at a steady pace, so you can watch the reply grow and check that nothing was lost or "
    "reordered on the way."
)
REPLY_TOKENS = tuple(f"{word} " for word in REPLY.split())
"""The reply without a directive: real English words, each token a word plus a trailing space."""


class DirectiveError(ValueError):
    """A ``#mock`` line the server cannot follow; answered with HTTP 400."""


def _whole(key: str, value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise DirectiveError(f"#mock {key}={value!r}: expected a whole number") from None
    if number < 0:
        raise DirectiveError(f"#mock {key}={value!r}: must not be negative")
    return number


REASONING_FIELDS = ("reasoning_content", "reasoning")
"""Where the mock LLM puts reasoning deltas: DeepSeek's, vLLM's and LiteLLM's field, or
OpenRouter's."""


def _reasoning_field(key: str, value: str) -> str:
    if value not in REASONING_FIELDS:
        expected = " or ".join(REASONING_FIELDS)
        raise DirectiveError(f"#mock {key}={value!r}: expected {expected}")
    return value


def _seconds(key: str, value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise DirectiveError(f"#mock {key}={value!r}: expected a number") from None
    if math.isnan(number) or number < 0:
        raise DirectiveError(f"#mock {key}={value!r}: must be a number >= 0")
    return number


@dataclass(frozen=True)
class Directive:
    """How to answer one request: scripted by a ``#mock`` line, or the default English reply."""

    tokens: int = 10
    rate: float = 50.0  # tokens per second; 0 or inf means as fast as possible
    first_token_delay: float = 0.2
    fail_after: int | None = None
    stall_after: int | None = None
    status: int | None = None
    status_times: int | None = None
    reasoning: int = 0  # reasoning tokens streamed before the answer's, at the same pace
    reasoning_field: str = REASONING_FIELDS[0]  # the OpenAI-style delta field that carries them
    line: str = ""  # the #mock line as written; empty for the default reply

    KEYS: ClassVar[dict[str, Callable[[str, str], int | float | str]]] = {
        "tokens": _whole,
        "rate": _seconds,
        "first_token_delay": _seconds,
        "fail_after": _whole,
        "stall_after": _whole,
        "status": _whole,
        "status_times": _whole,
        "reasoning": _whole,
        "reasoning_field": _reasoning_field,
    }

    @classmethod
    def parse(cls, text: str) -> Directive:
        """The first ``#mock key=value ...`` line in ``text``, or the default reply without one."""
        for raw in text.splitlines():
            words = raw.split()
            if not words or words[0] != "#mock":
                continue
            values: dict[str, Any] = {}
            for word in words[1:]:
                key, sep, value = word.partition("=")
                if key not in cls.KEYS:
                    known = ", ".join(cls.KEYS)
                    raise DirectiveError(f"unknown #mock key {key!r} (known keys: {known})")
                if not sep or not value:
                    raise DirectiveError(f"#mock {key}: expected {key}=VALUE")
                values[key] = cls.KEYS[key](key, value)
            status = values.get("status")
            if status is not None and not 400 <= status <= 599:
                raise DirectiveError(f"#mock status={status}: expected an error status 400-599")
            return cls(line=raw.strip(), **values)
        return cls(tokens=len(REPLY_TOKENS), rate=40.0, first_token_delay=0.3)

    @property
    def scripted(self) -> bool:
        return bool(self.line)

    def token(self, i: int) -> str:
        return f"t{i} " if self.scripted else REPLY_TOKENS[i % len(REPLY_TOKENS)]

    def reasoning_token(self, i: int) -> str:
        return f"r{i} "

    def due(self, start: float, i: int) -> float:
        """When token ``i`` of the whole stream is due (the reasoning tokens come first, so the
        answer's token ``k`` is ``reasoning + k``): timed from the start, so sleep overshoot
        never accumulates."""
        if self.rate <= 0 or math.isinf(self.rate):
            return start + self.first_token_delay
        return start + self.first_token_delay + i / self.rate
