"""API Gateway's frame limit, which aiohttp does not enforce: a scan of raw frame headers fails
the socket (1009) on a frame over 32 KB. aiohttp's max_msg_size enforces the 128 KB message limit.
"""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import WSCloseCode, web
from aiohttp.http_websocket import WebSocketError

log = logging.getLogger("devstack.gateway")

FRAME_LIMIT = 32 * 1024
MESSAGE_LIMIT = 128 * 1024


class FrameGuard:
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
            reader = self._ws._reader
            if reader is not None:  # what aiohttp does for an oversized message
                reader.set_exception(exc)
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


class LimitedWebSocketResponse(web.WebSocketResponse):
    """A WebSocketResponse whose socket has a FrameGuard in front of its frame parser."""

    def __init__(self, *, max_frame_bytes: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._max_frame_bytes = max_frame_bytes

    def _post_start(self, request: web.BaseRequest, protocol: Any, writer: Any) -> None:
        handler = request.protocol
        tail = bytes(getattr(handler, "_message_tail", b""))
        super()._post_start(request, protocol, writer)
        try:
            guard = FrameGuard(handler._payload_parser, self, self._max_frame_bytes)
            if tail and guard.scan(tail) is not None:
                guard._failed = True
            handler._payload_parser = guard
        except AttributeError:  # another aiohttp: keep going with the message limit only
            log.warning("this aiohttp hides its frame parser; the frame limit is not enforced")
