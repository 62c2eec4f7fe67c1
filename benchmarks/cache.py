"""The response cache: a workload with repeats, through the local stack, with the cache off
and on (``ResponseCacheTtlSeconds``; shared, since the benchmark's clients are anonymous).

100 requests, 30 of them repeats of earlier prompts (drawn at random with a fixed seed), sent by
10 clients at once, each opening a socket per request and reading its answer to the end, as chat
front-ends with starter prompts do. Measured: each request's time from sending to its ``end``,
the whole run's time, and the model calls the mock LLM counted.
"""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import local_stack
from .delivery import percentile
from .report import table

REQUESTS, REPEATS, CLIENTS = 100, 30, 10
TTL_SECONDS = 300
DIRECTIVE = "#mock tokens=40 rate=50 first_token_delay=0.3"  # a second of answer
QUICK = (20, 6, 5)


@dataclass
class CacheRun:
    cache: bool
    requests: int
    complete: int  # answers that ended with `end`
    cached: int  # ends marked cached
    coalesced: int  # ends marked coalesced
    model_calls: int
    end_p50_ms: float
    end_p90_ms: float
    repeat_p50_ms: float  # the repeated prompts only
    seconds: float


@dataclass
class CacheResult:
    runs: list[CacheRun]
    requests: int
    repeats: int
    clients: int


def workload(requests: int, repeats: int, seed: int = 7) -> list[tuple[str, bool]]:
    """``requests`` prompts, each with whether it repeats an earlier one (``repeats`` do), in a
    fixed order."""
    rng = random.Random(seed)
    run_id = uuid.uuid4().hex[:8]  # a fresh cache per run
    prompts: list[tuple[str, bool]] = []
    repeat_at = set(rng.sample(range(1, requests), repeats))
    for i in range(requests):
        if i in repeat_at:
            prompts.append((rng.choice([p for p, repeat in prompts if not repeat]), True))
        else:
            prompts.append((f"Question {run_id}-{i}.\n{DIRECTIVE}", False))
    return prompts


async def _ask(url: str, prompt: str) -> tuple[float, dict[str, Any] | None]:
    import websockets

    sent = time.monotonic()
    async with websockets.connect(url, open_timeout=120, max_size=None) as ws:
        body = {"action": "sendMessage", "requestId": uuid.uuid4().hex, "prompt": prompt}
        await ws.send(json.dumps(body))
        async for raw in ws:
            frame = json.loads(raw)
            if frame["type"] in ("end", "error"):
                return time.monotonic() - sent, frame if frame["type"] == "end" else None
    return time.monotonic() - sent, None


async def _clients(
    url: str, prompts: list[tuple[str, bool]], clients: int
) -> list[tuple[float, Any, bool]]:
    queue: asyncio.Queue[tuple[str, bool]] = asyncio.Queue()
    for p in prompts:
        queue.put_nowait(p)
    results: list[tuple[float, Any, bool]] = []

    async def client() -> None:
        while not queue.empty():
            prompt, repeat = queue.get_nowait()
            took, end = await asyncio.wait_for(_ask(url, prompt), 120)
            results.append((took, end, repeat))

    await asyncio.gather(*(client() for _ in range(clients)))
    return results


def _one(cache: bool, prompts: list[tuple[str, bool]], clients: int) -> CacheRun:
    parameters = {"ResponseCacheTtlSeconds": str(TTL_SECONDS if cache else 0)}
    parameters["ResponseCacheShared"] = "true"
    with local_stack(parameters=parameters) as stack:
        before = len(stack.mock_llm.requests)
        started = time.monotonic()
        results = asyncio.run(_clients(stack.ws_url, prompts, clients))
        seconds = time.monotonic() - started
        calls = len(stack.mock_llm.requests) - before
    ends = [end for _, end, _ in results if end is not None]
    times = sorted(t * 1000 for t, _, _ in results)
    return CacheRun(
        cache=cache,
        requests=len(prompts),
        complete=len(ends),
        cached=sum(bool(e.get("cached")) for e in ends),
        coalesced=sum(bool(e.get("coalesced")) for e in ends),
        model_calls=calls,
        end_p50_ms=statistics.median(times),
        end_p90_ms=percentile(times, 90),
        repeat_p50_ms=statistics.median(t * 1000 for t, _, repeat in results if repeat),
        seconds=seconds,
    )


def run_cache(
    quick: bool = False, progress: Callable[[str], None] = lambda _l: None
) -> CacheResult:
    requests, repeats, clients = QUICK if quick else (REQUESTS, REPEATS, CLIENTS)
    runs = []
    for cache in (False, True):
        progress(f"cache: {requests} requests, {repeats} repeats, cache {'on' if cache else 'off'}")
        runs.append(_one(cache, workload(requests, repeats), clients))
    return CacheResult(runs, requests, repeats, clients)


def render_cache(result: CacheResult | None) -> list[str]:
    if result is None:
        return []
    off, on = result.runs
    rows = [
        [
            "on" if r.cache else "off",
            f"{r.complete}/{r.requests}",
            str(r.model_calls),
            f"{r.cached} / {r.coalesced}",
            f"**{r.end_p50_ms:.0f}**",
            f"{r.end_p90_ms:.0f}",
            f"**{r.repeat_p50_ms:.0f}**",
            f"{r.seconds:.1f}",
        ]
        for r in result.runs
    ]
    return [
        "## Response cache",
        "",
        f"{result.requests} requests, {result.repeats} of them repeats of earlier prompts, "
        f"{result.clients} clients at once, each request on its own socket; the mock LLM answers "
        f"`{DIRECTIVE}` (one second). Through the local stack, once with "
        f"`ResponseCacheTtlSeconds=0` and once with {TTL_SECONDS} (shared: the clients are "
        "anonymous). Time to end: from sending `sendMessage` to receiving `end`.",
        "",
        table(
            [
                "cache",
                "complete",
                "model calls",
                "cached / coalesced ends",
                "time to end, median (ms)",
                "p90 (ms)",
                "median of the repeats (ms)",
                "whole run (s)",
            ],
            rows,
        ),
        "",
        f"With the cache, {off.model_calls - on.model_calls} fewer model calls "
        f"({on.model_calls / max(1, off.model_calls):.0%} of them) and the whole run takes "
        f"{on.seconds / max(off.seconds, 1e-9):.2f}× as long; a repeated prompt ends in "
        f"{on.repeat_p50_ms / max(off.repeat_p50_ms, 1e-9):.2f}× the time (median). A hit "
        "skips the model's time to first token and its pace, so its time to end is the round "
        "trips alone; a coalesced "
        "request ends with the stream it followed.",
        "",
    ]
