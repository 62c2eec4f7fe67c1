"""Lambda's Invoke, locally: runs functions synchronously (RequestResponse) or asynchronously
(Event, retried like Lambda), each in its own containers or, with ``isolation="thread"``, here.

Containers (devstack.containers, forked by devstack.zygote) are processes rather than threads,
because handlers keep per-container state (settings read once, cached clients, Powertools'
logger keys) that threads would share and that would leak into a test process. Thread isolation
(devstack.thread_pool) is for debugging and for fake handlers in unit tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import uuid
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from .containers import ProcessPool
from .invocation import (
    ACCOUNT_ID,
    REGION,
    FunctionError,
    FunctionSpec,
    Invocation,
    LambdaContext,
    function_arn,
    not_found_error,
)
from .runtime_api import RuntimeApi
from .thread_pool import Environ, ThreadPool
from .zygote import PRELOAD, Zygote, peak_memory_kb, zygote_env

if TYPE_CHECKING:
    from aiohttp import web

__all__ = [  # what devstack.stack, the tests and the benchmarks import from here
    "ACCOUNT_ID",
    "REGION",
    "FunctionError",
    "FunctionSpec",
    "Invocation",
    "LambdaContext",
    "Runtime",
    "function_arn",
    "peak_memory_kb",
]

log = logging.getLogger("devstack.runtime")


class Runtime:
    """Invokes functions synchronously (RequestResponse) or asynchronously (Event, with retries).

    Lives on one asyncio loop; ``add_routes`` mounts the Runtime API its containers call.
    """

    def __init__(
        self,
        specs: list[FunctionSpec],
        *,
        env: Mapping[str, str | None] | None = None,
        retry_delays: tuple[float, ...] = (1.0, 2.0),
        on_async_failure: Callable[[Invocation], Any] | None = None,
        python: str = sys.executable,
        preload: tuple[str, ...] = PRELOAD,
    ) -> None:
        self.specs = {s.name: s for s in specs}
        self.env = dict(env or {})
        self.retry_delays = retry_delays
        self.on_async_failure = on_async_failure
        self.python = python
        self.preload = preload
        self.api_url = ""  # http://127.0.0.1:PORT, set by start()
        self.invocations: list[Invocation] = []
        self._changed: asyncio.Condition | None = None
        self._pools: dict[str, ThreadPool | ProcessPool] = {}
        self._api = RuntimeApi(self._pools)
        self._zygote: Zygote | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._environ = Environ(self.env)  # this process's, for thread isolation

    # -- lifecycle

    def add_routes(self, app: web.Application) -> None:
        self._api.add_routes(app)

    async def start(self, api_url: str, *, prewarm: bool = False) -> None:
        """Start serving; ``api_url`` is where add_routes' app listens."""
        self.api_url = api_url.rstrip("/")
        self._changed = asyncio.Condition()
        for spec in self.specs.values():
            if spec.isolation == "thread":
                self._pools[spec.name] = ThreadPool(spec, self._environ)
            else:
                if self._zygote is None:
                    self._zygote = Zygote(self.python, zygote_env(self.env), self.preload)
                    self._zygote.start()
                self._pools[spec.name] = ProcessPool(spec, self._zygote, self.api_url)
        if prewarm:
            for pool in self._pools.values():
                pool.prewarm()

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for pool in self._pools.values():
            pool.close()
        if self._zygote is not None:
            await asyncio.to_thread(self._zygote.stop)
            self._zygote = None
        self._environ.restore()

    def crash(self, name: str) -> int:
        """SIGKILL every container of ``name`` that is running an invocation, as Lambda kills
        one that runs out of memory; returns how many. Its watchdog then fails the invocation
        with Runtime.ExitError. (Process isolation only.)"""
        pool = self._pools.get(name)
        if not isinstance(pool, ProcessPool):
            raise ValueError(f"{name!r} does not run in containers")
        return pool.crash()

    def kill(self) -> None:
        """Kill every container at once (no clean-up); safe to call from any thread, any time."""
        zygote = self._zygote
        if zygote is not None:
            zygote.kill()

    # -- invoking

    async def invoke(self, name: str, event: Any) -> Any:
        """RequestResponse: the handler's return value, or FunctionError if it failed."""
        inv = await self._run(name, event, uuid.uuid4().hex, attempt=0, asynchronous=False)
        if inv.error is not None:
            raise FunctionError(inv)
        return inv.result

    def invoke_async(self, name: str, event: Any) -> str:
        """Event: queue the invocation, retry it on error like Lambda, return its request id."""
        if name not in self.specs:
            raise KeyError(f"no function named {name!r}")
        request_id = str(uuid.uuid4())
        task = asyncio.get_running_loop().create_task(self._run_async(name, event, request_id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return request_id

    async def drain(self) -> None:
        """Wait until every asynchronous invocation queued so far has finished (or given up)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def wait_for(self, predicate: Callable[[list[Invocation]], Any], timeout: float) -> Any:
        """Wait until ``predicate(self.invocations)`` is truthy; returns its value."""
        assert self._changed is not None
        async with self._changed:
            return await asyncio.wait_for(
                self._changed.wait_for(lambda: predicate(self.invocations)), timeout
            )

    async def _run_async(self, name: str, event: Any, request_id: str) -> None:
        spec = self.specs[name]
        for attempt in range(spec.async_retries + 1):
            inv = await self._run(name, event, request_id, attempt=attempt, asynchronous=True)
            if inv.ok:
                return
            if attempt < spec.async_retries:
                delays = self.retry_delays or (0.0,)
                await asyncio.sleep(delays[min(attempt, len(delays) - 1)])
        log.warning(
            "%s: async invocation %s failed %d time(s); giving up",
            name,
            request_id,
            spec.async_retries + 1,
        )
        if self.on_async_failure is not None:
            with contextlib.suppress(Exception):
                result = self.on_async_failure(inv)
                if asyncio.iscoroutine(result):
                    await result

    async def _run(
        self, name: str, event: Any, request_id: str, *, attempt: int, asynchronous: bool
    ) -> Invocation:
        inv = Invocation(name, request_id, event, attempt=attempt, asynchronous=asynchronous)
        pool = self._pools.get(name)
        if pool is None:
            inv.error = not_found_error(name)
        else:
            await pool.run(inv)
        self.invocations.append(inv)
        if len(self.invocations) > 10_000:
            del self.invocations[:1000]
        _report(inv)
        assert self._changed is not None
        async with self._changed:
            self._changed.notify_all()
        return inv


def _report(inv: Invocation) -> None:
    """Lambda's REPORT line."""
    memory = f"{inv.max_memory_mb:.0f} MB" if inv.max_memory_mb else "n/a"
    failure = "" if inv.ok or inv.error is None else f" Error: {inv.error.get('errorType')}"
    log.info(
        "REPORT %s RequestId: %s Duration: %.2f ms Max Memory Used: %s%s",
        inv.function,
        inv.request_id,
        inv.duration_ms,
        memory,
        failure,
    )
