"""API Gateway-shaped events for the WebSocket routes ($connect, messages, $disconnect), with
API Gateway's ids and time formats.
"""

from __future__ import annotations

import base64
import os
import time
import uuid
from typing import Any, Protocol

from aiohttp import web

from . import routes as routes_module
from .ws_connection import Connection, now_ms


def api_gateway_id(size: int = 11) -> str:
    """An id shaped like API Gateway's (``L0SM9cOFvHcCIhw=``), safe in a URL path."""
    return base64.urlsafe_b64encode(os.urandom(size)).decode()


def request_time(ms: int) -> str:
    return time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(ms / 1000))


class Stage(Protocol):
    """What an event says about the API it came through (GatewayConfig has these)."""

    host: str
    port: int
    stage: str
    api_id: str


class Events:
    """Builds the events of one stage; read at each event, so a port bound later shows."""

    def __init__(self, stage: Stage) -> None:
        self.stage = stage

    @property
    def domain_name(self) -> str:
        return f"{self.stage.host}:{self.stage.port}"

    def context(
        self,
        conn_id: str,
        route_key: str,
        event_type: str,
        connected_at: int,
        identity: dict[str, str],
        authorizer: dict[str, Any] | None,
    ) -> dict[str, Any]:
        now = now_ms()
        request_id = api_gateway_id()
        ctx: dict[str, Any] = {
            "routeKey": route_key,
            "eventType": event_type,
            "extendedRequestId": request_id,
            "requestTime": request_time(now),
            "messageDirection": "IN",
            "stage": self.stage.stage,
            "connectedAt": connected_at,
            "requestTimeEpoch": now,
            "identity": identity,
            "requestId": request_id,
            "domainName": self.domain_name,
            "connectionId": conn_id,
            "apiId": self.stage.api_id,
        }
        if authorizer is not None:
            ctx["authorizer"] = authorizer
        return ctx

    def headers(self, request: web.Request) -> tuple[dict[str, str], dict[str, list[str]]]:
        multi: dict[str, list[str]] = {}
        for name, value in request.headers.items():
            multi.setdefault(name, []).append(value)
        peer = request.remote or "127.0.0.1"
        extra = {
            "X-Amzn-Trace-Id": f"Root=1-{int(time.time()):08x}-{uuid.uuid4().hex[:24]}",
            "X-Forwarded-For": peer,
            "X-Forwarded-Port": str(self.stage.port),
            "X-Forwarded-Proto": "http",
        }
        for name, value in extra.items():
            multi.setdefault(name, [value])
        return {k: v[-1] for k, v in multi.items()}, multi

    def connect_context(
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
        return self.context(
            conn_id, routes_module.CONNECT, "CONNECT", connected_at, identity, authorizer
        )

    def connect(
        self,
        request: web.Request,
        conn_id: str,
        connected_at: int,
        authorizer: dict[str, Any] | None,
    ) -> dict[str, Any]:
        headers, multi = self.headers(request)
        event: dict[str, Any] = {
            "headers": headers,
            "multiValueHeaders": multi,
            "requestContext": self.connect_context(request, conn_id, connected_at, authorizer),
            "isBase64Encoded": False,
        }
        if request.query:
            event["queryStringParameters"] = {k: v for k, v in request.query.items()}
            event["multiValueQueryStringParameters"] = {
                k: request.query.getall(k) for k in request.query
            }
        return event

    def message(self, conn: Connection, route_key: str, body: str) -> dict[str, Any]:
        ctx = self.context(
            conn.id,
            route_key,
            "MESSAGE",
            conn.connected_at,
            {"sourceIp": conn.source_ip},
            conn.authorizer,
        )
        ctx["messageId"] = api_gateway_id()
        return {"requestContext": ctx, "body": body, "isBase64Encoded": False}

    def disconnect(self, conn: Connection, code: int, reason: str) -> dict[str, Any]:
        headers = {
            "Host": self.domain_name,
            "x-api-key": "",
            "X-Forwarded-For": "",
            "x-restapi": "",
        }
        ctx = self.context(
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
