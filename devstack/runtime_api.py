"""The Lambda Runtime API that containers poll (``/{fn}/2018-06-01/runtime/...``): the HTTP side
of each function's ProcessPool.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .containers import ProcessPool
from .invocation import API_PREFIX, function_arn

if TYPE_CHECKING:
    from aiohttp import web

# aiohttp is imported where it is used, so that importing devstack.runtime (benchmarks do, for
# peak_memory_kb) does not load it.


class RuntimeApi:
    """Routes each container's calls to its function's pool."""

    def __init__(self, pools: Mapping[str, Any]) -> None:
        self.pools = pools  # function name -> pool; only ProcessPools have containers

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/{fn}" + API_PREFIX + "/invocation/next", self._next)
        app.router.add_post("/{fn}" + API_PREFIX + "/invocation/{rid}/response", self._response)
        app.router.add_post("/{fn}" + API_PREFIX + "/invocation/{rid}/error", self._error)
        app.router.add_post("/{fn}" + API_PREFIX + "/init/error", self._init_error)

    def _pool(self, request: web.Request) -> ProcessPool:
        from aiohttp import web

        pool = self.pools.get(request.match_info["fn"])
        if not isinstance(pool, ProcessPool):
            raise web.HTTPNotFound(text="unknown function")
        return pool

    async def _next(self, request: web.Request) -> web.StreamResponse:
        from aiohttp import web

        pool = self._pool(request)
        container = pool.fleet.checkin(
            request.headers.get("Lambda-Runtime-Container", ""),
            request.headers.get("Lambda-Runtime-Pid", "0"),
        )
        item = await pool.take(container, request)
        if item is None:
            return web.Response(status=410)
        inv, spec = item.inv, pool.spec
        deadline_ms = int(time.time() * 1000 + spec.timeout * 1000)
        return web.Response(
            body=json.dumps(inv.event).encode(),
            content_type="application/json",
            headers={
                "Lambda-Runtime-Aws-Request-Id": inv.request_id,
                "Lambda-Runtime-Deadline-Ms": str(deadline_ms),
                "Lambda-Runtime-Invoked-Function-Arn": function_arn(spec.lambda_name),
                "Lambda-Runtime-Trace-Id": f"Root=1-{int(time.time()):08x}-{uuid.uuid4().hex[:24]}",
            },
        )

    async def _response(self, request: web.Request) -> web.StreamResponse:
        return await self._finish(request, failed=False)

    async def _error(self, request: web.Request) -> web.StreamResponse:
        return await self._finish(request, failed=True)

    async def _finish(self, request: web.Request, *, failed: bool) -> web.StreamResponse:
        from aiohttp import web

        pool = self._pool(request)
        item = pool.running.get(request.match_info["rid"])
        body = await request.read()
        if item is None:  # timed out meanwhile, or a stale container
            return web.json_response({"status": "gone"}, status=410)
        memory = int(request.headers.get("Lambda-Runtime-Max-Memory-Kb", "0") or 0)
        try:
            payload = json.loads(body) if body else None
        except ValueError:
            payload, failed = (
                {"errorMessage": "invalid JSON", "errorType": "Runtime.MarshalError"},
                True,
            )
        if failed:
            pool.complete(
                item,
                error=payload
                if isinstance(payload, dict)
                else {"errorMessage": str(payload), "errorType": "Error"},
                memory_kb=memory,
            )
        else:
            pool.complete(item, result=payload, memory_kb=memory)
        return web.json_response({"status": "OK"}, status=202)

    async def _init_error(self, request: web.Request) -> web.StreamResponse:
        from aiohttp import web

        pool = self._pool(request)
        error = await request.json()
        pool.init_failed(request.headers.get("Lambda-Runtime-Container", ""), error)
        return web.json_response({"status": "OK"}, status=202)
