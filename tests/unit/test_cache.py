"""The response cache (stream.cache, docs/cache.md) with moto: what its key covers, what is
stored and for how long, whose answers a request may get, the opt-out, and how an identical
request follows a stream that is running."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator

import boto3
import pytest
from llmstream.core.settings import WEBSOCKET_FRAME_LIMIT
from llmstream.stream.cache import CachingProvider, cache_key, cache_scope
from llmstream.stream.cache.flight import INTERRUPTED, Following, Recording, Stored
from llmstream.stream.cache.store import HEAD, CacheStore
from llmstream.stream.providers.base import Chunk, LLMError

from tests.unit.streams import deltas_text, envelope, frames_posted, run, sns_event

TTL = 300
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
BASE = dict(provider="openai", model="gpt-4o-mini", messages=MESSAGES, max_tokens=1024)


# ---------------------------------------------------------------------------- the key


def test_the_key_is_stable_and_ignores_how_the_request_was_spelt():
    again = cache_key(
        "shared",
        max_tokens=1024,
        model="gpt-4o-mini",
        provider="openai",
        messages=[{"content": m["content"], "role": m["role"]} for m in MESSAGES],
    )
    assert cache_key("shared", **BASE) == again
    assert len(again) == 64 and int(again, 16) >= 0  # SHA-256, hex


@pytest.mark.parametrize(
    "change",
    [
        {"provider": "bedrock"},
        {"model": "gpt-4o"},
        {"max_tokens": 1023},
        {"messages": [{"role": "system", "content": "Be long."}, MESSAGES[1]]},  # system prompt
        {"messages": [MESSAGES[0], {"role": "user", "content": "Hi!"}]},
        {"messages": [MESSAGES[0], {"role": "assistant", "content": "Hi"}]},
        {"messages": [*MESSAGES, {"role": "user", "content": "Hi"}]},
        {"sampling": {"temperature": 0.2}},
    ],
)
def test_any_field_that_shapes_the_answer_changes_the_key(change):
    assert cache_key("shared", **{**BASE, **change}) != cache_key("shared", **BASE)


def test_the_scope_is_part_of_the_key_and_anonymous_callers_have_none_unless_shared():
    assert cache_scope("alice", shared=False) == "principal:alice"
    assert cache_scope(None, shared=False) is None
    assert cache_scope(None, shared=True) == cache_scope("alice", shared=True) == "shared"
    alice, bob = (cache_key(cache_scope(p, shared=False), **BASE) for p in ("alice", "bob"))
    assert alice != bob


# ---------------------------------------------------------------------------- the stream function


@pytest.fixture
def cache_on(stream_env, closed, monkeypatch):
    monkeypatch.setenv("RESPONSE_CACHE_TTL_SECONDS", str(TTL))
    return stream_env


def ask(lambda_context, prompt, n, principal="alice", **options):
    """The stream function's frames for a prompt sent as request r<n> on connection c<n>."""
    event = sns_event(prompt, requestId=f"r{n}", connectionId=f"c{n}", principalId=principal)
    if options:
        doc = envelope(event)
        doc["options"].update(options)
        event["Records"][0]["Sns"]["Message"] = json.dumps(doc)
    run(event, lambda_context)
    return frames_posted(f"c{n}")


def calls(mock_llm) -> int:
    return len(mock_llm.requests)


def test_an_identical_second_request_is_streamed_from_the_cache_without_calling_the_model(
    cache_on, mock_llm, lambda_context
):
    prompt = "Tell me.\n#mock tokens=30 rate=0 first_token_delay=0"
    first = ask(lambda_context, prompt, 1)
    assert calls(mock_llm) == 1 and "cached" not in first[-1]
    second = ask(lambda_context, prompt, 2)
    assert calls(mock_llm) == 1
    assert second[0] == {"type": "start", "requestId": "r2", "model": "gpt-4o-mini"}
    assert deltas_text(second) == deltas_text(first) == "".join(f"t{i} " for i in range(30))
    seqs = [f["seq"] for f in second if f["type"] == "delta"]
    assert seqs == list(range(len(seqs)))
    assert second[-1] == {
        "type": "end",
        "requestId": "r2",
        "finishReason": "stop",
        "usage": first[-1]["usage"],  # the original answer's
        "cached": True,
    }


def test_a_long_cached_answer_comes_in_gapless_frames_of_at_most_32_kb(
    cache_on, mock_llm, lambda_context
):
    prompt = "#mock tokens=9000 rate=0 first_token_delay=0"  # about 60 KB of text
    first = ask(lambda_context, prompt, 1, maxTokens=10000)
    second = ask(lambda_context, prompt, 2, maxTokens=10000)
    assert calls(mock_llm) == 1 and second[-1]["cached"] is True
    assert deltas_text(second) == deltas_text(first) and len(deltas_text(second)) > 50_000
    deltas = [f for f in second if f["type"] == "delta"]
    assert [f["seq"] for f in deltas] == list(range(len(deltas)))
    sizes = [len(json.dumps(f, separators=(",", ":")).encode()) for f in deltas]
    assert max(sizes) <= WEBSOCKET_FRAME_LIMIT and len(deltas) < 10  # at once, in big frames


def test_reasoning_is_stored_and_replayed_in_its_own_frames(cache_on, mock_llm, lambda_context):
    prompt = "#mock tokens=3 reasoning=4 rate=0 first_token_delay=0"
    first = ask(lambda_context, prompt, 1)
    second = ask(lambda_context, prompt, 2)
    assert calls(mock_llm) == 1
    kinds = lambda frames: [(f["type"], f["text"]) for f in frames if "text" in f]  # noqa: E731
    assert "".join(t for k, t in kinds(second) if k == "reasoning") == "r0 r1 r2 r3 "
    assert "".join(t for k, t in kinds(second) if k == "delta") == deltas_text(first)
    assert [f["seq"] for f in second if "seq" in f] == list(range(len(kinds(second))))


@pytest.mark.parametrize(
    "prompt, options",
    [
        ("#mock tokens=10 rate=0 first_token_delay=0", {"maxTokens": 4}),  # length
        ("#mock tokens=10 fail_after=3 rate=0 first_token_delay=0", {}),  # failed mid-stream
        ("#mock status=400", {}),  # failed before the stream
    ],
    ids=["length", "llm_error", "refused"],
)
def test_an_answer_that_did_not_end_with_stop_is_never_stored(
    cache_on, mock_llm, lambda_context, monkeypatch, prompt, options
):
    monkeypatch.setenv("LLM_RETRY_BUDGET_SECONDS", "0")
    first = ask(lambda_context, prompt, 1, **options)
    assert first[-1].get("finishReason") != "stop"
    second = ask(lambda_context, prompt, 2, **options)
    assert calls(mock_llm) == 2 and "cached" not in second[-1]


def test_a_cancelled_answer_is_never_stored(cache_on, mock_llm, lambda_context):
    from llmstream.requests.record import owner_key

    prompt = "#mock tokens=5 rate=0 first_token_delay=0"
    table = boto3.resource("dynamodb").Table("frames")
    table.put_item(
        Item={
            "requestId": owner_key("alice", "r1"),
            "seq": -1,
            "status": "queued",
            "cancelRequested": True,
            "expiresAt": int(time.time()) + 600,
        }
    )
    first = ask(lambda_context, prompt, 1)
    assert first[-1]["finishReason"] == "cancelled" and calls(mock_llm) == 0
    ask(lambda_context, prompt, 2)
    assert calls(mock_llm) == 1


def test_one_principal_never_gets_anothers_cached_answer(cache_on, mock_llm, lambda_context):
    prompt = "#mock tokens=4 rate=0 first_token_delay=0"
    ask(lambda_context, prompt, 1, principal="alice")
    bob = ask(lambda_context, prompt, 2, principal="bob")
    assert calls(mock_llm) == 2 and "cached" not in bob[-1]
    assert ask(lambda_context, prompt, 3, principal="bob")[-1]["cached"] is True
    assert ask(lambda_context, prompt, 4, principal="alice")[-1]["cached"] is True
    assert calls(mock_llm) == 2


def test_anonymous_callers_share_nothing_unless_the_cache_is_shared(
    cache_on, mock_llm, lambda_context, monkeypatch
):
    prompt = "#mock tokens=4 rate=0 first_token_delay=0"
    ask(lambda_context, prompt, 1, principal=None)
    ask(lambda_context, prompt, 2, principal=None)
    assert calls(mock_llm) == 2
    monkeypatch.setenv("RESPONSE_CACHE_SHARED", "true")
    ask(lambda_context, prompt, 3, principal=None)
    assert ask(lambda_context, prompt, 4, principal="bob")[-1]["cached"] is True
    assert calls(mock_llm) == 3


def test_a_request_that_opts_out_neither_reads_nor_fills_the_cache(
    cache_on, mock_llm, lambda_context
):
    prompt = "#mock tokens=4 rate=0 first_token_delay=0"
    ask(lambda_context, prompt, 1, cache=False)
    ask(lambda_context, prompt, 2)  # nothing stored by the first: a call
    assert calls(mock_llm) == 2
    opted_out = ask(lambda_context, prompt, 3, cache=False)  # one is stored now: still a call
    assert calls(mock_llm) == 3 and "cached" not in opted_out[-1]


def test_the_cache_is_off_by_default(stream_env, closed, mock_llm, lambda_context):
    prompt = "#mock tokens=4 rate=0 first_token_delay=0"
    ask(lambda_context, prompt, 1)
    ask(lambda_context, prompt, 2)
    assert calls(mock_llm) == 2
    assert boto3.client("dynamodb").scan(TableName="response_cache")["Count"] == 0


def test_entries_expire_with_the_ttl_and_an_expired_one_is_a_miss(
    cache_on, mock_llm, lambda_context
):
    prompt = "#mock tokens=4 rate=0 first_token_delay=0"
    before = int(time.time())
    ask(lambda_context, prompt, 1)
    items = boto3.resource("dynamodb").Table("response_cache").scan()["Items"]
    assert items and all(before + TTL <= item["expiresAt"] <= time.time() + TTL for item in items)
    head = next(item for item in items if item["part"] == HEAD)
    assert head["state"] == "complete" and head["finishReason"] == "stop"
    # DynamoDB's TTL deletes late: an entry past its time is not served meanwhile.
    boto3.resource("dynamodb").Table("response_cache").update_item(
        Key={"cacheKey": head["cacheKey"], "part": HEAD},
        UpdateExpression="SET expiresAt = :past",
        ExpressionAttributeValues={":past": before - 1},
    )
    assert "cached" not in ask(lambda_context, prompt, 2)[-1]
    assert calls(mock_llm) == 2


def test_no_prompt_or_answer_text_is_in_the_key_and_the_table_is_keyed_by_hash(
    cache_on, lambda_context
):
    ask(lambda_context, "secret plan\n#mock tokens=2 rate=0 first_token_delay=0", 1)
    items = boto3.resource("dynamodb").Table("response_cache").scan()["Items"]
    assert all("secret" not in item["cacheKey"] for item in items)


def test_the_hit_metrics_and_log_line_say_what_the_answer_came_from(
    cache_on, lambda_context, capsys
):
    prompt = "#mock tokens=2 rate=0 first_token_delay=0"
    ask(lambda_context, prompt, 1)
    ask(lambda_context, prompt, 2)
    out = capsys.readouterr().out
    metrics = [json.loads(line) for line in out.splitlines() if '"_aws"' in line]
    names = [m["_aws"]["CloudWatchMetrics"][0]["Metrics"] for m in metrics]
    flat = [[n["Name"] for n in group] for group in names]
    assert "CacheMisses" in flat[0] and "CacheHits" not in flat[0]
    assert "CacheHits" in flat[1] and "CacheMisses" not in flat[1]


def test_an_ai_sdk_client_gets_the_cached_answer_in_its_chunks_with_cached_metadata(
    cache_on, mock_llm, lambda_context
):
    prompt = "#mock tokens=3 rate=0 first_token_delay=0"
    ask(lambda_context, prompt, 1, dialect="ai-sdk", resumable=True, keepOpen=True)
    frames = ask(lambda_context, prompt, 2, dialect="ai-sdk", resumable=True, keepOpen=True)
    assert calls(mock_llm) == 1
    chunks = [f["chunk"] for f in frames if f.get("type") == "chunk"]
    assert "".join(c["delta"] for c in chunks if c["type"] == "text-delta") == "t0 t1 t2 "
    finish = next(c for c in chunks if c["type"] == "finish")
    assert finish["messageMetadata"]["cached"] is True
    assert finish["messageMetadata"]["usage"]["outputTokens"] == 3


# ---------------------------------------------------------------------------- coalescing


class Paced:
    """A model whose chunks come one by one as the test releases them."""

    name = "openai"

    def __init__(self, texts: list[str], *, finish: str = "stop") -> None:
        self.texts, self.finish = texts, finish
        self.calls = 0
        self.gates = [threading.Event() for _ in texts]
        self.closed = False

    def stream(self, messages, *, model, max_tokens, read_timeout):
        self.calls += 1
        model_ = self

        class _Stream:
            def __iter__(self) -> Iterator[Chunk]:
                for gate, text in zip(model_.gates, model_.texts, strict=True):
                    assert gate.wait(5)
                    yield Chunk(text=text)
                yield Chunk(finish_reason=model_.finish, input_tokens=7, output_tokens=3)

            def close(self) -> None:
                model_.closed = True

        return _Stream()

    def release(self) -> None:
        for gate in self.gates:
            gate.set()


@pytest.fixture
def store(aws) -> CacheStore:
    return CacheStore(boto3.client("dynamodb"), "response_cache")


def caching(model, store) -> CachingProvider:
    return CachingProvider(
        model, store, scope="shared", ttl_seconds=TTL, lease_seconds=30, poll_interval=0.01
    )


def open_stream(provider: CachingProvider):
    return provider.stream(MESSAGES, model="m", max_tokens=10, read_timeout=5)


def test_an_identical_request_during_a_stream_follows_it_and_the_model_is_called_once(store):
    model = Paced(["a", "b", "c"])
    leader, follower = caching(model, store), caching(model, store)
    lead = open_stream(leader)
    assert isinstance(lead, Recording) and leader.outcome == "miss"
    got: list[Chunk] = []
    lead_chunks = iter(lead)
    model.gates[0].set()
    got.append(next(lead_chunks))  # "a" is written at once: a follower sees it
    follow = open_stream(follower)
    assert isinstance(follow, Following) and follower.outcome == "coalesced"
    followed: list[Chunk] = []
    reader = threading.Thread(target=lambda: followed.extend(follow))
    reader.start()
    model.release()
    got.extend(lead_chunks)
    reader.join(5)
    assert model.calls == 1
    assert "".join(c.text for c in followed) == "".join(c.text for c in got) == "abc"
    assert (followed[-1].finish_reason, followed[-1].output_tokens) == ("stop", 3)
    assert follow.coalesced and not follow.cached
    later = open_stream(caching(model, store))
    assert isinstance(later, Stored) and "".join(c.text for c in later) == "abc"


def test_a_follower_of_a_stream_given_up_before_any_text_tries_afresh(store):
    model = Paced(["x", "y"])
    lead = open_stream(caching(model, store))
    follower = caching(model, store)
    follow = open_stream(follower)
    assert isinstance(follow, Following)
    lead.close()  # its client left before the model said anything
    model.release()
    chunks = list(follow)
    assert "".join(c.text for c in chunks) == "xy" and model.calls == 2
    assert follower.outcome == "miss" and not follow.coalesced


def test_a_follower_that_already_has_text_gets_an_error_when_the_stream_is_given_up(store):
    model = Paced(["x", "y"])
    lead = open_stream(caching(model, store))
    lead_chunks = iter(lead)
    model.gates[0].set()
    next(lead_chunks)
    follow = iter(open_stream(caching(model, store)))
    assert next(follow).text == "x"
    lead.close()  # cancelled after the first word
    with pytest.raises(LLMError) as raised:
        next(follow)
    assert raised.value.message == INTERRUPTED
    assert model.calls == 1


def test_a_stream_that_stops_on_length_ends_its_followers_the_same_way_and_is_not_a_hit(store):
    model = Paced(["x"], finish="length")
    lead = open_stream(caching(model, store))
    follow = open_stream(caching(model, store))
    model.release()
    assert [c.finish_reason for c in lead][-1] == "length"
    assert [c.finish_reason for c in follow][-1] == "length"
    again = caching(model, store)
    assert isinstance(open_stream(again), Recording) and again.outcome == "miss"


def test_a_cache_that_cannot_be_read_leaves_the_model_to_answer(aws):
    model = Paced(["x"])
    broken = caching(model, CacheStore(boto3.client("dynamodb"), "no-such-table"))
    model.release()
    stream = open_stream(broken)
    assert "".join(c.text for c in stream) == "x" and broken.outcome == "miss"


@pytest.mark.parametrize(
    "outcome, metric",
    [("hit", "CacheHits"), ("miss", "CacheMisses"), ("coalesced", "Coalesced"), (None, None)],
)
def test_each_cache_outcome_is_its_own_metric(outcome, metric, capsys, monkeypatch):
    from llmstream.core.observability import metrics, record_stream_metrics
    from llmstream.stream.sender import SendStats
    from llmstream.stream.streaming import StreamResult

    monkeypatch.setenv("POWERTOOLS_METRICS_NAMESPACE", "Test")
    result = StreamResult(
        outcome="completed",
        finish_reason="stop",
        input_tokens=1,
        output_tokens=2,
        started_at=0.0,
        first_token_at=0.1,
        finished_at=0.2,
        send=SendStats(),
        cache=outcome,
    )
    record_stream_metrics(result)
    metrics.flush_metrics()
    [emitted] = [
        json.loads(line) for line in capsys.readouterr().out.splitlines() if '"_aws"' in line
    ]
    names = {m["Name"] for m in emitted["_aws"]["CloudWatchMetrics"][0]["Metrics"]}
    assert names & {"CacheHits", "CacheMisses", "Coalesced"} == ({metric} if metric else set())
