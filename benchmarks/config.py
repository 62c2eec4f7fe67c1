"""What a benchmark run covers: the full run the docs report, and --quick for a short check."""

from __future__ import annotations

from dataclasses import dataclass, replace

MESSAGE_PRICE_PER_MILLION = 1.00
"""API Gateway WebSocket messages, US East: $1.00 per million, metered in 32 KB increments."""

LAG_BUDGET_MS = 60.0
"""Most the minimum interval may add to a token's lag (p99, no post latency, against no interval)
when picking the default. Under 100 ms a delay reads as instant; 60 ms leaves room for the network.
"""


@dataclass(frozen=True)
class Config:
    tokens: int = 1000
    first_token_delay: float = 0.25  # the mock LLM's own time to first token, in seconds
    rates: tuple[float, ...] = (50, 100, 300)
    latencies_ms: tuple[float, ...] = (0, 20, 50, 100)
    transports: tuple[str, ...] = ("http", "fake")
    min_interval_ms: float = 50.0  # the default under test
    reps: int = 3  # batched scenarios
    naive_reps: int = 1  # the naive loop takes tokens × latency; one run, it hardly varies
    naive_transports: tuple[str, ...] = ("http",)
    intervals_ms: tuple[float, ...] = (0, 20, 50, 100)
    interval_rate: float = 300
    interval_latencies_ms: tuple[float, ...] = (0, 20)
    interval_reps: int = 3
    interval_workers: int = 2  # the sweep runs apart from the grid, so its lags are the sender's
    workers: int = 8  # scenario processes at once; each mostly sleeps
    ttfd_tokens: int = 10  # time to first delta: short answers, one at a time, on a quiet CPU
    ttfd_reps: int = 5
    import_runs: int = 15
    e2e_streams: tuple[int, ...] = (1, 50, 500)
    e2e_tokens: int = 100
    e2e_rate: float = 20
    e2e_post_latency_ms: float = 20
    e2e_max_containers: int = 100  # stream-function containers at once (~40 MB private each)
    e2e_timeout: float = 240  # a client gives up on its answer after this many seconds
    quick: bool = False

    def scaled(self, **changes: object) -> Config:
        return replace(self, **changes)


FULL = Config()

QUICK = Config(
    tokens=300,
    rates=(100, 300),
    latencies_ms=(0, 50),
    reps=1,
    intervals_ms=(0, 50),
    interval_latencies_ms=(0,),
    interval_reps=1,
    ttfd_reps=2,
    import_runs=3,
    e2e_streams=(1, 50),
    e2e_tokens=40,
    quick=True,
)
