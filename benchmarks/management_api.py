"""A stand-in API Gateway Management API whose PostToConnection takes a chosen time.

The stage in the URL sets the latency (``http://host:port/lat50`` answers after 50 ms), so one
server serves every scenario and boto3's real ``apigatewaymanagementapi`` client, with SigV4
signing and its HTTP stack, is what the stream function's sender talks to.
"""

from __future__ import annotations

import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_PATH = re.compile(r"^/lat(?P<ms>\d+(?:\.\d+)?)/@connections/(?P<cid>[^/?]+)")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as API Gateway does
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        match = _PATH.match(self.path)
        if match is None:
            self._reply(404, b'{"message":"Not Found"}')
            return
        time.sleep(float(match["ms"]) / 1000)
        self.server.posts += 1  # type: ignore[attr-defined]
        self._reply(200, b"")

    def do_DELETE(self) -> None:
        self._reply(204, b"")

    def _reply(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class ManagementApi:
    """``with ManagementApi() as api: api.endpoint(50)`` is a Management API with 50 ms posts."""

    def __init__(self) -> None:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        self._server.posts = 0  # type: ignore[attr-defined]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def endpoint(self, latency_ms: float) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/lat{latency_ms:g}"

    def __enter__(self) -> ManagementApi:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
