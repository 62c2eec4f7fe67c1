"""Powertools Logger, Metrics and (on first use) Tracer, created once per container and shared by
the handlers.

Names come from POWERTOOLS_SERVICE_NAME / POWERTOOLS_METRICS_NAMESPACE, which the template sets.
``tracer`` is built when a handler first imports it: in Lambda, Tracer loads and patches the X-Ray
SDK, most of a cold start, so the route handlers go without it. Their traces still reach the
stream function, because botocore forwards Lambda's trace header on every call it makes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aws_lambda_powertools.logging import Logger
from aws_lambda_powertools.metrics import Metrics

if TYPE_CHECKING:
    from aws_lambda_powertools.tracing import Tracer

    tracer: Tracer

logger = Logger()
metrics = Metrics()


def __getattr__(name: str) -> Any:
    """``tracer``, built on first access (``from llmstream.core.observability import tracer``)."""
    if name != "tracer":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from aws_lambda_powertools.tracing import Tracer

    built = globals()["tracer"] = Tracer()
    return built


_CACHE_METRICS = {"hit": "CacheHits", "miss": "CacheMisses", "coalesced": "Coalesced"}


def record_stream_metrics(result) -> None:
    """Metrics and one summary log line for a finished stream (no content, only numbers)."""
    from aws_lambda_powertools.metrics import MetricUnit

    if result is None:
        metrics.add_metric(name="MessagesIgnored", unit=MetricUnit.Count, value=1)
        return
    if result.time_to_first_token is not None:
        metrics.add_metric(
            name="TimeToFirstToken",
            unit=MetricUnit.Milliseconds,
            value=round(result.time_to_first_token * 1000, 1),
        )
    metrics.add_metric(name="Deltas", unit=MetricUnit.Count, value=result.send.deltas)
    metrics.add_metric(name="Frames", unit=MetricUnit.Count, value=result.send.frames)
    metrics.add_metric(name="OutputTokens", unit=MetricUnit.Count, value=result.output_tokens or 0)
    metrics.add_metric(
        name="StreamDuration", unit=MetricUnit.Milliseconds, value=round(result.duration * 1000, 1)
    )
    metrics.add_metric(name=f"Outcome_{result.outcome}", unit=MetricUnit.Count, value=1)
    cache_metric = _CACHE_METRICS.get(result.cache or "")
    if cache_metric:
        metrics.add_metric(name=cache_metric, unit=MetricUnit.Count, value=1)
    logger.info(
        "stream finished",
        extra={
            "outcome": result.outcome,
            "finish_reason": result.finish_reason,
            "output_tokens": result.output_tokens,
            "deltas": result.send.deltas,
            "frames": result.send.frames,
            "throttled": result.send.throttled,
            "duration_ms": round(result.duration * 1000, 1),
            "cache": result.cache,
        },
    )
