"""LLM faults before the first token: 429 and 5xx are retried with full-jitter exponential backoff
within a time budget; anything else, or a budget spent, becomes one llm_error frame."""

from __future__ import annotations

import random

import pytest
from llmstream.stream.providers.base import LLMError, retry_before_first_token

from tests.unit.streams import (
    deltas_text,
    envelope,
    frames_posted,
    run,
    sns_event,
)


class FakeTime:
    """A clock that only moves when the code under test sleeps."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def failing(times: int, error: LLMError):
    calls = []

    def open_stream():
        calls.append(1)
        if len(calls) <= times:
            raise error
        return "stream"

    return open_stream, calls


def test_a_429_twice_is_retried_and_the_third_attempt_streams():
    t = FakeTime()
    open_stream, calls = failing(2, LLMError("busy", retryable=True, status=429))
    assert (
        retry_before_first_token(open_stream, budget=20, clock=t.clock, sleep=t.sleep) == "stream"
    )
    assert len(calls) == 3 and len(t.sleeps) == 2


def test_backoff_is_full_jitter_doubling_up_to_the_cap(monkeypatch):
    t = FakeTime()
    random.seed(7)
    open_stream, _ = failing(6, LLMError("down", retryable=True, status=503))
    retry_before_first_token(
        open_stream, budget=1000, clock=t.clock, sleep=t.sleep, base=0.25, cap=4.0
    )
    ceilings = [min(4.0, 0.25 * 2**i) for i in range(6)]
    assert all(0 <= s <= c for s, c in zip(t.sleeps, ceilings, strict=True))
    assert len(set(t.sleeps)) == 6  # jittered: no two waits alike, so clients do not stampede


def test_a_503_beyond_the_budget_gives_up_without_sleeping_past_it():
    t = FakeTime()
    open_stream, calls = failing(10_000, LLMError("down", retryable=True, status=503))
    with pytest.raises(LLMError) as raised:
        retry_before_first_token(open_stream, budget=5, clock=t.clock, sleep=t.sleep)
    assert raised.value.status == 503
    assert sum(t.sleeps) <= 5 and len(calls) > 2


@pytest.mark.parametrize("status", [400, 401, 404])
def test_a_client_error_is_not_retried(status):
    t = FakeTime()
    open_stream, calls = failing(1, LLMError("bad", retryable=False, status=status))
    with pytest.raises(LLMError):
        retry_before_first_token(open_stream, budget=20, clock=t.clock, sleep=t.sleep)
    assert len(calls) == 1 and t.sleeps == []


# --------------------------------------------------------------------------- through the function


@pytest.fixture
def no_jitter(monkeypatch):
    """Backoff waits of zero, so the end-to-end tests run at once (the waits are tested above)."""
    import llmstream.stream.providers.base

    monkeypatch.setattr(llmstream.stream.providers.base.random, "uniform", lambda low, high: 0.0)


def test_a_model_answering_429_twice_still_streams_the_whole_answer(
    stream_env, closed, mock_llm, lambda_context, no_jitter
):
    event = sns_event("#mock tokens=4 rate=0 status=429 status_times=2")
    run(event, lambda_context)
    frames = frames_posted(envelope(event)["connectionId"])
    assert [f["type"] for f in frames][0] == "start" and frames[-1]["type"] == "end"
    assert deltas_text(frames) == "t0 t1 t2 t3 "
    assert [r.status for r in mock_llm.requests] == [429, 429, 200]


def test_a_model_down_for_longer_than_the_budget_gives_one_llm_error_frame(
    stream_env, closed, mock_llm, lambda_context, monkeypatch
):
    monkeypatch.setenv("LLM_RETRY_BUDGET_SECONDS", "0.5")
    event = sns_event("#mock status=503")
    doc = envelope(event)
    run(event, lambda_context)  # returns: a retry of the invocation would not help
    frames = frames_posted(doc["connectionId"])
    assert [f["type"] for f in frames] == ["start", "error"]
    assert frames[-1]["code"] == "llm_error" and "HTTP 503" in frames[-1]["message"]
    assert len(mock_llm.requests) >= 2
    assert closed == [doc["connectionId"]]


def test_a_400_from_the_model_is_not_retried(stream_env, closed, mock_llm, lambda_context):
    event = sns_event("#mock status=400")
    run(event, lambda_context)
    frames = frames_posted(envelope(event)["connectionId"])
    assert frames[-1]["code"] == "llm_error" and "HTTP 400" in frames[-1]["message"]
    assert len(mock_llm.requests) == 1
