"""A local API Gateway WebSocket API: routes frames to functions with API Gateway-shaped events.

Limits as in API Gateway: 32 KB per frame and 128 KB per message (devstack.ws_frames), both
closing with 1009; binary frames close with 1003; idle timeout and maximum connection life
(devstack.ws_connection) close with 1001.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from . import routes as routes_module
from .handshake import Invoke, authorize, connect, policy_allows
from .invocation import FunctionError
from .routes import ROUTES, Route, select_route
from .ws_connection import CLOSE_REASONS, Connection, now_ms
from .ws_events import Events, api_gateway_id
from .ws_frames import FRAME_LIMIT, MESSAGE_LIMIT, LimitedWebSocketResponse

__all__ = ["Gateway", "GatewayConfig", "policy_allows"]  # policy_allows: for the tests

log = logging.getLogger("devstack.gateway")


@dataclass
class GatewayConfig:
    host: str = "127.0.0.1"
    port: int = 3001
    stage: str = "local"
    api_id: str = "devstack01"
    idle_timeout: float = 10 * 60.0
    max_connection_life: float = 2 * 60 * 60.0
    max_frame_bytes: int = FRAME_LIMIT
    max_message_bytes: int = MESSAGE_LIMIT
    auth_enabled: bool = False
    post_latency: float = 0.0  # seconds added to every PostToConnection (benchmarks)
    throttle_every: int = 0  # every Nth PostToConnection gets 429 LimitExceededException
    routes: dict[str, Route] = field(default_factory=lambda: dict(ROUTES))


class Gateway:
    """The WebSocket side; ``add_routes`` mounts it (after the Management API) on an app."""

    def __init__(self, config: GatewayConfig, invoke: Invoke) -> None:
        self.config = config
        self.invoke = invoke
        self.events = Events(config)
        self.connections: dict[str, Connection] = {}
        self.closed_connections = 0
        self._tasks: set[asyncio.Task[Any]] = set()
        self._changed = asyncio.Event()

    @property
    def domain_name(self) -> str:
        """What events carry as ``domainName``: host and the port listened on."""
        return self.events.domain_name

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/{tail:.*}", self.handle)

    def bound(self, port: int) -> None:
        """Record the port actually listened on; events carry it as ``domainName``."""
        self.config.port = port

    async def drain(self) -> None:
        """Wait until every closed socket's $disconnect (and queued messages) has been handled."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------------ $connect

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if request.headers.get("Upgrade", "").lower() != "websocket":
            return web.Response(status=426, text="this is a WebSocket endpoint\n")
        conn_id = api_gateway_id()
        connected_at = now_ms()
        authorizer = None
        if self.config.auth_enabled:
            decision = await authorize(self.invoke, self.events, request, conn_id, connected_at)
            if isinstance(decision, web.Response):
                return decision
            authorizer = decision
        protocols = await connect(
            self.invoke, self.events, self.config.routes, request, conn_id, connected_at, authorizer
        )
        if isinstance(protocols, web.Response):
            return protocols
        ws = LimitedWebSocketResponse(
            max_frame_bytes=self.config.max_frame_bytes,
            max_msg_size=self.config.max_message_bytes,
            protocols=protocols,
            autoping=False,  # pings count as activity, so we answer them ourselves
            compress=False,  # API Gateway negotiates no extensions
        )
        await ws.prepare(request)
        conn = Connection(
            conn_id,
            ws,
            connected_at,
            request.remote or "127.0.0.1",
            request.headers.get("User-Agent", ""),
            authorizer,
            last_active_at=connected_at,
        )
        self.connections[conn_id] = conn
        consumer = asyncio.ensure_future(self._consume(conn))
        watchdog = asyncio.ensure_future(conn.watch(self.config))
        try:
            await conn.receive()
        finally:
            watchdog.cancel()
            conn.closing = True
            self.connections.pop(conn_id, None)
            conn.inbox.put_nowait(None)
            self._spawn(self._finish(conn, consumer))
        return ws

    # ------------------------------------------------------------------ messages

    async def _consume(self, conn: Connection) -> None:
        """Run each of one connection's messages as an integration call of its own, at once, as
        API Gateway does: none waits for another, so their order is not promised. $disconnect
        comes once the calls in flight have returned."""
        running: set[asyncio.Future[None]] = set()
        while (body := await conn.inbox.get()) is not None:
            call = asyncio.ensure_future(self._route_safely(conn, body))
            running.add(call)
            call.add_done_callback(running.discard)
        if running:
            await asyncio.gather(*running)

    async def _route_safely(self, conn: Connection, body: str) -> None:
        try:
            await self._route(conn, body)
        except Exception:  # a bug here must not stop the connection's other messages
            log.exception("routing a message failed")

    async def _route(self, conn: Connection, body: str) -> None:
        route = select_route(body, self.config.routes)
        if route is None:
            await conn.reply(
                {"message": "Forbidden", "connectionId": conn.id, "requestId": api_gateway_id()}
            )
            return
        event = self.events.message(conn, route.key, body)
        try:
            result = await self.invoke(route.function, event)
        except FunctionError as exc:
            log.error("%s failed: %s", route.key, exc)
            await conn.reply(
                {
                    "message": "Internal server error",
                    "connectionId": conn.id,
                    "requestId": event["requestContext"]["requestId"],
                }
            )
            return
        if route.two_way and isinstance(result, dict) and result.get("body") not in (None, ""):
            body_out = result["body"]
            if not isinstance(body_out, str):
                body_out = json.dumps(body_out)
            await conn.reply(body_out)

    # ------------------------------------------------------------------ $disconnect

    async def _finish(self, conn: Connection, consumer: asyncio.Future[None]) -> None:
        await consumer
        code = conn.close_code or conn.ws.close_code or 1006
        reason = conn.close_reason or CLOSE_REASONS.get(code, "")
        self.closed_connections += 1
        route = self.config.routes.get(routes_module.DISCONNECT)
        if route is None:
            return
        try:
            await self.invoke(route.function, self.events.disconnect(conn, code, reason))
        except FunctionError as exc:
            log.error("$disconnect failed: %s", exc)
