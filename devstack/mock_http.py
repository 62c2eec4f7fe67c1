"""HTTP plumbing for the mock LLM: a threading server that can cut its open streams, and a handler
base that writes JSON and Server-Sent Events at a pace, noticing a client gone or a server stopping.
"""

from __future__ import annotations

import contextlib
import json
import select
import socket
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

POLL_SECONDS = 0.05
"""How often a paused stream checks for a closed client or a stopping server."""


class ClientGone(Exception):
    pass


class ServerStopping(Exception):
    pass


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
        self.stopping = threading.Event()
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        # Handler threads are daemons blocked on their sockets; shutting the sockets wakes them.
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        if self.stopping.is_set() or isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


class StreamingHandler(BaseHTTPRequestHandler):
    """Writes raise ClientGone or ServerStopping when the stream is cut short."""

    protocol_version = "HTTP/1.1"  # keep-alive and chunked streaming, like the real API
    disable_nagle_algorithm = True  # each SSE event leaves at once, so latency numbers are real
    server: Server

    def _route(self) -> str:
        return self.path.split("?", 1)[0].rstrip("/")

    def _read_body(self) -> bytes:
        length = self.headers.get("Content-Length")
        if length is None:
            self.close_connection = True  # a body we did not read must not poison the next request
            return b""
        return self.rfile.read(int(length))

    def _send_json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self._write(lambda: self.wfile.write(data))

    def _event(self, payload: Any, *, last: bool = False) -> None:
        """Write one Server-Sent Event as one HTTP chunk; the last one carries the end marker."""
        data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
        event = f"data: {data}\n\n".encode()
        chunk = b"%X\r\n%s\r\n%s" % (len(event), event, b"0\r\n\r\n" if last else b"")
        self._write(lambda: self.wfile.write(chunk))

    def _write(self, action: Callable[[], Any]) -> None:
        try:
            action()
            self.wfile.flush()
        except (ConnectionError, OSError):
            raise self._why_cut_short() from None

    def _why_cut_short(self) -> Exception:
        return ServerStopping() if self.server.stopping.is_set() else ClientGone()

    def _pause_until(self, deadline: float) -> None:
        """Sleep until ``deadline`` (monotonic), raising early if the client or server goes away."""
        while True:
            if self.server.stopping.is_set():
                raise ServerStopping()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            if self._peer_closed(min(remaining, POLL_SECONDS)):
                raise self._why_cut_short()

    def _peer_closed(self, timeout: float) -> bool:
        """Wait up to ``timeout`` for the client to close its end; True if it did."""
        if getattr(self, "_peer_sent_more", False):
            time.sleep(timeout)  # readable data would wake select at once; fall back to sleeping
            return False
        try:
            readable, _, _ = select.select([self.connection], [], [], timeout)
            if not readable:
                return False
            if self.connection.recv(1, socket.MSG_PEEK):
                self._peer_sent_more = True
                return False
            return True
        except (OSError, ValueError):
            return True
