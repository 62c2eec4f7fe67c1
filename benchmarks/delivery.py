"""Delivery scenarios: the real stream_answer, OpenAIProvider and FrameSender against the mock LLM.

Each scenario streams one answer through a post function with an injected latency: a fake that
sleeps (``transport="fake"``) or boto3's Management API client against a local endpoint that
sleeps (``transport="http"``, so botocore's signing and HTTP overhead count). ``mode="naive"``
is the baseline the issue describes: ``for chunk in stream: post(delta)``, no sender at all.

Scenarios run in worker processes, one stream per process at a time, each process with its own
mock LLM, so concurrent scenarios share CPU but not an interpreter lock.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from typing import Any

from . import add_paths

REQUEST_ID = "bench"
MESSAGE_METERING_BYTES = 32 * 1024
MODEL = "gpt-4o-mini"


@dataclass(frozen=True)
class Scenario:
    mode: str  # "batched" (FrameSender) or "naive" (one post per delta, in the read loop)
    transport: str  # "fake" (sleep) or "http" (boto3 → local Management API endpoint)
    latency_ms: float
    rate: float  # LLM tokens per second
    tokens: int = 1000
    min_interval_ms: float = 50.0
    first_token_delay: float = 0.25
    group: str = "grid"  # which part of the benchmark: "grid", "interval" or "ttfd"
    rep: int = 0

    @property
    def key(self) -> tuple[Any, ...]:
        return (
            self.group,
            self.mode,
            self.transport,
            self.latency_ms,
            self.rate,
            self.tokens,
            self.min_interval_ms,
        )

    @property
    def expected_seconds(self) -> float:
        """Roughly how long the scenario takes, to start the longest first."""
        llm = self.first_token_delay + self.tokens / self.rate
        if self.mode == "naive":
            return max(llm, self.tokens * (self.latency_ms / 1000 + 0.0002))
        return llm + self.latency_ms / 1000


@dataclass
class Run:
    """What one scenario run measured. Times are seconds unless the name says ms."""

    scenario: Scenario
    llm_time: float  # request start → last token emitted by the mock
    llm_ttft: float  # request start → first token emitted
    delivery: float  # request start → last delta frame's post returned
    post_rtt: float  # median post round trip measured in this run
    frames: int  # every frame posted: start, deltas, end
    messages: int  # what API Gateway meters: one per started 32 KB of each frame
    delta_frames: int
    frame_bound: int  # most delta frames allowed: one per max(latency, interval), + final flush
    ttfd_added_ms: float  # first delta frame's post returned − first token emitted
    ttfd_queued_ms: float  # of which: first token emitted → its post began (reading, batching)
    lag_p50_ms: float  # per token: frame carrying it returned − token emitted
    lag_p99_ms: float
    max_frame_bytes: int
    peak_rss_kb: int
    ok: bool  # the client got exactly the answer, in order, with gapless seq

    @property
    def limit(self) -> float:
        """The physical limit: the LLM's own time plus one post round trip."""
        return self.llm_time + self.post_rtt

    @property
    def ratio(self) -> float:
        return self.delivery / self.limit


# --------------------------------------------------------------------------- worker process

_worker: dict[str, Any] = {}


def _init_worker(api_endpoint_base: str | None) -> None:
    add_paths()
    os.environ.update(
        AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1"
    )
    for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
        os.environ.pop(var, None)
    from llmstream.stream.providers.openai import OpenAIProvider, openai_client

    from devstack.mock_llm import MockLLM

    mock = MockLLM().start()
    _worker.update(
        mock=mock,
        provider=OpenAIProvider(openai_client("sk-bench", mock.base_url)),
        api=api_endpoint_base,
    )
    # A warm container: the first stream in a process pays one-off lazy imports in the client.
    _stream_batched(_prompt(20, 0, 0), lambda _data: None, 0)


def _prompt(tokens: int, rate: float, first_token_delay: float) -> Any:
    from llmstream.core.envelope import PromptEnvelope

    directive = f"#mock tokens={tokens} rate={rate:g} first_token_delay={first_token_delay:g}"
    return PromptEnvelope(
        request_id=REQUEST_ID,
        connection_id="bench-connection",
        domain_name="localhost",
        stage="bench",
        messages=({"role": "user", "content": f"Benchmark.\n{directive}"},),
        model=MODEL,
        provider="openai",
        max_tokens=tokens + 10,
    )


def _stream_batched(envelope: Any, post: Callable[[bytes], None], min_interval: float) -> None:
    from llmstream.stream.sender import FrameSender
    from llmstream.stream.streaming import stream_answer

    sender = FrameSender(post, envelope.request_id, min_interval=min_interval)
    result = stream_answer(envelope, _worker["provider"], sender)
    if result.outcome != "completed":
        raise RuntimeError(f"the stream ended with {result.outcome}")


def _stream_naive(envelope: Any, post: Callable[[bytes], None]) -> None:
    """The baseline: post each delta as it is read, in the read loop. No batching, no thread."""
    from llmstream.core.protocol import delta_frame, encode, end_frame, start_frame

    rid = envelope.request_id
    post(encode(start_frame(rid, envelope.model)))
    stream = _worker["provider"].stream(
        list(envelope.messages),
        model=envelope.model,
        max_tokens=envelope.max_tokens,
        read_timeout=30.0,
    )
    seq, finish = 0, "stop"
    for chunk in stream:
        if chunk.text:
            post(encode(delta_frame(rid, seq, chunk.text)))
            seq += 1
        finish = chunk.finish_reason or finish
    post(encode(end_frame(rid, finish)))


def _post_function(scenario: Scenario) -> Callable[[bytes], None]:
    if scenario.transport == "fake":
        delay = scenario.latency_ms / 1000

        def post(data: bytes) -> None:
            time.sleep(delay)

        return post
    from llmstream.apigw.connection import Connection, management_client

    client = management_client(f"{_worker['api']}{scenario.latency_ms:g}")
    connection = Connection(client, "bench-connection")
    connection.post(b"{}")  # a warm container already holds an open connection to the endpoint
    return connection.post


def run_scenario(scenario: Scenario) -> Run:
    """Stream one answer as the scenario says and measure it (runs in a worker process)."""
    mock = _worker["mock"]
    inner = _post_function(scenario)
    posts: list[tuple[float, float, bytes]] = []

    def post(data: bytes) -> None:
        began = time.monotonic()
        inner(data)
        posts.append((began, time.monotonic(), data))

    mock.reset()
    envelope = _prompt(scenario.tokens, scenario.rate, scenario.first_token_delay)
    if scenario.mode == "naive":
        _stream_naive(envelope, post)
    else:
        _stream_batched(envelope, post, scenario.min_interval_ms / 1000)
    [request] = mock.requests
    return measure(scenario, request, posts)


def measure(scenario: Scenario, request: Any, posts: list[tuple[float, float, bytes]]) -> Run:
    """Turn the mock's token times and the posts' times into the run's numbers."""
    from devstack.runtime import peak_memory_kb

    frames = [(began, ended, json.loads(data)) for began, ended, data in posts]
    deltas = [(b, e, f) for b, e, f in frames if f["type"] == "delta"]
    tokens = [f"t{i} " for i in range(scenario.tokens)]
    text = "".join(f["text"] for _, _, f in deltas)
    ok = (
        text == "".join(tokens)
        and [f["seq"] for _, _, f in deltas] == list(range(len(deltas)))
        and frames[0][2]["type"] == "start"
        and frames[-1][2]["type"] == "end"
        and len(request.token_times) == scenario.tokens
    )
    # Which frame carried each token: the first whose cumulative text reaches the token's end.
    lags, k, delivered = [], 0, len(deltas[0][2]["text"])
    end = 0
    for emitted, token in zip(request.token_times, tokens, strict=False):
        end += len(token)
        while delivered < end and k + 1 < len(deltas):
            k += 1
            delivered += len(deltas[k][2]["text"])
        lags.append(deltas[k][1] - emitted)
    # At most one delta frame per post round trip or per minimum interval while the LLM streams
    # (1 + its first→last token time / spacing), plus the flush when the answer ends.
    interval = scenario.min_interval_ms if scenario.mode == "batched" else 0
    spacing = max(scenario.latency_ms, interval) / 1000
    streaming = request.token_times[-1] - request.token_times[0]
    bound = 2 + int(streaming / spacing) if spacing > 0 else scenario.tokens
    return Run(
        scenario=scenario,
        llm_time=request.token_times[-1] - request.started_at,
        llm_ttft=request.token_times[0] - request.started_at,
        delivery=deltas[-1][1] - request.started_at,
        post_rtt=statistics.median(e - b for b, e, _ in frames),
        frames=len(frames),
        messages=sum(-(-len(data) // MESSAGE_METERING_BYTES) for _, _, data in posts),
        delta_frames=len(deltas),
        frame_bound=bound,
        ttfd_added_ms=(deltas[0][1] - request.token_times[0]) * 1000,
        ttfd_queued_ms=(deltas[0][0] - request.token_times[0]) * 1000,
        lag_p50_ms=percentile(lags, 50) * 1000,
        lag_p99_ms=percentile(lags, 99) * 1000,
        max_frame_bytes=max(len(data) for _, _, data in posts),
        peak_rss_kb=peak_memory_kb(),
        ok=ok,
    )


def percentile(values: Iterable[float], p: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(p / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


# --------------------------------------------------------------------------- running many


def run_all(
    scenarios: list[Scenario],
    *,
    workers: int,
    progress: Callable[[str], None] = lambda _line: None,
) -> list[Run]:
    """Run scenarios in ``workers`` processes, longest first, and return every run."""
    from .management_api import ManagementApi

    ordered = sorted(scenarios, key=lambda s: s.expected_seconds, reverse=True)
    runs: list[Run] = []
    with ManagementApi() as api:
        base = api.endpoint(0).removesuffix("0")
        with ProcessPoolExecutor(
            max_workers=max(1, min(workers, len(ordered))),
            mp_context=get_context("spawn"),
            initializer=_init_worker,
            initargs=(base,),
        ) as pool:
            futures = {pool.submit(run_scenario, s): s for s in ordered}
            for n, future in enumerate(as_completed(futures), 1):
                run = future.result()
                runs.append(run)
                s = run.scenario
                progress(
                    f"[{n}/{len(ordered)}] {s.mode}/{s.transport} {s.latency_ms:g} ms "
                    f"{s.rate:g} tok/s interval {s.min_interval_ms:g} ms: "
                    f"{run.delivery:.2f} s, ratio {run.ratio:.3f}, {run.delta_frames} delta frames"
                )
    return runs


@dataclass
class Summary:
    """The median of a scenario's repetitions."""

    scenario: Scenario
    reps: int
    values: dict[str, float] = field(default_factory=dict)
    all_ok: bool = True

    def __getattr__(self, name: str) -> float:
        try:
            return self.__dict__["values"][name]
        except KeyError:
            raise AttributeError(name) from None


METRICS = (
    "llm_time",
    "llm_ttft",
    "delivery",
    "post_rtt",
    "limit",
    "ratio",
    "frames",
    "messages",
    "delta_frames",
    "frame_bound",
    "ttfd_added_ms",
    "ttfd_queued_ms",
    "lag_p50_ms",
    "lag_p99_ms",
    "max_frame_bytes",
    "peak_rss_kb",
)


def summarise(runs: list[Run]) -> dict[tuple[Any, ...], Summary]:
    groups: dict[tuple[Any, ...], list[Run]] = {}
    for run in runs:
        groups.setdefault(run.scenario.key, []).append(run)
    out = {}
    for key, group in groups.items():
        values = {m: statistics.median(getattr(r, m) for r in group) for m in METRICS}
        # Targets are checked on the worst repetition too, not only the median.
        values["ratio_max"] = max(r.ratio for r in group)
        values["ttfd_over_rtt_max_ms"] = max(r.ttfd_added_ms - r.post_rtt * 1000 for r in group)
        values["frames_over_bound"] = max(r.delta_frames - r.frame_bound for r in group)
        out[key] = Summary(group[0].scenario, len(group), values, all(r.ok for r in group))
    return out


def as_json(runs: list[Run]) -> list[dict[str, Any]]:
    return [{**asdict(r), "limit": r.limit, "ratio": r.ratio} for r in runs]
