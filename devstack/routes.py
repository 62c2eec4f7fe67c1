"""The WebSocket API's routes and functions as template.yaml declares them, and route selection.

tests/unit/test_devstack_routes.py checks these tables against template.yaml so they cannot drift.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

ROUTE_SELECTION_EXPRESSION = "$request.body.action"

CONNECT, DISCONNECT, DEFAULT = "$connect", "$disconnect", "$default"


@dataclass(frozen=True)
class Route:
    key: str
    function: str  # folder under functions/
    two_way: bool = False  # the function's return body is sent back to the client


ROUTES: dict[str, Route] = {
    r.key: r
    for r in (
        Route(CONNECT, "connect"),
        Route(DISCONNECT, "disconnect"),
        Route("sendMessage", "message", two_way=True),
        Route("cancel", "message", two_way=True),
        Route("resume", "message", two_way=True),
        Route(DEFAULT, "message", two_way=True),
    )
}

AUTHORIZER_FUNCTION = "authorizer"
# Like template.yaml: no identity source, so the authorizer runs on every $connect and finds the
# token in the query string or in Sec-WebSocket-Protocol itself.
AUTHORIZER_IDENTITY_SOURCE: tuple[str, str] | None = None


@dataclass(frozen=True)
class FunctionDefaults:
    """Timeout, memory and async retries of one function, as the template sets them."""

    logical_id: str
    timeout: float
    memory_mb: int
    async_retries: int = 2  # Lambda's default for asynchronous invocations


FUNCTIONS: dict[str, FunctionDefaults] = {
    "connect": FunctionDefaults("ConnectFunction", timeout=10, memory_mb=256),
    "disconnect": FunctionDefaults("DisconnectFunction", timeout=10, memory_mb=256),
    "message": FunctionDefaults("MessageFunction", timeout=10, memory_mb=256),
    "stream": FunctionDefaults("StreamFunction", timeout=900, memory_mb=512, async_retries=1),
    "authorizer": FunctionDefaults("AuthorizerFunction", timeout=10, memory_mb=256),
    "deadletter": FunctionDefaults("DeadLetterFunction", timeout=60, memory_mb=256),
}

STREAM_FILTER_ATTRIBUTE = "provider"
"""StreamFunction's SNS subscription only takes prompts whose ``provider`` equals LlmProvider."""


def select_route(body: str | bytes | None, routes: dict[str, Route] = ROUTES) -> Route | None:
    """Evaluate ``$request.body.action`` like API Gateway: no match (or no JSON) is $default."""
    key = None
    try:
        parsed = json.loads(body) if body else None
    except (ValueError, RecursionError):
        parsed = None
    if isinstance(parsed, dict):
        action = parsed.get("action")
        if isinstance(action, str) and action not in (CONNECT, DISCONNECT):
            key = action
    route = routes.get(key) if key is not None else None
    return route or routes.get(DEFAULT)
