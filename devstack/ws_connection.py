"""One open WebSocket as API Gateway knows it: its identity and times, its sends, its close, and
its idle and maximum-life timeouts (only frames from the client, pings included, are activity).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from aiohttp import WSMsgType, web

CLOSE_REASONS = {
    1000: "Connection Closed Normally",
    1001: "Going away",
    1003: "Binary frames are not supported",
    1005: "Client-side close frame status not set",
    1006: "Connection closed abnormally",
    1009: "Message too big",
}


def now_ms() -> int:
    return int(time.time() * 1000)


def iso8601(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms / 1000)) + f".{ms % 1000:03d}Z"


class Limits(Protocol):
    """A connection's timeouts in seconds (GatewayConfig has these)."""

    idle_timeout: float
    max_connection_life: float


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
                    text = data.decode("utf-8")
                except UnicodeDecodeError:
                    await self.ws.send_bytes(data)
                    return
            else:
                text = data
            await self.ws.send_str(text)

    async def reply(self, data: dict[str, Any] | str) -> None:
        """A route's response: sent if the socket is open, else dropped, as API Gateway does."""
        if not self.open:
            return
        text = data if isinstance(data, str) else json.dumps(data)
        with contextlib.suppress(ConnectionError, RuntimeError):
            await self.send(text)

    def close_soon(self, code: int, reason: str) -> None:
        """Close from the server side (DeleteConnection, limits); $disconnect follows."""
        if self.closing:
            return
        self.closing, self.close_code, self.close_reason = True, code, reason
        asyncio.get_running_loop().create_task(self.ws.close(code=code, message=reason.encode()))

    async def receive(self) -> None:
        """Queue the client's text messages on ``inbox`` until the socket closes."""
        ws = self.ws
        while True:
            msg = await ws.receive()
            if msg.type in (WSMsgType.TEXT, WSMsgType.BINARY, WSMsgType.PING):
                self.last_active_at = now_ms()
                self.activity.set()
            if msg.type == WSMsgType.TEXT:
                self.inbox.put_nowait(msg.data)
            elif msg.type == WSMsgType.PING:
                await ws.pong(msg.data)
            elif msg.type == WSMsgType.BINARY:
                self.close_soon(1003, CLOSE_REASONS[1003])
            elif msg.type in (
                WSMsgType.CLOSE,
                WSMsgType.CLOSING,
                WSMsgType.CLOSED,
                WSMsgType.ERROR,
            ):
                return

    async def watch(self, limits: Limits) -> None:
        """Close the socket once idle too long or alive too long, as API Gateway does."""
        loop = asyncio.get_running_loop()
        born = loop.time()
        while True:
            self.activity.clear()
            idle_at = loop.time() + limits.idle_timeout
            life_at = born + limits.max_connection_life
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(
                    self.activity.wait(), max(0.0, min(idle_at, life_at) - loop.time())
                )
                continue
            if loop.time() >= life_at:
                self.close_soon(1001, "Going away: maximum connection duration reached")
            else:
                self.close_soon(1001, "Going away: idle timeout")
            return
