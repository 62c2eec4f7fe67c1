"""Thread isolation: a function's handler runs on a thread pool in this process (debugging, fake
handlers in unit tests), with this process's os.environ set for it and restored on stop.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .invocation import (
    FunctionSpec,
    Invocation,
    LambdaContext,
    error_payload,
    log_stream_name,
    timeout_error,
)
from .zygote import load_handler


class Environ:
    """This process's os.environ, given each in-process function's environment; ``restore``
    puts back what was there before."""

    def __init__(self, common: Mapping[str, str | None]) -> None:
        self.common = common
        self._saved: dict[str, str | None] = {}

    def apply(self, spec: FunctionSpec) -> None:
        wanted: dict[str, str | None] = {**self.common, **spec.env}
        for key, value in wanted.items():
            self._saved.setdefault(key, os.environ.get(key))
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value

    def restore(self) -> None:
        for key, value in self._saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        self._saved.clear()


class ThreadPool:
    """Runs a callable (or an app.py loaded in this process) on a thread pool."""

    def __init__(self, spec: FunctionSpec, environ: Environ) -> None:
        self.spec, self.environ = spec, environ
        self._executor = ThreadPoolExecutor(spec.max_concurrency, f"fn-{spec.name}")
        self._handler: Callable[[Any, Any], Any] | None = None
        self._stream = log_stream_name()

    def _load(self) -> Callable[[Any, Any], Any]:
        if self._handler is None:
            handler = self.spec.handler
            if isinstance(handler, str):
                assert self.spec.code_dir is not None
                self.environ.apply(self.spec)
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
            inv.error = timeout_error(self.spec.timeout)

    async def run(self, inv: Invocation) -> None:
        await asyncio.get_running_loop().run_in_executor(self._executor, self._call, inv)

    def prewarm(self) -> None:
        pass

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
