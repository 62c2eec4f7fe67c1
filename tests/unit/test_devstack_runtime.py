"""The Lambda-like runtime: containers, context, timeouts, crashes and async retries."""

from __future__ import annotations

import asyncio
import contextlib
import textwrap
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from devstack.runtime import FunctionError, FunctionSpec, Invocation, LambdaContext, Runtime
from devstack.stack import serve

HANDLER = """
import os, time
COUNT = 0

def lambda_handler(event, context):
    global COUNT
    COUNT += 1
    if event.get("fail"):
        raise ValueError("asked to fail")
    if event.get("exit"):
        os._exit(3)
    time.sleep(event.get("sleep", 0))
    return {
        "count": COUNT, "pid": os.getpid(), "greeting": os.environ.get("GREETING"),
        "name": context.function_name, "memory": context.memory_limit_in_mb,
        "remaining": context.get_remaining_time_in_millis(), "request_id": context.aws_request_id,
        "log_group": context.log_group_name, "arn": context.invoked_function_arn,
    }
"""


def function_dir(tmp_path: Path, source: str = HANDLER) -> Path:
    folder = tmp_path / "fn"
    folder.mkdir(exist_ok=True)
    (folder / "app.py").write_text(textwrap.dedent(source))
    return folder


def spec(code_dir: Path, **overrides: Any) -> FunctionSpec:
    settings: dict[str, Any] = {
        "name": "fn",
        "code_dir": code_dir,
        "timeout": 10,
        "memory_mb": 128,
        "env": {"GREETING": "hello"},
        **overrides,
    }
    return FunctionSpec(**settings)


@contextlib.asynccontextmanager
async def running(*specs: FunctionSpec, **options: Any) -> AsyncIterator[Runtime]:
    runtime = Runtime(list(specs), preload=(), **options)  # tiny handlers need no preloading
    app = web.Application()
    runtime.add_routes(app)
    runner, port = await serve(app, "127.0.0.1", 0)
    await runtime.start(f"http://127.0.0.1:{port}")
    try:
        yield runtime
    finally:
        await runtime.stop()
        await runner.cleanup()


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 60))


def test_a_warm_container_keeps_module_state_and_sees_its_own_environment(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running(spec(function_dir(tmp_path), function_name="local-Fn")) as runtime:
            first = await runtime.invoke("fn", {})
            second = await runtime.invoke("fn", {})
            assert (first["count"], second["count"]) == (1, 2)
            assert first["pid"] == second["pid"]
            assert first["greeting"] == "hello"
            assert first["name"] == "local-Fn"
            assert first["memory"] == "128"
            assert first["log_group"] == "/aws/lambda/local-Fn"
            assert first["arn"].endswith(":function:local-Fn")
            assert 0 < first["remaining"] <= 10_000
            assert first["request_id"] != second["request_id"]
            assert runtime.invocations[-1].max_memory_mb > 1

    run(scenario())


def test_concurrent_invocations_each_get_a_container_of_their_own(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running(spec(function_dir(tmp_path), max_concurrency=5)) as runtime:
            results = await asyncio.gather(
                *(runtime.invoke("fn", {"sleep": 0.3}) for _ in range(3))
            )
            assert len({r["pid"] for r in results}) == 3

    run(scenario())


def test_invocations_beyond_max_concurrency_wait_for_a_free_container(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running(spec(function_dir(tmp_path), max_concurrency=1)) as runtime:
            results = await asyncio.gather(
                *(runtime.invoke("fn", {"sleep": 0.1}) for _ in range(3))
            )
            assert len({r["pid"] for r in results}) == 1
            assert sorted(r["count"] for r in results) == [1, 2, 3]

    run(scenario())


def test_a_handler_exception_fails_a_synchronous_invoke_with_its_type_and_message(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        async with running(spec(function_dir(tmp_path))) as runtime:
            with pytest.raises(FunctionError) as failed:
                await runtime.invoke("fn", {"fail": True})
            assert failed.value.error["errorType"] == "ValueError"
            assert failed.value.error["errorMessage"] == "asked to fail"
            assert (await runtime.invoke("fn", {}))["count"] == 2  # the container lives on

    run(scenario())


def test_a_failed_async_invocation_is_retried_then_handed_to_the_failure_hook(
    tmp_path: Path,
) -> None:
    given_up: list[Invocation] = []

    async def scenario() -> None:
        async with running(
            spec(function_dir(tmp_path), async_retries=2),
            retry_delays=(0.0,),
            on_async_failure=given_up.append,
        ) as runtime:
            request_id = runtime.invoke_async("fn", {"fail": True})
            await runtime.drain()
            attempts = [i for i in runtime.invocations if i.request_id == request_id]
            assert [i.attempt for i in attempts] == [0, 1, 2]
            assert all(i.asynchronous and not i.ok for i in attempts)
            assert [i.request_id for i in given_up] == [request_id]

    run(scenario())


def test_a_successful_async_invocation_runs_once(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running(spec(function_dir(tmp_path))) as runtime:
            runtime.invoke_async("fn", {})
            invocation = await runtime.wait_for(lambda invs: invs[0] if invs else None, timeout=10)
            await runtime.drain()
            assert invocation.ok and len(runtime.invocations) == 1

    run(scenario())


def test_an_invocation_past_its_timeout_is_killed_and_reported_as_timed_out(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running(spec(function_dir(tmp_path), timeout=0.5)) as runtime:
            first = await runtime.invoke("fn", {})
            with pytest.raises(FunctionError) as failed:
                await runtime.invoke("fn", {"sleep": 30})
            assert failed.value.error["errorType"] == "Sandbox.Timedout"
            after = await runtime.invoke("fn", {})
            assert after["pid"] != first["pid"] and after["count"] == 1  # a fresh container

    run(scenario())


def test_a_container_that_exits_mid_invocation_fails_it_as_a_runtime_exit(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running(spec(function_dir(tmp_path))) as runtime:
            with pytest.raises(FunctionError) as failed:
                await runtime.invoke("fn", {"exit": True})
            assert failed.value.error["errorType"] == "Runtime.ExitError"
            assert (await runtime.invoke("fn", {}))["count"] == 1

    run(scenario())


def test_a_handler_that_fails_to_import_fails_the_invocation(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running(spec(function_dir(tmp_path, "import not_a_module\n"))) as runtime:
            with pytest.raises(FunctionError) as failed:
                await runtime.invoke("fn", {})
            assert failed.value.error["errorType"] == "Runtime.ImportModuleError"
            assert "not_a_module" in failed.value.error["errorMessage"]

    run(scenario())


def test_thread_isolation_runs_a_plain_callable_with_a_lambda_context() -> None:
    def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
        return {"doubled": event["n"] * 2, "name": context.function_name}

    async def scenario() -> None:
        async with running(FunctionSpec("double", handler=handler, isolation="thread")) as runtime:
            assert await runtime.invoke("double", {"n": 21}) == {"doubled": 42, "name": "double"}

    run(scenario())


def test_context_counts_the_remaining_time_down_to_the_deadline() -> None:
    deadline = int(time.time() * 1000) + 5_000
    context = LambdaContext("fn", 512, "rid", deadline, "stream")
    assert 4_000 < context.get_remaining_time_in_millis() <= 5_000
    assert LambdaContext("fn", 512, "rid", 0, "stream").get_remaining_time_in_millis() == 0
