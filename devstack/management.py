"""The API Gateway Management API (``/{stage}/@connections/{id}``), as boto3 calls it.

Errors carry ``x-amzn-ErrorType`` so botocore raises the modelled exceptions (GoneException...).
``post_latency`` and ``throttle_every`` inject delay and 429s for benchmarks and fault tests.
"""

from __future__ import annotations

import asyncio
import itertools

from aiohttp import web

from .gateway import Gateway
from .ws_connection import Connection, iso8601
from .ws_frames import MESSAGE_LIMIT


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response(
        {"message": message}, status=status, headers={"x-amzn-ErrorType": code}
    )


class ManagementApi:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.posts = 0
        self._counter = itertools.count(1)

    def add_routes(self, app: web.Application) -> None:
        path = "/{stage}/@connections/{connection_id}"
        app.router.add_post(path, self._post)
        app.router.add_get(path, self._get)
        app.router.add_delete(path, self._delete)

    def _connection(self, request: web.Request) -> Connection | web.Response:
        if request.match_info["stage"] != self.gateway.config.stage:
            return _error(403, "ForbiddenException", "Forbidden")
        conn = self.gateway.connections.get(request.match_info["connection_id"])
        if conn is None or not conn.open:
            return _error(410, "GoneException", "the connection is gone")
        return conn

    async def _post(self, request: web.Request) -> web.Response:
        config = self.gateway.config
        if config.post_latency:
            await asyncio.sleep(config.post_latency)
        if config.throttle_every and next(self._counter) % config.throttle_every == 0:
            return _error(429, "LimitExceededException", "Rate exceeded")
        conn = self._connection(request)
        if isinstance(conn, web.Response):
            return conn
        data = await request.read()
        if len(data) > MESSAGE_LIMIT:
            return _error(
                413, "PayloadTooLargeException", f"payload of {len(data)} bytes is too large"
            )
        try:
            await conn.send(data)
        except (ConnectionError, RuntimeError):
            return _error(410, "GoneException", "the connection is gone")
        self.posts += 1
        return web.Response(status=200)

    async def _get(self, request: web.Request) -> web.Response:
        conn = self._connection(request)
        if isinstance(conn, web.Response):
            return conn
        return web.json_response(
            {  # the wire names; boto3 shows ConnectedAt, Identity...
                "connectedAt": iso8601(conn.connected_at),
                "lastActiveAt": iso8601(conn.last_active_at),
                "identity": {"sourceIp": conn.source_ip, "userAgent": conn.user_agent},
            }
        )

    async def _delete(self, request: web.Request) -> web.Response:
        conn = self._connection(request)
        if isinstance(conn, web.Response):
            return conn
        conn.close_soon(1000, "Connection Closed Normally")
        return web.Response(status=204)
