"""The zygote (``python -m devstack.zygote``): a clean interpreter that preloads the heavy libraries
once and forks a container per request; and the container, which polls the Runtime API.

A container imports its handler (its cold start), then pulls invocations one at a time
(``GET /{fn}/2018-06-01/runtime/invocation/next``), as a real Lambda runtime does; it reports
its peak memory (VmHWM) like Lambda's REPORT line, and its stdout goes straight to ours. This
module imports neither asyncio nor aiohttp, so a container holds only what its handler needs.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import traceback
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from .invocation import API_PREFIX, LambdaContext, error_payload

PRELOAD = ("boto3", "botocore.session", "openai", "aws_lambda_powertools", "aws_xray_sdk.core")


# --------------------------------------------------------------------------- parent side


def zygote_env(common: Mapping[str, str | None]) -> dict[str, str]:
    """This process's environment with the functions' common one on top (None unsets)."""
    env = dict(os.environ)
    for key, value in common.items():  # None unsets, e.g. AWS_PROFILE
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    env["PYTHONUNBUFFERED"] = "1"
    return env


class Zygote:
    """The process that forks containers; its process group holds every container."""

    def __init__(self, python: str, env: dict[str, str], preload: tuple[str, ...]) -> None:
        self.python, self.env, self.preload = python, env, preload
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        root = str(Path(__file__).resolve().parent.parent)
        env = dict(self.env)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH", "")]))
        self.proc = subprocess.Popen(
            [self.python, "-m", "devstack.zygote", *self.preload],
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

    def kill(self) -> None:
        """Kill the zygote and every container at once (no clean-up)."""
        proc = self.proc  # safe from any thread: stop() may be clearing it
        if proc is not None:
            with contextlib.suppress(ProcessLookupError):
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


if __name__ == "__main__":  # python -m devstack.zygote [module to preload...]
    _zygote_main(sys.argv[1:])
