"""A Lambda-like runtime: each function runs in its own worker processes ("containers").

A clean interpreter (the *zygote*, ``python -m devstack.runtime``) imports the heavy libraries
once and forks a container whenever a function needs one more (up to ``max_concurrency``). A
container imports its handler (its cold start), then pulls invocations one at a time from this
process's copy of the Lambda Runtime API (``GET /{fn}/2018-06-01/runtime/invocation/next``), as a
real Lambda runtime does. So it keeps module state between invocations, has its own environment,
is killed on timeout, and reports its peak memory (VmHWM) like Lambda's REPORT line; its stdout
(Powertools' JSON logs) goes straight to ours. Processes rather than threads, because handlers
keep per-container state (settings read once, cached clients, Powertools' logger keys) that
threads would share and that would leak into a test process. ``isolation="thread"`` runs the
handler on a thread pool here instead (debugging, fake handlers in unit tests); it then sets this
process's os.environ for the functions and restores it on stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import logging
import os
import signal
import subprocess
import sys
import time
import traceback
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from aiohttp import web

log = logging.getLogger("devstack.runtime")

ACCOUNT_ID = "123456789012"
REGION = "us-east-1"
API_PREFIX = "/2018-06-01/runtime"
PRELOAD = ("boto3", "botocore.session", "openai", "aws_lambda_powertools", "aws_xray_sdk.core")


# --------------------------------------------------------------------------- context


class LambdaContext:
    """The context object Lambda passes to a Python handler."""

    def __init__(
        self,
        function_name: str,
        memory_mb: int,
        request_id: str,
        deadline_ms: int,
        log_stream_name: str,
        invoked_function_arn: str | None = None,
    ) -> None:
        self.function_name = function_name
        self.function_version = "$LATEST"
        self.invoked_function_arn = invoked_function_arn or function_arn(function_name)
        self.memory_limit_in_mb = str(memory_mb)  # a string, as in the real runtime
        self.aws_request_id = request_id
        self.log_group_name = f"/aws/lambda/{function_name}"
        self.log_stream_name = log_stream_name
        self.identity = None
        self.client_context = None
        self._deadline_ms = deadline_ms

    def get_remaining_time_in_millis(self) -> int:
        return max(0, self._deadline_ms - int(time.time() * 1000))


def function_arn(function_name: str) -> str:
    return f"arn:aws:lambda:{REGION}:{ACCOUNT_ID}:function:{function_name}"


def log_stream_name() -> str:
    return time.strftime("%Y/%m/%d/[$LATEST]") + uuid.uuid4().hex


# --------------------------------------------------------------------------- specs and results


@dataclass(frozen=True)
class FunctionSpec:
    """One function: where its code is (or a callable, with thread isolation) and its limits."""

    name: str  # the key used to invoke it, e.g. "stream"
    code_dir: Path | None = None  # functions/<name>/ holding app.py
    layers: tuple[Path, ...] = ()  # importable like Lambda's /opt/python
    handler: str | Callable[[Any, Any], Any] = "app.lambda_handler"
    function_name: str = ""  # Lambda's FunctionName; defaults to name
    timeout: float = 10.0
    memory_mb: int = 256
    async_retries: int = 2
    max_concurrency: int = 16
    env: Mapping[str, str] = field(default_factory=dict)  # on top of the runtime's common env
    isolation: str = "process"  # or "thread"

    @property
    def lambda_name(self) -> str:
        return self.function_name or self.name


@dataclass
class Invocation:
    """One attempt at running a function, as the runtime saw it (Lambda's START..REPORT)."""

    function: str
    request_id: str
    event: Any
    attempt: int = 0
    asynchronous: bool = False
    result: Any = None
    error: dict[str, Any] | None = None  # errorMessage, errorType, stackTrace
    started_at: float | None = None
    finished_at: float | None = None
    max_memory_mb: float | None = None
    container: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def duration_ms(self) -> float:
        if self.started_at is None or self.finished_at is None:
            return 0.0
        return (self.finished_at - self.started_at) * 1000


class FunctionError(Exception):
    """A synchronous invocation whose handler raised (or timed out, or crashed)."""

    def __init__(self, invocation: Invocation) -> None:
        error = invocation.error or {}
        super().__init__(f"{error.get('errorType')}: {error.get('errorMessage')}")
        self.invocation = invocation

    @property
    def error(self) -> dict[str, Any]:
        return self.invocation.error or {}


def error_payload(exc: BaseException) -> dict[str, Any]:
    return {
        "errorMessage": str(exc),
        "errorType": type(exc).__name__,
        "stackTrace": traceback.format_exception(exc)[1:],
    }


# --------------------------------------------------------------------------- runtime (parent)


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
        self._pools: dict[str, _Pool] = {}
        self._zygote: _Zygote | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._saved_env: dict[str, str | None] = {}

    # -- lifecycle

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/{fn}" + API_PREFIX + "/invocation/next", self._next)
        app.router.add_post("/{fn}" + API_PREFIX + "/invocation/{rid}/response", self._response)
        app.router.add_post("/{fn}" + API_PREFIX + "/invocation/{rid}/error", self._error)
        app.router.add_post("/{fn}" + API_PREFIX + "/init/error", self._init_error)

    async def start(self, api_url: str, *, prewarm: bool = False) -> None:
        """Start serving; ``api_url`` is where add_routes' app listens."""
        self.api_url = api_url.rstrip("/")
        self._changed = asyncio.Condition()
        for spec in self.specs.values():
            if spec.isolation == "thread":
                self._pools[spec.name] = _ThreadPool(self, spec)
            else:
                if self._zygote is None:
                    self._zygote = _Zygote(self.python, self._container_env_base(), self.preload)
                    self._zygote.start()
                self._pools[spec.name] = _ProcessPool(self, spec, self._zygote)
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
        self._restore_env()

    def crash(self, name: str) -> int:
        """SIGKILL every container of ``name`` that is running an invocation, as Lambda kills
        one that runs out of memory; returns how many. Its watchdog then fails the invocation
        with Runtime.ExitError. (Process isolation only.)"""
        pool = self._pools.get(name)
        if not isinstance(pool, _ProcessPool):
            raise ValueError(f"{name!r} does not run in containers")
        pids = [i.container.pid for i in pool.running.values() if i.container and i.container.pid]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return len(pids)

    def kill(self) -> None:
        """Kill every container at once (no clean-up); safe to call from any thread, any time."""
        zygote = self._zygote
        if zygote is not None and zygote.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(zygote.proc.pid, signal.SIGKILL)

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
            inv.error = {
                "errorMessage": f"Function not found: {name}",
                "errorType": "ResourceNotFoundException",
                "stackTrace": [],
            }
        else:
            await pool.run(inv)
        self.invocations.append(inv)
        if len(self.invocations) > 10_000:
            del self.invocations[:1000]
        memory = f"{inv.max_memory_mb:.0f} MB" if inv.max_memory_mb else "n/a"
        log.info(
            "REPORT %s RequestId: %s Duration: %.2f ms Max Memory Used: %s%s",
            name,
            request_id,
            inv.duration_ms,
            memory,
            "" if inv.ok else f" Error: {inv.error.get('errorType')}",
        )  # type: ignore[union-attr]
        assert self._changed is not None
        async with self._changed:
            self._changed.notify_all()
        return inv

    # -- Runtime API (called by containers)

    def apply_env(self, spec: FunctionSpec) -> None:
        """Thread isolation only: give this process the function's environment (undone by stop)."""
        wanted: dict[str, str | None] = {**self.env, **spec.env}
        for key, value in wanted.items():
            self._saved_env.setdefault(key, os.environ.get(key))
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value

    def _restore_env(self) -> None:
        for key, value in self._saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        self._saved_env.clear()

    def _container_env_base(self) -> dict[str, str]:
        env = dict(os.environ)
        for key, value in self.env.items():  # None unsets, e.g. AWS_PROFILE
            if value is None:
                env.pop(key, None)
            else:
                env[key] = value
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def container_env(self, spec: FunctionSpec) -> dict[str, str]:
        """What a container of ``spec`` sees on top of the zygote's environment."""
        name = spec.lambda_name
        host = self.api_url.removeprefix("http://")
        env = {
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
        return env

    def _pool(self, request: web.Request) -> _ProcessPool:
        from aiohttp import web

        pool = self._pools.get(request.match_info["fn"])
        if not isinstance(pool, _ProcessPool):
            raise web.HTTPNotFound(text="unknown function")
        return pool

    async def _next(self, request: web.Request) -> web.StreamResponse:
        return await self._pool(request).next(request)

    async def _response(self, request: web.Request) -> web.StreamResponse:
        return await self._pool(request).finish(request, failed=False)

    async def _error(self, request: web.Request) -> web.StreamResponse:
        return await self._pool(request).finish(request, failed=True)

    async def _init_error(self, request: web.Request) -> web.StreamResponse:
        return await self._pool(request).init_error(request)


class _Pool:
    def __init__(self, runtime: Runtime, spec: FunctionSpec) -> None:
        self.runtime, self.spec = runtime, spec

    async def run(self, inv: Invocation) -> None:
        raise NotImplementedError

    def prewarm(self) -> None:
        pass

    def close(self) -> None:
        pass


class _ThreadPool(_Pool):
    """Runs a callable (or an app.py loaded in this process) on a thread pool."""

    def __init__(self, runtime: Runtime, spec: FunctionSpec) -> None:
        super().__init__(runtime, spec)
        self._executor = ThreadPoolExecutor(spec.max_concurrency, f"fn-{spec.name}")
        self._handler: Callable[[Any, Any], Any] | None = None
        self._stream = log_stream_name()

    def _load(self) -> Callable[[Any, Any], Any]:
        if self._handler is None:
            handler = self.spec.handler
            if isinstance(handler, str):
                assert self.spec.code_dir is not None
                self.runtime.apply_env(self.spec)
                # One process for every function: the settings a handler reads at import must
                # come from this environment, not from a cache an earlier function filled.
                cached = sys.modules.get("llmstream.core.settings")
                if cached is not None:
                    cached.get_settings.cache_clear()
                for path in (self.spec.code_dir, *self.spec.layers):
                    if str(path) not in sys.path:
                        sys.path.append(str(path))
                handler = load_handler(self.spec.code_dir, handler, f"devstack_fn_{self.spec.name}")
            self._handler = handler
        return self._handler

    def _call(self, inv: Invocation) -> None:
        inv.started_at = time.monotonic()
        deadline_ms = int(time.time() * 1000 + self.spec.timeout * 1000)
        ctx = LambdaContext(
            self.spec.lambda_name, self.spec.memory_mb, inv.request_id, deadline_ms, self._stream
        )
        try:
            inv.result = json.loads(json.dumps(self._load()(inv.event, ctx)))
        except Exception as exc:  # the handler's failure is the invocation's result
            inv.error = error_payload(exc)
        inv.finished_at = time.monotonic()
        if inv.duration_ms > self.spec.timeout * 1000:
            # A thread cannot be killed; its late result is replaced, as Lambda would have.
            inv.result = None
            inv.error = _timeout_error(self.spec.timeout)

    async def run(self, inv: Invocation) -> None:
        await asyncio.get_running_loop().run_in_executor(self._executor, self._call, inv)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def _timeout_error(timeout: float) -> dict[str, Any]:
    return {
        "errorMessage": f"Task timed out after {timeout:.2f} seconds",
        "errorType": "Sandbox.Timedout",
        "stackTrace": [],
    }


@dataclass
class _Pending:
    inv: Invocation
    done: asyncio.Future[None]
    container: _Container | None = None
    timer: asyncio.TimerHandle | None = None


@dataclass
class _Container:
    id: str
    pid: int = 0
    busy: _Pending | None = None


class _ProcessPool(_Pool):
    """Containers of one function, forked on demand up to ``max_concurrency``."""

    def __init__(self, runtime: Runtime, spec: FunctionSpec, zygote: _Zygote) -> None:
        super().__init__(runtime, spec)
        self.zygote = zygote
        self.pending: deque[_Pending] = deque()
        self.waiters: deque[tuple[asyncio.Future[_Pending | None], web.Request]] = deque()
        self.containers: dict[str, _Container] = {}
        self.starting = 0
        self.running: dict[str, _Pending] = {}  # request id -> pending, while in a container
        self.closed = False
        self._watchdog: asyncio.Task[None] | None = None

    def _fork(self) -> None:
        self.starting += 1
        cid = uuid.uuid4().hex[:12]
        self.containers[cid] = _Container(cid)
        self.zygote.fork(
            {
                "container": cid,
                "function": self.spec.name,
                "code_dir": str(self.spec.code_dir),
                "layers": [str(p) for p in self.spec.layers],
                "handler": self.spec.handler,
                "env": self.runtime.container_env(self.spec),
            }
        )

    def prewarm(self) -> None:
        if not self.containers:
            self._fork()

    def _scale(self) -> None:
        idle = len(self.waiters)
        while (
            len(self.pending) > idle + self.starting
            and len(self.containers) < self.spec.max_concurrency
        ):
            self._fork()

    async def run(self, inv: Invocation) -> None:
        loop = asyncio.get_running_loop()
        item = _Pending(inv, loop.create_future())
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

    def _dispatch(self, item: _Pending) -> bool:
        while self.waiters:
            waiter, request = self.waiters.popleft()
            if not waiter.done() and request.transport is not None:
                waiter.set_result(item)
                return True
        return False

    async def next(self, request: web.Request) -> web.StreamResponse:
        from aiohttp import web

        cid = request.headers.get("Lambda-Runtime-Container", "")
        container = self.containers.get(cid)
        if container is None:
            container = self.containers[cid] = _Container(cid)
        if not container.pid:
            container.pid = int(request.headers.get("Lambda-Runtime-Pid", "0"))
            self.starting = max(0, self.starting - 1)
        container.busy = None
        if self.closed:
            return web.Response(status=410)
        if self.pending:
            item = self.pending.popleft()
        else:
            waiter: asyncio.Future[_Pending | None] = asyncio.get_running_loop().create_future()
            self.waiters.append((waiter, request))
            try:
                found = await waiter
            finally:
                if not waiter.done():
                    waiter.cancel()
            if found is None:  # shutting down: the container exits
                return web.Response(status=410)
            item = found
        inv, spec = item.inv, self.spec
        inv.started_at = time.monotonic()
        inv.container = cid
        container.busy, item.container = item, container
        self.running[inv.request_id] = item
        item.timer = asyncio.get_running_loop().call_later(spec.timeout, self._timed_out, item)
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

    def _complete(
        self,
        item: _Pending,
        *,
        result: Any = None,
        error: dict[str, Any] | None = None,
        memory_kb: int | None = None,
    ) -> None:
        self.running.pop(item.inv.request_id, None)
        if item.timer is not None:
            item.timer.cancel()
        inv = item.inv
        inv.finished_at = time.monotonic()
        inv.result, inv.error = result, error
        if memory_kb:
            inv.max_memory_mb = memory_kb / 1024
        if not item.done.done():
            item.done.set_result(None)

    async def finish(self, request: web.Request, *, failed: bool) -> web.StreamResponse:
        from aiohttp import web

        item = self.running.get(request.match_info["rid"])
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
            self._complete(
                item,
                error=payload
                if isinstance(payload, dict)
                else {"errorMessage": str(payload), "errorType": "Error"},
                memory_kb=memory,
            )
        else:
            self._complete(item, result=payload, memory_kb=memory)
        return web.json_response({"status": "OK"}, status=202)

    async def init_error(self, request: web.Request) -> web.StreamResponse:
        from aiohttp import web

        cid = request.headers.get("Lambda-Runtime-Container", "")
        error = await request.json()
        log.error(
            "%s: container %s failed to start: %s: %s",
            self.spec.name,
            cid,
            error.get("errorType"),
            error.get("errorMessage"),
        )
        self.containers.pop(cid, None)
        self.starting = max(0, self.starting - 1)
        # Lambda fails the invocation that triggered the cold start; fail the oldest pending one.
        if self.pending:
            self._complete(
                self.pending.popleft(), error={**error, "errorType": "Runtime.ImportModuleError"}
            )
        return web.json_response({"status": "OK"}, status=202)

    def _timed_out(self, item: _Pending) -> None:
        container = item.container
        log.warning(
            "%s: %s timed out after %ss; killing its container",
            self.spec.name,
            item.inv.request_id,
            self.spec.timeout,
        )
        self._complete(item, error=_timeout_error(self.spec.timeout))
        if container is not None:
            self._kill(container)

    def _kill(self, container: _Container) -> None:
        self.containers.pop(container.id, None)
        if container.pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(container.pid, signal.SIGKILL)

    async def _watch(self) -> None:
        """Fail invocations whose container died (crash, OOM kill), as Lambda reports them."""
        while True:
            await asyncio.sleep(0.5)
            for container in list(self.containers.values()):
                if not container.pid:
                    continue
                try:
                    os.kill(container.pid, 0)
                    continue
                except ProcessLookupError:
                    pass
                self.containers.pop(container.id, None)
                if container.busy is not None and not container.busy.done.done():
                    self._complete(
                        container.busy,
                        error={
                            "errorMessage": "Runtime exited without providing a reason",
                            "errorType": "Runtime.ExitError",
                            "stackTrace": [],
                        },
                    )
            self._scale()

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


class _Zygote:
    """The process that forks containers; its process group holds every container."""

    def __init__(self, python: str, env: dict[str, str], preload: tuple[str, ...]) -> None:
        self.python, self.env, self.preload = python, env, preload
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        root = str(Path(__file__).resolve().parent.parent)
        env = dict(self.env)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH", "")]))
        self.proc = subprocess.Popen(
            [self.python, "-m", "devstack.runtime", *self.preload],
            stdin=subprocess.PIPE,
            env=env,
            cwd=root,
            start_new_session=True,
        )

    def fork(self, request: dict[str, Any]) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(request).encode() + b"\n")
        self.proc.stdin.flush()

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        with contextlib.suppress(OSError):
            assert proc.stdin is not None
            proc.stdin.close()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        with contextlib.suppress(ProcessLookupError):  # containers outliving the zygote
            os.killpg(proc.pid, signal.SIGKILL)


# --------------------------------------------------------------------------- container (child)


def load_handler(code_dir: Path, handler: str, module_name: str) -> Callable[[Any, Any], Any]:
    """Import ``code_dir/<module>.py`` under a unique module name; return its handler."""
    module_file, _, attr = handler.rpartition(".")
    path = Path(code_dir) / f"{module_file.replace('.', '/')}.py"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return getattr(module, attr)


def peak_memory_kb() -> int:
    """This process's resident-memory high-water mark (VmHWM), as Lambda's REPORT shows it."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _container_main(request: dict[str, Any]) -> None:
    """A container: init the handler, then loop on the Runtime API until it goes away."""
    import http.client

    os.environ.update(request["env"])
    code_dir = request["code_dir"]
    sys.path[:0] = [code_dir, *request.get("layers", [])]
    host, _, prefix = os.environ["AWS_LAMBDA_RUNTIME_API"].partition("/")
    base = f"/{prefix}{API_PREFIX}"
    ident = {
        "Lambda-Runtime-Container": request["container"],
        "Lambda-Runtime-Pid": str(os.getpid()),
    }
    conn = http.client.HTTPConnection(host)

    def call(
        method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> tuple[http.client.HTTPResponse, bytes]:
        conn.request(method, base + path, body=body, headers={**ident, **(headers or {})})
        response = conn.getresponse()
        return response, response.read()

    try:
        handler = load_handler(Path(code_dir), request["handler"], f"fn_{request['function']}_app")
    except Exception as exc:
        traceback.print_exc()
        with contextlib.suppress(OSError):
            call("POST", "/init/error", json.dumps(error_payload(exc)).encode())
        os._exit(1)
    memory = int(os.environ.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128"))
    name = os.environ["AWS_LAMBDA_FUNCTION_NAME"]
    stream = os.environ["AWS_LAMBDA_LOG_STREAM_NAME"]
    while True:
        try:
            response, body = call("GET", "/invocation/next")
        except OSError:
            os._exit(0)  # the runtime API is gone: the stack stopped
        if response.status != 200:
            os._exit(0)
        rid = response.getheader("Lambda-Runtime-Aws-Request-Id", "")
        os.environ["_X_AMZN_TRACE_ID"] = response.getheader("Lambda-Runtime-Trace-Id", "")
        ctx = LambdaContext(
            name,
            memory,
            rid,
            int(response.getheader("Lambda-Runtime-Deadline-Ms", "0")),
            stream,
            response.getheader("Lambda-Runtime-Invoked-Function-Arn"),
        )
        try:
            result = handler(json.loads(body), ctx)
            try:
                out, kind = json.dumps(result).encode(), "response"
            except (TypeError, ValueError) as exc:
                out = json.dumps(
                    {"errorMessage": str(exc), "errorType": "Runtime.MarshalError"}
                ).encode()
                kind = "error"
        except Exception as exc:  # the handler's failure is the invocation's result
            traceback.print_exc()
            out, kind = json.dumps(error_payload(exc)).encode(), "error"
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            call(
                "POST",
                f"/invocation/{rid}/{kind}",
                out,
                {
                    "Lambda-Runtime-Max-Memory-Kb": str(peak_memory_kb()),
                    "Content-Type": "application/json",
                },
            )
        except OSError:
            os._exit(0)


def _zygote_main(preload: list[str]) -> None:
    """Preload libraries, then fork one container per line read from stdin until EOF."""
    for name in preload:
        with contextlib.suppress(Exception):
            importlib.import_module(name)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernel reaps containers
    for line in sys.stdin.buffer:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            devnull = os.open(os.devnull, os.O_RDONLY)
            os.dup2(devnull, 0)
            try:
                _container_main(request)
            finally:
                os._exit(1)
    os._exit(0)


if __name__ == "__main__":  # python -m devstack.runtime [module to preload...]
    _zygote_main(sys.argv[1:])
