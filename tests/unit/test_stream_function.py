"""The stream function end to end in one process: SNS event → mock LLM (real SSE) → moto's
Management API, plus botocore's Stubber where moto cannot fake a fault (a gone client)."""

from __future__ import annotations

import json

import pytest
from botocore.stub import Stubber

from tests.conftest import load_event, load_handler
from tests.unit.streams import (
    deltas_text,
    envelope,
    frames_posted,
    run,
    sns_event,
)


def test_a_streamed_answer_arrives_as_start_deltas_and_end_then_the_connection_closes(
    stream_env, closed, lambda_context
):
    event = sns_event("Tell me.\n#mock tokens=25 rate=0 first_token_delay=0")
    doc = envelope(event)
    run(event, lambda_context)
    frames = frames_posted(doc["connectionId"])
    assert frames[0] == {"type": "start", "requestId": doc["requestId"], "model": doc["model"]}
    assert deltas_text(frames) == "".join(f"t{i} " for i in range(25))
    seqs = [f["seq"] for f in frames if f["type"] == "delta"]
    assert seqs == list(range(len(seqs)))
    assert frames[-1]["type"] == "end" and frames[-1]["finishReason"] == "stop"
    assert frames[-1]["usage"]["outputTokens"] == 25 and frames[-1]["usage"]["inputTokens"] > 0
    assert all(f["requestId"] == doc["requestId"] for f in frames)
    assert closed == [doc["connectionId"]]


def test_the_server_system_prompt_and_stream_usage_are_requested(
    stream_env, closed, mock_llm, lambda_context
):
    run(sns_event("hello\n#mock tokens=2 rate=0"), lambda_context)
    body = mock_llm.requests[-1].body
    assert body["messages"][0] == {"role": "system", "content": "You are a concise assistant."}
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["max_tokens"] == 1024


def test_an_llm_error_mid_stream_becomes_an_llm_error_frame_and_a_clean_close(
    stream_env, closed, lambda_context
):
    event = sns_event("#mock tokens=10 fail_after=3 rate=0")
    doc = envelope(event)
    run(event, lambda_context)  # does not raise: a retry would stream the answer again
    frames = frames_posted(doc["connectionId"])
    assert deltas_text(frames) == "t0 t1 t2 "
    assert frames[-1]["type"] == "error" and frames[-1]["code"] == "llm_error"
    assert closed == [doc["connectionId"]]


def test_an_llm_error_before_the_first_token_becomes_an_error_frame(
    stream_env, closed, lambda_context, monkeypatch
):
    monkeypatch.setenv("LLM_RETRY_BUDGET_SECONDS", "0")
    event = sns_event("#mock status=400")
    doc = envelope(event)
    run(event, lambda_context)
    frames = frames_posted(doc["connectionId"])
    assert [f["type"] for f in frames] == ["start", "error"]
    assert frames[-1]["code"] == "llm_error" and "HTTP 400" in frames[-1]["message"]


def test_a_client_gone_mid_stream_stops_the_llm_at_once_and_the_invocation_succeeds(
    stream_env, mock_llm, lambda_context
):
    handler = load_handler("stream")
    event = sns_event("#mock tokens=500 rate=100 first_token_delay=0")
    doc = envelope(event)
    from llmstream.apigw.connection import management_client

    client = management_client(f"https://{doc['domainName']}/{doc['stage']}")
    with Stubber(client) as stub:
        stub.add_response("post_to_connection", {})  # start
        stub.add_client_error("post_to_connection", "GoneException", http_status_code=410)
        handler.lambda_handler(event, lambda_context)
        stub.assert_no_pending_responses()  # and no DeleteConnection was attempted
    record = mock_llm.wait_for(
        lambda: mock_llm.requests[-1].client_closed and mock_llm.requests[-1]
    )
    assert record.tokens_sent < 500 and not record.completed


def test_a_malformed_sns_message_is_ignored_and_logged_without_its_content(
    stream_env, closed, lambda_context, logs
):
    event = load_event("stream-sns.json")
    event["Records"][0]["Sns"]["Message"] = json.dumps(
        {"version": 99, "messages": [{"role": "user", "content": "SECRET PROMPT"}]}
    )
    run(event, lambda_context)
    out = logs.getvalue()
    assert "ignoring a malformed prompt message" in out and "SECRET PROMPT" not in out
    assert closed == []


def test_prompts_and_keys_stay_out_of_the_logs_by_default(stream_env, closed, lambda_context, logs):
    run(sns_event("my private question\n#mock tokens=3 rate=0"), lambda_context)
    out = logs.getvalue()
    assert "stream finished" in out
    assert "my private question" not in out and "sk-test" not in out


def test_a_deadline_near_the_margin_ends_with_a_timeout_frame(stream_env, closed, monkeypatch):
    from tests.conftest import LambdaContext

    monkeypatch.setenv("DEADLINE_MARGIN_SECONDS", "10")
    event = sns_event("#mock tokens=50 rate=0")
    doc = envelope(event)
    run(event, LambdaContext(remaining_ms=9_000))
    frames = frames_posted(doc["connectionId"])
    assert frames[-1]["type"] == "error" and frames[-1]["code"] == "timeout"


def test_a_stalled_llm_stream_ends_with_a_timeout_frame_and_a_clean_close(
    stream_env, closed, mock_llm, lambda_context, monkeypatch
):
    monkeypatch.setenv("LLM_STALL_TIMEOUT_SECONDS", "1")
    event = sns_event("#mock tokens=10 stall_after=3 rate=0 first_token_delay=0")
    doc = envelope(event)
    run(event, lambda_context)
    frames = frames_posted(doc["connectionId"])
    assert deltas_text(frames) == "t0 t1 t2 "
    assert frames[-1]["type"] == "error" and frames[-1]["code"] == "timeout"
    assert closed == [doc["connectionId"]]
    assert mock_llm.wait_for(lambda: mock_llm.requests[-1].client_closed)


def test_a_stall_close_to_the_deadline_times_out_before_the_function_is_killed(
    stream_env, closed, monkeypatch
):
    from tests.conftest import LambdaContext

    # 30 s of stall allowed, but only 11.5 s left with a 10 s margin: the read timeout is 1.5 s.
    monkeypatch.setenv("LLM_STALL_TIMEOUT_SECONDS", "30")
    monkeypatch.setenv("DEADLINE_MARGIN_SECONDS", "10")
    event = sns_event("#mock tokens=10 stall_after=2 rate=0 first_token_delay=0")
    doc = envelope(event)
    run(event, LambdaContext(remaining_ms=11_500))
    frames = frames_posted(doc["connectionId"])
    assert [f["type"] for f in frames][-1] == "error" and frames[-1]["code"] == "timeout"
    assert closed == [doc["connectionId"]]


def test_with_log_content_on_the_prompt_and_the_completion_are_logged(
    stream_env, closed, lambda_context, logs, monkeypatch
):
    monkeypatch.setenv("LOG_CONTENT", "true")
    run(sns_event("my private question\n#mock tokens=3 rate=0"), lambda_context)
    out = logs.getvalue()
    assert "my private question" in out and "t0 t1 t2 " in out
    assert "sk-test" not in out


def test_the_api_key_stays_out_of_the_logs_when_the_model_refuses_it(
    stream_env, closed, lambda_context, logs
):
    event = sns_event("hello\n#mock status=401")
    run(event, lambda_context)
    frames = frames_posted(envelope(event)["connectionId"])
    assert frames[-1]["code"] == "llm_error" and "HTTP 401" in frames[-1]["message"]
    assert "sk-test" not in logs.getvalue()


def test_a_provider_that_cannot_be_built_tells_the_client_and_fails_into_the_dead_letter_queue(
    stream_env, closed, lambda_context, logs, monkeypatch
):
    monkeypatch.setenv("LLM_API_KEY_SECRET", "no-such-secret")
    handler = load_handler("stream")
    event = sns_event("hello")
    doc = envelope(event)
    with pytest.raises(Exception, match="ResourceNotFound"):  # Lambda retries, then the DLQ
        handler.lambda_handler(event, lambda_context)
    frames = frames_posted(doc["connectionId"])
    assert [(f["type"], f["code"]) for f in frames] == [("error", "internal")]
    assert closed == [doc["connectionId"]]
    assert "sk-test" not in logs.getvalue()


@pytest.mark.parametrize(
    "change",
    [
        {"version": 2},
        {"version": None},
        {"requestId": "bad id with spaces"},
        {"connectionId": ""},
        {"messages": []},
        {"messages": [{"role": "system", "content": "SECRET PROMPT"}]},
        {"options": {"maxTokens": -1}},
        {"domainName": "evil.example.com/steal?x="},
        {"domainName": "attacker.example.com@x7k2m9q4pd.execute-api.us-east-1.amazonaws.com"},
        {"stage": "prod/../other"},
    ],
    ids=lambda change: "-".join(f"{k}={v}" for k, v in change.items())[:40],
)
def test_a_spoofed_or_malformed_envelope_is_ignored_without_posting_or_calling_the_llm(
    stream_env, closed, mock_llm, lambda_context, logs, change
):
    event = sns_event("SECRET PROMPT", **change)
    assert run(event, lambda_context) is None  # succeeds: a retry would not make it valid
    assert frames_posted("Kx3vYdqgoAMCJyQ=") == [] and closed == []
    assert mock_llm.requests == []
    out = logs.getvalue()
    assert "ignoring a malformed prompt message" in out and "SECRET PROMPT" not in out


def test_a_message_that_is_not_json_at_all_is_ignored(stream_env, closed, mock_llm, lambda_context):
    event = load_event("stream-sns.json")
    event["Records"][0]["Sns"]["Message"] = "\x00not json{"
    run(event, lambda_context)
    assert mock_llm.requests == [] and closed == []
