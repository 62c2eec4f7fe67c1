"""The StreamLayer's package: stream an LLM answer to an API Gateway WebSocket connection.

For a function of your own that answers its own route: ``llmstream.publish(prompt,
connection=event)`` queues the prompt for the stream function (llmstream.intake.publish).
These names are imported on first use, so ``import llmstream`` costs next to nothing.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .core.envelope import Address
    from .core.protocol import ErrorCode, ProtocolError
    from .intake.publish import Published, publish

_EXPORTS = {
    "publish": ".intake.publish",
    "Published": ".intake.publish",
    "ProtocolError": ".core.protocol",
    "ErrorCode": ".core.protocol",
    "Address": ".core.envelope",
}

__all__ = ["Address", "ErrorCode", "ProtocolError", "Published", "publish"]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    globals()[name] = value
    return value
