"""End to end through the local stack: many WebSocket clients at once, each streaming one answer.

Path measured: the mock LLM emits a token → the stream function (a Lambda-like container
process) reads it → FrameSender → boto3 PostToConnection → the local gateway → the client's
socket. The clients run in their own process so the stack's event loop is not theirs; both read
``time.monotonic()``, which is one clock for the whole machine on Linux.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from . import local_stack
from .config import Config
from .delivery import percentile
from .report import table

Progress = Callable[[str], None]


@dataclass
class E2ERun:
    streams: int
    complete: int  # answers that arrived whole, in order, with gapless seq
    lag_p50_ms: float  # every token of every stream: LLM emission → client receipt
    lag_p99_ms: float
    first_p50_ms: float  # the first token only
    first_p99_ms: float
    start_p50_ms: float  # prompt sent → `start` frame received (includes waiting for a container)
    start_p99_ms: float
    frames_median: float  # frames per answer the client received (start, deltas, end)
    memory_max_mb: float  # the stream function containers' peak memory (VmHWM), largest
    memory_median_mb: float
    containers: int  # stream function containers that served the run
    seconds: float  # from the first message sent to the last answer received
    load_before: float  # 1-minute load average just before the run
    load: float  # and just after it


@dataclass
class E2EResult:
    runs: list[E2ERun]
    post_latency_ms: float
    tokens: int
    rate: float
    max_containers: int
    error: str | None = None


# --------------------------------------------------------------------------- the clients


def _clients_main(url: str, requests: list[tuple[str, str]], timeout: float, out: Any) -> None:
    """In a child process: connect every client, then send all prompts at once; report frames."""
    out.put(asyncio.run(_clients(url, requests, timeout)))


async def _clients(url: str, requests: list[tuple[str, str]], timeout: float) -> dict[str, Any]:
    import websockets

    go, all_in = asyncio.Event(), asyncio.Event()
    connected = 0
    connect_slots = asyncio.Semaphore(25)  # API Gateway would take them all; $connect is a function

    def arrived() -> None:
        nonlocal connected
        connected += 1
        if connected == len(requests):
            all_in.set()

    async def client(rid: str, prompt: str) -> tuple[str, list[tuple[float, str]]]:
        try:
            async with connect_slots:
                ws = await websockets.connect(
                    url, open_timeout=120, ping_interval=None, close_timeout=5, max_size=None
                )
        except (TimeoutError, OSError, websockets.WebSocketException):
            arrived()
            return rid, []
        arrived()
        frames: list[tuple[float, str]] = []

        async def read() -> None:
            async for raw in ws:
                text = raw if isinstance(raw, str) else raw.decode()
                frames.append((time.monotonic(), text))
                if '"type":"end"' in text or '"type":"error"' in text:
                    return

        try:
            await go.wait()
            await ws.send(json.dumps({"action": "sendMessage", "requestId": rid, "prompt": prompt}))
            await asyncio.wait_for(read(), timeout)  # a lost answer must not hang the benchmark
        except (websockets.ConnectionClosed, TimeoutError):
            pass
        finally:
            await ws.close()
        return rid, frames

    tasks = [asyncio.ensure_future(client(rid, prompt)) for rid, prompt in requests]
    await all_in.wait()  # every client connected: start them together
    sent_at = time.monotonic()
    go.set()
    results = await asyncio.gather(*tasks)
    return {"sent_at": sent_at, "finished_at": time.monotonic(), "frames": dict(results)}


# --------------------------------------------------------------------------- one run


def _run_streams(stack: Any, n: int, config: Config, label: str) -> E2ERun:
    directive = (
        f"#mock tokens={config.e2e_tokens} rate={config.e2e_rate:g} "
        f"first_token_delay={config.first_token_delay:g}"
    )
    requests = [(f"{label}-{i}", f"Stream {label}-{i}.\n{directive}") for i in range(n)]
    before = {id(r) for r in stack.mock_llm.requests}
    load_before = _load()
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    timeout = config.e2e_timeout
    child = ctx.Process(
        target=_clients_main, args=(stack.ws_url, requests, timeout, out), daemon=True
    )
    child.start()
    got = out.get(timeout=timeout + 600)
    child.join(30)
    load = _load()
    started = sum(
        1 for frames in got["frames"].values() if any('"type":"start"' in raw for _, raw in frames)
    )

    def reported(invocations: list[Any]) -> bool:
        done = [
            i
            for i in invocations
            if i.function == "stream" and _mentions(i, label) and i.finished_at is not None
        ]
        return len(done) >= started

    with contextlib.suppress(Exception):  # memory figures only; the lag is already measured
        stack.wait_for_invocations(reported, timeout=30)

    rid_of = {}
    for record in stack.mock_llm.requests:
        if id(record) in before:
            continue
        text = json.dumps(record.body.get("messages", []))
        for rid, _ in requests:
            if f"Stream {rid}." in text:
                rid_of[rid] = record
    expected = "".join(f"t{i} " for i in range(config.e2e_tokens))
    lags: list[float] = []
    firsts: list[float] = []
    starts: list[float] = []
    frame_counts: list[int] = []
    complete = 0
    for rid, _ in requests:
        received = [(t, json.loads(raw)) for t, raw in got["frames"].get(rid, [])]
        deltas = [(t, f) for t, f in received if f.get("type") == "delta"]
        frame_counts.append(sum(1 for _, f in received if f.get("type") != "accepted"))
        starts += [t - got["sent_at"] for t, f in received if f.get("type") == "start"]
        record = rid_of.get(rid)
        text = "".join(f["text"] for _, f in deltas)
        if record is None or not deltas or text != expected:
            continue
        if [f["seq"] for _, f in deltas] != list(range(len(deltas))):
            continue
        complete += 1
        k, carried, end = 0, len(deltas[0][1]["text"]), 0
        for i, emitted in enumerate(record.token_times):
            end += len(f"t{i} ")
            while carried < end and k + 1 < len(deltas):
                k += 1
                carried += len(deltas[k][1]["text"])
            lags.append(deltas[k][0] - emitted)
        firsts.append(deltas[0][0] - record.token_times[0])

    invocations = [inv for inv in stack.invocations("stream") if _mentions(inv, label)]
    memory = [inv.max_memory_mb for inv in invocations if inv.max_memory_mb]
    return E2ERun(
        streams=n,
        complete=complete,
        lag_p50_ms=percentile(lags, 50) * 1000 if lags else float("nan"),
        lag_p99_ms=percentile(lags, 99) * 1000 if lags else float("nan"),
        first_p50_ms=percentile(firsts, 50) * 1000 if firsts else float("nan"),
        first_p99_ms=percentile(firsts, 99) * 1000 if firsts else float("nan"),
        start_p50_ms=percentile(starts, 50) * 1000 if starts else float("nan"),
        start_p99_ms=percentile(starts, 99) * 1000 if starts else float("nan"),
        frames_median=statistics.median(frame_counts) if frame_counts else float("nan"),
        memory_max_mb=max(memory) if memory else float("nan"),
        memory_median_mb=statistics.median(memory) if memory else float("nan"),
        containers=len({inv.container for inv in invocations}),
        seconds=got["finished_at"] - got["sent_at"],
        load_before=load_before,
        load=load,
    )


def _mentions(inv: Any, label: str) -> bool:
    """Whether a stream invocation served one of this run's requests."""
    try:
        doc = json.loads(inv.event["Records"][0]["Sns"]["Message"])
    except (KeyError, IndexError, TypeError, ValueError):
        return False
    return str(doc.get("requestId", "")).startswith(f"{label}-")


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """The containers inherit file descriptor 1 and log there; keep stdout for the tables."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def _load() -> float:
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return float("nan")


def run_e2e(config: Config, progress: Progress = lambda _line: None) -> E2EResult:
    result = E2EResult(
        [],
        config.e2e_post_latency_ms,
        config.e2e_tokens,
        config.e2e_rate,
        min(max(config.e2e_streams), config.e2e_max_containers),
    )
    try:
        stack = local_stack(
            post_latency=config.e2e_post_latency_ms / 1000,
            max_concurrency={
                "stream": result.max_containers,
                "message": 10,
                "connect": 25,
                "disconnect": 25,
            },
            env={
                "MIN_FRAME_INTERVAL_MS": f"{config.min_interval_ms:g}",
                "MAX_TOKENS": str(config.e2e_tokens + 10),
                # One client machine opens every connection: lift the per-caller limits.
                "RATE_LIMIT_PER_MINUTE": "1000000",
                "PRINCIPAL_RATE_LIMIT_PER_MINUTE": "1000000",
                "MAX_CONCURRENT_STREAMS": "1000000",
                "POWERTOOLS_LOG_LEVEL": "WARNING",
            },
        )
    except ImportError as exc:
        result.error = f"the local stack is not available ({exc})"
        return result
    try:
        with _stdout_to_stderr(), stack:
            for n in config.e2e_streams:
                progress(f"e2e: {n} concurrent streams through the local stack")
                run = _run_streams(stack, n, config, f"e2e{n}")
                progress(
                    f"e2e: {n} streams: {run.complete} complete, token lag p50 "
                    f"{run.lag_p50_ms:.0f} ms p99 {run.lag_p99_ms:.0f} ms, "
                    f"peak memory {run.memory_max_mb:.0f} MB"
                )
                result.runs.append(run)
    except Exception as exc:  # report what ran; the rest of the benchmark still stands
        result.error = f"{type(exc).__name__}: {exc}"
        progress(f"e2e failed: {result.error}")
    return result


def render_e2e(config: Config, result: E2EResult | None) -> list[str]:
    out = ["## End to end through the local stack", ""]
    if result is None:
        return out + ["Not run.", ""]
    out += [
        f"Concurrent WebSocket clients on the local stack (`devstack`), all connected first, "
        f"then each sending one prompt at the same moment; the mock LLM answers each with "
        f"{result.tokens} tokens at {result.rate:g} tokens/s. Each answer is streamed by a "
        f"stream-function container (its own process, one invocation at a time, as in Lambda) "
        f"through boto3 and the local Management API (injected post latency "
        f"{result.post_latency_ms:g} ms) to the client.",
        "",
        "- *Complete*: answers that arrived whole, in order, with gapless `seq`, within "
        f"{config.e2e_timeout:g} s; the lags are over these.",
        "- *Token lag*: from the mock LLM emitting a token to the client receiving the frame "
        "that carries it, over every token of every stream.",
        "- *First token*: the same for each stream's first token.",
        "- *Start*: from sending the prompt to receiving `start`: the message function, SNS, "
        "and getting a stream-function container, which at first means cold-starting one "
        "(forking it and importing the handler) on this busy machine, or waiting for one to "
        "come free.",
        "- *Peak memory*: the stream-function containers' VmHWM, as Lambda's REPORT line "
        "gives it (the containers are forked from a process that preloads boto3 and openai).",
        "",
        f"The stream function runs at most **{result.max_containers} containers** at once, "
        "like a reserved concurrency: each container holds ~40 MB of private memory, so 500 "
        "would not fit this machine. Beyond that, prompts wait for a container (see *start*); "
        "once a stream starts, its token lag is what the table shows.",
        "",
    ]
    if result.runs:
        out += [
            table(
                [
                    "concurrent clients",
                    "complete",
                    "token lag p50 ms",
                    "token lag p99 ms",
                    "first token p50 / p99 ms",
                    "start p50 / p99 ms",
                    "frames/answer",
                    "stream fn peak memory MB (max / median)",
                    "containers used",
                    "run s",
                    "load before / after",
                ],
                [
                    [
                        r.streams,
                        f"{r.complete}/{r.streams}",
                        f"**{r.lag_p50_ms:.0f}**",
                        f"**{r.lag_p99_ms:.0f}**",
                        f"{r.first_p50_ms:.0f} / {r.first_p99_ms:.0f}",
                        f"{r.start_p50_ms:.0f} / {r.start_p99_ms:.0f}",
                        f"{r.frames_median:.0f}",
                        f"{r.memory_max_mb:.0f} / {r.memory_median_mb:.0f}",
                        r.containers,
                        f"{r.seconds:.1f}",
                        f"{r.load_before:.1f} / {r.load:.1f}",
                    ]
                    for r in result.runs
                ],
            ),
            "",
            "Everything here shares the benchmark machine's 2 CPUs: the gateway, the mock LLM, "
            "moto, every container and every client. Where the lag grows with the number of "
            "streams, it is this machine running out of CPU (see the load), not the sender; in "
            "Lambda each container has its own CPU. The sender adapts as it should: when posts "
            "slow down under load, more tokens share each frame (see frames/answer).",
            "",
        ]
    if result.error:
        out += [f"**Pending / failed:** {result.error}", ""]
    return out
