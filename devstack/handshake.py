"""The WebSocket handshake: the Lambda authorizer (its REQUEST event, and an IAM-style evaluation
of the policy it returns), then the $connect route; either may refuse the connection.
"""

from __future__ import annotations

import fnmatch
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web

from . import routes as routes_module
from .invocation import ACCOUNT_ID, REGION, FunctionError
from .routes import Route
from .ws_events import Events

log = logging.getLogger("devstack.gateway")

Invoke = Callable[[str, dict[str, Any]], Awaitable[Any]]


def reject(status: int, message: str) -> web.Response:
    """A refused handshake, with API Gateway's body."""
    return web.json_response({"message": message}, status=status)


async def authorize(
    invoke: Invoke, events: Events, request: web.Request, conn_id: str, connected_at: int
) -> dict[str, Any] | web.Response:
    """The authorizer's context for the connection's events, or the handshake's refusal."""
    source = routes_module.AUTHORIZER_IDENTITY_SOURCE
    if source and source[0] == "querystring" and not request.query.get(source[1]):
        return reject(401, "Unauthorized")  # no identity source: the authorizer never runs
    headers, multi = events.headers(request)
    method_arn = (
        f"arn:aws:execute-api:{REGION}:{ACCOUNT_ID}:{events.stage.api_id}/"
        f"{events.stage.stage}/{routes_module.CONNECT}"
    )
    event = {
        "type": "REQUEST",
        "methodArn": method_arn,
        "headers": headers,
        "multiValueHeaders": multi,
        "queryStringParameters": dict(request.query),
        "multiValueQueryStringParameters": {k: request.query.getall(k) for k in request.query},
        "stageVariables": {},
        "requestContext": events.connect_context(request, conn_id, connected_at, None),
    }
    started = time.monotonic()
    try:
        result = await invoke(routes_module.AUTHORIZER_FUNCTION, event)
    except FunctionError as exc:
        if exc.error.get("errorMessage") == "Unauthorized":
            return reject(401, "Unauthorized")
        log.error("authorizer failed: %s", exc)
        return reject(500, "Internal server error")
    if not isinstance(result, dict) or not policy_allows(result.get("policyDocument"), method_arn):
        return reject(403, "Forbidden")
    context = result.get("context") or {}
    return {
        **{k: v for k, v in context.items()},
        "principalId": result.get("principalId"),
        "integrationLatency": int((time.monotonic() - started) * 1000),
    }


async def connect(
    invoke: Invoke,
    events: Events,
    routes: Mapping[str, Route],
    request: web.Request,
    conn_id: str,
    connected_at: int,
    authorizer: dict[str, Any] | None,
) -> tuple[str, ...] | web.Response:
    """Run the $connect route: the subprotocols to accept, or the handshake's refusal."""
    route = routes.get(routes_module.CONNECT)
    if route is None:
        return ()
    event = events.connect(request, conn_id, connected_at, authorizer)
    try:
        result = await invoke(route.function, event)
    except FunctionError as exc:
        log.error("$connect failed: %s", exc)
        return reject(500, "Internal server error")
    status = result.get("statusCode", 200) if isinstance(result, dict) else 200
    if not 200 <= int(status) < 300:
        return reject(int(status), (result or {}).get("body") or "Forbidden")
    chosen = ((result or {}).get("headers") or {}).get("Sec-WebSocket-Protocol")
    return (chosen,) if chosen else ()


def policy_allows(policy: Any, resource: str) -> bool:
    """IAM-style evaluation of an authorizer's policy for execute-api:Invoke on ``resource``."""
    if not isinstance(policy, dict):
        return False
    statements = policy.get("Statement") or []
    if isinstance(statements, dict):
        statements = [statements]
    allowed = False
    for statement in statements:
        actions = statement.get("Action", [])
        resources = statement.get("Resource", [])
        actions = [actions] if isinstance(actions, str) else actions
        resources = [resources] if isinstance(resources, str) else resources
        if not any(fnmatch.fnmatchcase("execute-api:Invoke", a) for a in actions):
            continue
        if not any(fnmatch.fnmatchcase(resource, r) for r in resources):
            continue
        if statement.get("Effect") == "Deny":
            return False
        allowed = allowed or statement.get("Effect") == "Allow"
    return allowed
