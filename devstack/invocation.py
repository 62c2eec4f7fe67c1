"""What the runtime knows of a function and of one run of it: its spec, the invocation record, the
context object its handler gets, and Lambda's error payloads. Shared by both sides of the runtime.
"""

from __future__ import annotations

import time
import traceback
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ACCOUNT_ID = "123456789012"
REGION = "us-east-1"
API_PREFIX = "/2018-06-01/runtime"  # the Runtime API's paths, under /{fn}


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


def timeout_error(timeout: float) -> dict[str, Any]:
    return {
        "errorMessage": f"Task timed out after {timeout:.2f} seconds",
        "errorType": "Sandbox.Timedout",
        "stackTrace": [],
    }


def exit_error() -> dict[str, Any]:
    return {
        "errorMessage": "Runtime exited without providing a reason",
        "errorType": "Runtime.ExitError",
        "stackTrace": [],
    }


def not_found_error(name: str) -> dict[str, Any]:
    return {
        "errorMessage": f"Function not found: {name}",
        "errorType": "ResourceNotFoundException",
        "stackTrace": [],
    }
