"""Process isolation, parent side: a function's invocations queued for its containers, the
containers forked on demand (up to ``max_concurrency``), killed on timeout and watched for crashes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
import uuid
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .invocation import FunctionSpec, Invocation, exit_error, log_stream_name, timeout_error
from .zygote import Zygote

if TYPE_CHECKING:
    from aiohttp import web

log = logging.getLogger("devstack.runtime")


def container_env(spec: FunctionSpec, api_url: str) -> dict[str, str]:
    """What a container of ``spec`` sees on top of the zygote's environment."""
    name = spec.lambda_name
    host = api_url.removeprefix("http://")
    return {
        **spec.env,
        "AWS_LAMBDA_RUNTIME_API": f"{host}/{spec.name}",
        "AWS_LAMBDA_FUNCTION_NAME": name,
        "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(spec.memory_mb),
        "AWS_LAMBDA_FUNCTION_TIMEOUT": str(int(spec.timeout)),
        "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{name}",
        "AWS_LAMBDA_LOG_STREAM_NAME": log_stream_name(),
        "LAMBDA_TASK_ROOT": str(spec.code_dir or ""),
        "_HANDLER": spec.handler if isinstance(spec.handler, str) else "app.lambda_handler",
    }


@dataclass
class Pending:
    """An invocation waiting for, or running in, a container."""

    inv: Invocation
    done: asyncio.Future[None]
    container: Container | None = None
    timer: asyncio.TimerHandle | None = None

    def settle(
        self, *, result: Any = None, error: dict[str, Any] | None = None, memory_kb: int | None
    ) -> None:
        if self.timer is not None:
            self.timer.cancel()
        inv = self.inv
        inv.finished_at = time.monotonic()
        inv.result, inv.error = result, error
        if memory_kb:
            inv.max_memory_mb = memory_kb / 1024
        if not self.done.done():
            self.done.set_result(None)


@dataclass
class Container:
    id: str
    pid: int = 0
    busy: Pending | None = None


class Fleet:
    """The containers of one function: forked through the zygote, known by pid once they call."""

    def __init__(self, spec: FunctionSpec, zygote: Zygote, api_url: str) -> None:
        self.spec, self.zygote, self.api_url = spec, zygote, api_url
        self.containers: dict[str, Container] = {}
        self.starting = 0  # forked, not yet polling

    def fork(self) -> None:
        self.starting += 1
        cid = uuid.uuid4().hex[:12]
        self.containers[cid] = Container(cid)
        self.zygote.fork(
            {
                "container": cid,
                "function": self.spec.name,
                "code_dir": str(self.spec.code_dir),
                "layers": [str(p) for p in self.spec.layers],
                "handler": self.spec.handler,
                "env": container_env(self.spec, self.api_url),
            }
        )

    def checkin(self, cid: str, pid: str) -> Container:
        """The container polling for work; its first poll tells us its pid."""
        container = self.containers.get(cid)
        if container is None:
            container = self.containers[cid] = Container(cid)
        if not container.pid:
            container.pid = int(pid)
            self.starting = max(0, self.starting - 1)
        return container

    def forget(self, cid: str) -> None:
        """A container that failed to start (it exits by itself)."""
        self.containers.pop(cid, None)
        self.starting = max(0, self.starting - 1)

    def kill(self, container: Container) -> None:
        self.containers.pop(container.id, None)
        if container.pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(container.pid, signal.SIGKILL)

    def reap(self) -> list[Container]:
        """Forget the containers whose process is gone (crash, OOM kill); returns them."""
        dead = []
        for container in list(self.containers.values()):
            if not container.pid:
                continue
            try:
                os.kill(container.pid, 0)
                continue
            except ProcessLookupError:
                pass
            self.containers.pop(container.id, None)
            dead.append(container)
        return dead


class ProcessPool:
    """One function's invocations, handed to its containers as they poll the Runtime API."""

    def __init__(self, spec: FunctionSpec, zygote: Zygote, api_url: str) -> None:
        self.spec = spec
        self.fleet = Fleet(spec, zygote, api_url)
        self.pending: deque[Pending] = deque()
        self.waiters: deque[tuple[asyncio.Future[Pending | None], web.Request]] = deque()
        self.running: dict[str, Pending] = {}  # request id -> pending, while in a container
        self.closed = False
        self._watchdog: asyncio.Task[None] | None = None

    def prewarm(self) -> None:
        if not self.fleet.containers:
            self.fleet.fork()

    def _scale(self) -> None:
        idle = len(self.waiters)
        while (
            len(self.pending) > idle + self.fleet.starting
            and len(self.fleet.containers) < self.spec.max_concurrency
        ):
            self.fleet.fork()

    async def run(self, inv: Invocation) -> None:
        loop = asyncio.get_running_loop()
        item = Pending(inv, loop.create_future())
        if self._watchdog is None:
            self._watchdog = loop.create_task(self._watch())
        if not self._dispatch(item):
            self.pending.append(item)
            self._scale()
        try:
            await asyncio.shield(item.done)
        except asyncio.CancelledError:
            if item in self.pending:
                self.pending.remove(item)
            raise

    def _dispatch(self, item: Pending) -> bool:
        while self.waiters:
            waiter, request = self.waiters.popleft()
            if not waiter.done() and request.transport is not None:
                waiter.set_result(item)
                return True
        return False

    async def take(self, container: Container, request: web.Request) -> Pending | None:
        """The next invocation for ``container``, once there is one; None tells it to exit."""
        container.busy = None
        if self.closed:
            return None
        if self.pending:
            item = self.pending.popleft()
        else:
            waiter: asyncio.Future[Pending | None] = asyncio.get_running_loop().create_future()
            self.waiters.append((waiter, request))
            try:
                found = await waiter
            finally:
                if not waiter.done():
                    waiter.cancel()
            if found is None:  # shutting down: the container exits
                return None
            item = found
        item.inv.started_at = time.monotonic()
        item.inv.container = container.id
        container.busy, item.container = item, container
        self.running[item.inv.request_id] = item
        item.timer = asyncio.get_running_loop().call_later(self.spec.timeout, self._timed_out, item)
        return item

    def complete(
        self,
        item: Pending,
        *,
        result: Any = None,
        error: dict[str, Any] | None = None,
        memory_kb: int | None = None,
    ) -> None:
        self.running.pop(item.inv.request_id, None)
        item.settle(result=result, error=error, memory_kb=memory_kb)

    def init_failed(self, cid: str, error: dict[str, Any]) -> None:
        log.error(
            "%s: container %s failed to start: %s: %s",
            self.spec.name,
            cid,
            error.get("errorType"),
            error.get("errorMessage"),
        )
        self.fleet.forget(cid)
        # Lambda fails the invocation that triggered the cold start; fail the oldest pending one.
        if self.pending:
            self.complete(
                self.pending.popleft(), error={**error, "errorType": "Runtime.ImportModuleError"}
            )

    def _timed_out(self, item: Pending) -> None:
        container = item.container
        log.warning(
            "%s: %s timed out after %ss; killing its container",
            self.spec.name,
            item.inv.request_id,
            self.spec.timeout,
        )
        self.complete(item, error=timeout_error(self.spec.timeout))
        if container is not None:
            self.fleet.kill(container)

    async def _watch(self) -> None:
        """Fail invocations whose container died (crash, OOM kill), as Lambda reports them."""
        while True:
            await asyncio.sleep(0.5)
            for container in self.fleet.reap():
                if container.busy is not None and not container.busy.done.done():
                    self.complete(container.busy, error=exit_error())
            self._scale()

    def crash(self) -> int:
        """SIGKILL every container running an invocation; returns how many."""
        pids = [i.container.pid for i in self.running.values() if i.container and i.container.pid]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return len(pids)

    def close(self) -> None:
        self.closed = True
        if self._watchdog is not None:
            self._watchdog.cancel()
        for waiter, _ in self.waiters:
            if not waiter.done():
                waiter.set_result(None)
        for item in [*self.pending, *self.running.values()]:
            if not item.done.done():
                item.done.cancel()
