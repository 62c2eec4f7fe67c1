"""The WebSocket API's routes as the local gateway sees them, read from template.yaml, and route
selection as API Gateway does it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from .template import Template

ROUTE_SELECTION_EXPRESSION = "$request.body.action"

CONNECT, DISCONNECT, DEFAULT = "$connect", "$disconnect", "$default"


@dataclass(frozen=True)
class Route:
    key: str
    function: str  # the function's short name (its folder under functions/, e.g. message)
    two_way: bool = False  # the function's return body is sent back to the client


def template_routes(template: Template) -> dict[str, Route]:
    """The template's routes, to the functions by their short names (``functions/<folder>``)."""
    functions = template.functions()
    return {
        key: Route(key, functions[route.function].name, route.two_way)
        for key, route in template.routes().items()
    }


ROUTES: dict[str, Route] = template_routes(Template())
"""template.yaml's routes at its parameters' defaults (the gateway's, unless told otherwise)."""

AUTHORIZER_FUNCTION = "authorizer"
# Like template.yaml: no identity source, so the authorizer runs on every $connect and finds the
# token in the query string or in Sec-WebSocket-Protocol itself.
AUTHORIZER_IDENTITY_SOURCE: tuple[str, str] | None = None

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
