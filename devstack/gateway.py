"""A local API Gateway WebSocket API: routes frames to functions with API Gateway-shaped events.

Limits as in API Gateway: 32 KB per frame (a scan of raw frame headers, since aiohttp only checks
whole messages) and 128 KB per message (aiohttp's max_msg_size), both closing with 1009; binary
frames close with 1003; idle timeout (only frames from the client, pings included, count as
activity) and maximum connection life close with 1001.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import fnmatch
import json
import logging
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web
from aiohttp.http_websocket import WebSocketError

from . import routes as routes_module
from .routes import ROUTES, Route, select_route
from .runtime import ACCOUNT_ID, REGION, FunctionError

log = logging.getLogger("devstack.gateway")

Invoke = Callable[[str, dict[str, Any]], Awaitable[Any]]

FRAME_LIMIT = 32 * 1024
MESSAGE_LIMIT = 128 * 1024

CLOSE_REASONS = {
    1000: "Connection Closed Normally",
    1001: "Going away",
    1003: "Binary frames are not supported",
    1005: "Client-side close frame status not set",
    1006: "Connection closed abnormally",
    1009: "Message too big",
}


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


def _now_ms() -> int:
    return int(time.time() * 1000)


def _api_gateway_id(size: int = 11) -> str:
    """An id shaped like API Gateway's (``L0SM9cOFvHcCIhw=``), safe in a URL path."""
    return base64.urlsafe_b64encode(os.urandom(size)).decode()


def _request_time(ms: int) -> str:
    return time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(ms / 1000))


def iso8601(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms / 1000)) + f".{ms % 1000:03d}Z"


@dataclass
class Connection:
    """One open socket, as API Gateway and the Management API know it."""

    id: str
    ws: web.WebSocketResponse
    connected_at: int
    source_ip: str
    user_agent: str
    authorizer: dict[str, Any] | None = None
    last_active_at: int = 0
    closing: bool = False
    close_code: int | None = None  # set when the server closes it
    close_reason: str = ""
    inbox: asyncio.Queue[str | None] = field(default_factory=asyncio.Queue)
    send_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    activity: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def open(self) -> bool:
        return not self.closing and not self.ws.closed

    async def send(self, data: bytes | str) -> None:
        async with self.send_lock:
            if isinstance(data, bytes):
                try:
                    data = data.decode("utf-8")
                except UnicodeDecodeError:
                    await self.ws.send_bytes(data)
                    return
            await self.ws.send_str(data)

    def close_soon(self, code: int, reason: str) -> None:
        """Close from the server side (DeleteConnection, limits); $disconnect follows."""
        if self.closing:
            return
        self.closing, self.close_code, self.close_reason = True, code, reason
        asyncio.get_running_loop().create_task(self.ws.close(code=code, message=reason.encode()))


class _FrameGuard:
    """Sits in front of aiohttp's frame parser and fails the socket on an oversized frame."""

    def __init__(self, inner: Any, ws: web.WebSocketResponse, limit: int) -> None:
        self._inner, self._ws, self._limit = inner, ws, limit
        self._header = bytearray()
        self._skip = 0
        self._failed = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def feed_eof(self) -> None:
        self._inner.feed_eof()

    def feed_data(self, data: bytes) -> tuple[bool, bytes]:
        if self._failed:
            return True, b""
        size = self.scan(data)
        if size is not None:
            self._failed = True
            exc = WebSocketError(
                WSCloseCode.MESSAGE_TOO_BIG,
                f"frame of {size} bytes exceeds the {self._limit}-byte frame limit",
            )
            self._ws._reader.set_exception(exc)  # what aiohttp does for an oversized message
            return True, b""
        return self._inner.feed_data(data)

    def scan(self, data: bytes) -> int | None:
        """Follow frame boundaries through ``data``; the payload length of a too-big frame."""
        i, n = 0, len(data)
        while i < n:
            if self._skip:
                step = min(self._skip, n - i)
                self._skip -= step
                i += step
                continue
            header = self._header
            while True:
                need = 2
                if len(header) >= 2:
                    short = header[1] & 0x7F
                    need += {126: 2, 127: 8}.get(short, 0) + (4 if header[1] & 0x80 else 0)
                if len(header) >= need:
                    break
                if i >= n:
                    return None
                take = min(need - len(header), n - i)
                header += data[i : i + take]
                i += take
            short = header[1] & 0x7F
            length = (
                short
                if short < 126
                else int.from_bytes(header[2:4], "big")
                if short == 126
                else int.from_bytes(header[2:10], "big")
            )
            opcode = header[0] & 0x0F
            self._header = bytearray()
            if length > self._limit and opcode in (0x0, 0x1, 0x2):
                return length
            self._skip = length
        return None


class _LimitedWebSocketResponse(web.WebSocketResponse):
    def __init__(self, *, max_frame_bytes: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._max_frame_bytes = max_frame_bytes

    def _post_start(self, request: web.BaseRequest, protocol: Any, writer: Any) -> None:
        handler = request.protocol
        tail = bytes(getattr(handler, "_message_tail", b""))
        super()._post_start(request, protocol, writer)
        try:
            guard = _FrameGuard(handler._payload_parser, self, self._max_frame_bytes)
            if tail and guard.scan(tail) is not None:
                guard._failed = True
            handler._payload_parser = guard
        except AttributeError:  # another aiohttp: keep going with the message limit only
            log.warning("this aiohttp hides its frame parser; the frame limit is not enforced")


class Gateway:
    """The WebSocket side; ``add_routes`` mounts it (after the Management API) on an app."""

    def __init__(self, config: GatewayConfig, invoke: Invoke) -> None:
        self.config = config
        self.invoke = invoke
        self.domain_name = f"{config.host}:{config.port}"  # updated once the port is known
        self.connections: dict[str, Connection] = {}
        self.closed_connections = 0
        self._tasks: set[asyncio.Task[Any]] = set()
        self._changed = asyncio.Event()

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/{tail:.*}", self.handle)

    def bound(self, port: int) -> None:
        """Record the port actually listened on; events carry it as ``domainName``."""
        self.config.port = port
        self.domain_name = f"{self.config.host}:{port}"

    async def drain(self) -> None:
        """Wait until every closed socket's $disconnect (and queued messages) has been handled."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------------ events

    def _context(
        self,
        conn_id: str,
        route_key: str,
        event_type: str,
        connected_at: int,
        identity: dict[str, str],
        authorizer: dict[str, Any] | None,
    ) -> dict[str, Any]:
        now = _now_ms()
        request_id = _api_gateway_id()
        ctx: dict[str, Any] = {
            "routeKey": route_key,
            "eventType": event_type,
            "extendedRequestId": request_id,
            "requestTime": _request_time(now),
            "messageDirection": "IN",
            "stage": self.config.stage,
            "connectedAt": connected_at,
            "requestTimeEpoch": now,
            "identity": identity,
            "requestId": request_id,
            "domainName": self.domain_name,
            "connectionId": conn_id,
            "apiId": self.config.api_id,
        }
        if authorizer is not None:
            ctx["authorizer"] = authorizer
        return ctx

    def _headers(self, request: web.Request) -> tuple[dict[str, str], dict[str, list[str]]]:
        multi: dict[str, list[str]] = {}
        for name, value in request.headers.items():
            multi.setdefault(name, []).append(value)
        peer = request.remote or "127.0.0.1"
        extra = {
            "X-Amzn-Trace-Id": f"Root=1-{int(time.time()):08x}-{uuid.uuid4().hex[:24]}",
            "X-Forwarded-For": peer,
            "X-Forwarded-Port": str(self.config.port),
            "X-Forwarded-Proto": "http",
        }
        for name, value in extra.items():
            multi.setdefault(name, [value])
        return {k: v[-1] for k, v in multi.items()}, multi

    def _connect_context(
        self,
        request: web.Request,
        conn_id: str,
        connected_at: int,
        authorizer: dict[str, Any] | None,
    ) -> dict[str, Any]:
        """The $connect requestContext, shared by the authorizer's event and the route's."""
        identity = {
            "sourceIp": request.remote or "127.0.0.1",
            "userAgent": request.headers.get("User-Agent", ""),
        }
        return self._context(
            conn_id, routes_module.CONNECT, "CONNECT", connected_at, identity, authorizer
        )

    def _connect_event(
        self,
        request: web.Request,
        conn_id: str,
        connected_at: int,
        authorizer: dict[str, Any] | None,
    ) -> dict[str, Any]:
        headers, multi = self._headers(request)
        event: dict[str, Any] = {
            "headers": headers,
            "multiValueHeaders": multi,
            "requestContext": self._connect_context(request, conn_id, connected_at, authorizer),
            "isBase64Encoded": False,
        }
        if request.query:
            event["queryStringParameters"] = {k: v for k, v in request.query.items()}
            event["multiValueQueryStringParameters"] = {
                k: request.query.getall(k) for k in request.query
            }
        return event

    def _message_event(self, conn: Connection, route_key: str, body: str) -> dict[str, Any]:
        ctx = self._context(
            conn.id,
            route_key,
            "MESSAGE",
            conn.connected_at,
            {"sourceIp": conn.source_ip},
            conn.authorizer,
        )
        ctx["messageId"] = _api_gateway_id()
        return {"requestContext": ctx, "body": body, "isBase64Encoded": False}

    def _disconnect_event(self, conn: Connection, code: int, reason: str) -> dict[str, Any]:
        headers = {
            "Host": self.domain_name,
            "x-api-key": "",
            "X-Forwarded-For": "",
            "x-restapi": "",
        }
        ctx = self._context(
            conn.id,
            routes_module.DISCONNECT,
            "DISCONNECT",
            conn.connected_at,
            {"sourceIp": conn.source_ip, "userAgent": conn.user_agent},
            conn.authorizer,
        )
        ctx["disconnectStatusCode"] = code
        ctx["disconnectReason"] = reason
        return {
            "headers": headers,
            "multiValueHeaders": {k: [v] for k, v in headers.items()},
            "requestContext": ctx,
            "isBase64Encoded": False,
        }

    # ------------------------------------------------------------------ $connect

    async def _authorize(
        self, request: web.Request, conn_id: str, connected_at: int
    ) -> dict[str, Any] | web.Response:
        source = routes_module.AUTHORIZER_IDENTITY_SOURCE
        if source and source[0] == "querystring" and not request.query.get(source[1]):
            return _reject(401, "Unauthorized")  # no identity source: the authorizer never runs
        headers, multi = self._headers(request)
        method_arn = (
            f"arn:aws:execute-api:{REGION}:{ACCOUNT_ID}:{self.config.api_id}/"
            f"{self.config.stage}/{routes_module.CONNECT}"
        )
        event = {
            "type": "REQUEST",
            "methodArn": method_arn,
            "headers": headers,
            "multiValueHeaders": multi,
            "queryStringParameters": dict(request.query),
            "multiValueQueryStringParameters": {k: request.query.getall(k) for k in request.query},
            "stageVariables": {},
            "requestContext": self._connect_context(request, conn_id, connected_at, None),
        }
        started = time.monotonic()
        try:
            result = await self.invoke(routes_module.AUTHORIZER_FUNCTION, event)
        except FunctionError as exc:
            if exc.error.get("errorMessage") == "Unauthorized":
                return _reject(401, "Unauthorized")
            log.error("authorizer failed: %s", exc)
            return _reject(500, "Internal server error")
        if not isinstance(result, dict) or not policy_allows(
            result.get("policyDocument"), method_arn
        ):
            return _reject(403, "Forbidden")
        context = result.get("context") or {}
        return {
            **{k: v for k, v in context.items()},
            "principalId": result.get("principalId"),
            "integrationLatency": int((time.monotonic() - started) * 1000),
        }

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if request.headers.get("Upgrade", "").lower() != "websocket":
            return web.Response(status=426, text="this is a WebSocket endpoint\n")
        conn_id = _api_gateway_id()
        connected_at = _now_ms()
        authorizer = None
        if self.config.auth_enabled:
            decision = await self._authorize(request, conn_id, connected_at)
            if isinstance(decision, web.Response):
                return decision
            authorizer = decision
        connect = self.config.routes.get(routes_module.CONNECT)
        protocols: tuple[str, ...] = ()
        if connect is not None:
            event = self._connect_event(request, conn_id, connected_at, authorizer)
            try:
                result = await self.invoke(connect.function, event)
            except FunctionError as exc:
                log.error("$connect failed: %s", exc)
                return _reject(500, "Internal server error")
            status = result.get("statusCode", 200) if isinstance(result, dict) else 200
            if not 200 <= int(status) < 300:
                return _reject(int(status), (result or {}).get("body") or "Forbidden")
            chosen = ((result or {}).get("headers") or {}).get("Sec-WebSocket-Protocol")
            if chosen:
                protocols = (chosen,)
        ws = _LimitedWebSocketResponse(
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
        watchdog = asyncio.ensure_future(self._watch(conn))
        try:
            await self._receive(conn)
        finally:
            watchdog.cancel()
            conn.closing = True
            self.connections.pop(conn_id, None)
            conn.inbox.put_nowait(None)
            self._spawn(self._finish(conn, consumer))
        return ws

    # ------------------------------------------------------------------ messages

    async def _receive(self, conn: Connection) -> None:
        ws = conn.ws
        while True:
            msg = await ws.receive()
            if msg.type in (WSMsgType.TEXT, WSMsgType.BINARY, WSMsgType.PING):
                conn.last_active_at = _now_ms()
                conn.activity.set()
            if msg.type == WSMsgType.TEXT:
                conn.inbox.put_nowait(msg.data)
            elif msg.type == WSMsgType.PING:
                await ws.pong(msg.data)
            elif msg.type == WSMsgType.BINARY:
                conn.close_soon(1003, CLOSE_REASONS[1003])
            elif msg.type in (
                WSMsgType.CLOSE,
                WSMsgType.CLOSING,
                WSMsgType.CLOSED,
                WSMsgType.ERROR,
            ):
                return

    async def _watch(self, conn: Connection) -> None:
        """Close the socket once idle too long or alive too long, as API Gateway does."""
        loop = asyncio.get_running_loop()
        born = loop.time()
        while True:
            conn.activity.clear()
            idle_at = loop.time() + self.config.idle_timeout
            life_at = born + self.config.max_connection_life
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(
                    conn.activity.wait(), max(0.0, min(idle_at, life_at) - loop.time())
                )
                continue
            if loop.time() >= life_at:
                conn.close_soon(1001, "Going away: maximum connection duration reached")
            else:
                conn.close_soon(1001, "Going away: idle timeout")
            return

    async def _consume(self, conn: Connection) -> None:
        """Run one connection's messages in arrival order, one at a time."""
        while (body := await conn.inbox.get()) is not None:
            try:
                await self._route(conn, body)
            except Exception:  # a bug here must not stop the connection's later messages
                log.exception("routing a message failed")

    async def _route(self, conn: Connection, body: str) -> None:
        route = select_route(body, self.config.routes)
        if route is None:
            await self._reply(
                conn,
                {"message": "Forbidden", "connectionId": conn.id, "requestId": _api_gateway_id()},
            )
            return
        event = self._message_event(conn, route.key, body)
        try:
            result = await self.invoke(route.function, event)
        except FunctionError as exc:
            log.error("%s failed: %s", route.key, exc)
            await self._reply(
                conn,
                {
                    "message": "Internal server error",
                    "connectionId": conn.id,
                    "requestId": event["requestContext"]["requestId"],
                },
            )
            return
        if route.two_way and isinstance(result, dict) and result.get("body") not in (None, ""):
            body_out = result["body"]
            if not isinstance(body_out, str):
                body_out = json.dumps(body_out)
            await self._reply(conn, body_out)

    async def _reply(self, conn: Connection, data: dict[str, Any] | str) -> None:
        if not conn.open:
            return  # the route response of a closed socket goes nowhere
        text = data if isinstance(data, str) else json.dumps(data)
        with contextlib.suppress(ConnectionError, RuntimeError):
            await conn.send(text)

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
            await self.invoke(route.function, self._disconnect_event(conn, code, reason))
        except FunctionError as exc:
            log.error("$disconnect failed: %s", exc)


def _reject(status: int, message: str) -> web.Response:
    return web.json_response({"message": message}, status=status)


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
