"""Chat sessions through the local stack, with real WebSocket clients: one socket for many turns
(keepOpen), history kept by the service (conversationId), cancel, and resume after a drop."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable
from typing import Any

import pytest
import websockets
from websockets.exceptions import ConnectionClosed

from devstack.stack import LocalStack
from tests.integration.test_local_stack import llm_request, run, tokens

pytestmark = pytest.mark.integration

Frame = dict[str, Any]


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def send(request_id: str, prompt: str, **options: Any) -> str:
    return json.dumps(
        {"action": "sendMessage", "requestId": request_id, "prompt": prompt, **options}
    )


def cancel(request_id: str) -> str:
    return json.dumps({"action": "cancel", "requestId": request_id})


def resume(request_id: str, after_seq: int) -> str:
    return json.dumps({"action": "resume", "requestId": request_id, "afterSeq": after_seq})


async def read_until(ws: Any, frames: list[Frame], done: Callable[[Frame], bool]) -> Frame:
    """Append frames to ``frames`` until one satisfies ``done``; return it."""
    async for raw in ws:
        frame = json.loads(raw)
        frames.append(frame)
        if done(frame):
            return frame
    raise AssertionError(f"the socket closed first; got {frames}")


async def read_to_close(ws: Any, frames: list[Frame]) -> None:
    """Append every frame until the server closes the socket."""
    try:
        async for raw in ws:
            frames.append(json.loads(raw))
    except ConnectionClosed:
        pass


def is_end(frame: Frame) -> bool:
    return frame["type"] in ("end", "error")


def deltas(frames: list[Frame]) -> list[Frame]:
    return [f for f in frames if f["type"] == "delta"]


def seqs(frames: list[Frame]) -> list[int]:
    return [f["seq"] for f in deltas(frames)]


def text(frames: list[Frame]) -> str:
    return "".join(f["text"] for f in deltas(frames))


def prompt_invocation_done(stack: LocalStack, request_id: str, timeout: float = 30) -> Any:
    """Wait until the stream function has finished the prompt ``request_id``."""

    def found(invocations: list[Any]) -> Any:
        for i in invocations:
            message = json.loads(i.event["Records"][0]["Sns"]["Message"])
            if message.get("requestId") == request_id and "kind" not in message:
                return i
        return None

    return stack.wait_for_invocations(
        lambda invs: found([i for i in invs if i.function == "stream"]), timeout=timeout
    )


# --------------------------------------------------------------------------- keepOpen


def test_keep_open_answers_two_prompts_on_one_socket_and_leaves_it_open(stack: LocalStack) -> None:
    async def scenario() -> tuple[list[list[Frame]], Frame, int | None]:
        async with websockets.connect(stack.ws_url, open_timeout=60) as ws:
            answers = []
            for turn in range(2):
                rid, frames = new_id(f"keep-{turn}"), []
                await ws.send(send(rid, f"turn {turn}\n#mock tokens=6 rate=0", keepOpen=True))
                await read_until(ws, frames, is_end)
                answers.append(frames)
            await ws.send(cancel(new_id("nothing")))  # the socket still carries messages
            reply = json.loads(await ws.recv())
            return answers, reply, ws.close_code

    answers, reply, close_code = run(scenario())
    for frames in answers:
        assert [f["type"] for f in frames][:2] == ["accepted", "start"]
        assert text(frames) == tokens(6) and frames[-1]["finishReason"] == "stop"
    assert reply["type"] == "error" and reply["code"] == "not_found"
    assert close_code is None


# --------------------------------------------------------------------------- history


def test_a_conversation_id_brings_the_earlier_turns_to_the_model(stack: LocalStack) -> None:
    conversation, marker = new_id("conv"), uuid.uuid4().hex
    first = f"My name is Ada. {marker}\n#mock tokens=3 rate=0"
    second = f"What is my name? {marker}-2\n#mock tokens=2 rate=0"
    third = f"And again? {marker}-3\n#mock tokens=1 rate=0"

    async def scenario() -> None:
        async with websockets.connect(stack.ws_url, open_timeout=60) as ws:
            for prompt in (first, second):  # the second goes the moment the first ends
                frames: list[Frame] = []
                await ws.send(send(new_id("h"), prompt, keepOpen=True, conversationId=conversation))
                assert (await read_until(ws, frames, is_end))["type"] == "end"
        async with websockets.connect(stack.ws_url, open_timeout=60) as ws:  # another socket
            await ws.send(send(new_id("h"), third, conversationId=conversation))
            await read_to_close(ws, [])

    run(scenario())
    turn_one = [{"role": "user", "content": first}, {"role": "assistant", "content": tokens(3)}]
    turn_two = [{"role": "user", "content": second}, {"role": "assistant", "content": tokens(2)}]
    assert llm_request(stack, marker + "-2").body["messages"][1:] == [
        *turn_one,
        {"role": "user", "content": second},
    ]
    assert llm_request(stack, marker + "-3").body["messages"][1:] == [
        *turn_one,
        *turn_two,
        {"role": "user", "content": third},
    ]


# --------------------------------------------------------------------------- cancel


def test_cancel_closes_the_models_stream_and_ends_the_answer_as_cancelled(
    stack: LocalStack,
) -> None:
    rid, marker = new_id("cancel"), uuid.uuid4().hex

    async def scenario() -> tuple[list[Frame], int]:
        async with websockets.connect(stack.ws_url, open_timeout=60) as ws:
            frames: list[Frame] = []
            await ws.send(send(rid, f"count\n#mock tokens=400 rate=20\n{marker}"))
            await read_until(ws, frames, lambda f: len(deltas(frames)) == 3)
            await ws.send(cancel(rid))
            await read_to_close(ws, frames)
            return frames, ws.close_code

    frames, close_code = run(scenario())
    assert frames[-1]["type"] == "end" and frames[-1]["finishReason"] == "cancelled"
    assert close_code == 1000  # closed after the end, as after any answer
    accepted = [i for i, f in enumerate(frames) if f["type"] == "accepted"]
    assert len(accepted) == 2  # the prompt's, then the cancel's
    late = deltas(frames[accepted[1] :])
    # The stream function looks every 200 ms; rate=20 is a token every 50 ms.
    assert len(late) <= 8, f"{len(late)} deltas arrived after the cancel was accepted"
    assert seqs(frames) == list(range(len(deltas(frames))))
    assert text(frames) == tokens(len(text(frames).split()))
    record = llm_request(stack, marker)
    assert stack.mock_llm.wait_for(lambda: record.client_closed, timeout=10)
    assert not record.completed and record.tokens_sent < 400


def test_cancel_while_the_model_sends_nothing_ends_the_answer_at_once(stack: LocalStack) -> None:
    """A model still thinking (or stalled) is no reason to make a Stop wait for it: the stack's
    stall timeout is 30 s, and without the abort this answer would end in a timeout error."""
    rid, marker = new_id("cancel-stalled"), uuid.uuid4().hex

    async def scenario() -> list[Frame]:
        async with websockets.connect(stack.ws_url, open_timeout=60) as ws:
            frames: list[Frame] = []
            await ws.send(send(rid, f"think\n#mock tokens=50 rate=50 stall_after=2\n{marker}"))
            # Both tokens the model sends before it stalls; one frame may carry both (batching).
            await read_until(ws, frames, lambda f: text(frames) == tokens(2) or is_end(f))
            await ws.send(cancel(rid))
            async with asyncio.timeout(15):
                await read_to_close(ws, frames)
            return frames

    frames = run(scenario())
    assert frames[-1]["type"] == "end" and frames[-1]["finishReason"] == "cancelled"
    assert text(frames) == tokens(2)
    record = llm_request(stack, marker)
    assert stack.mock_llm.wait_for(lambda: record.client_closed, timeout=10)
    assert not record.completed and record.tokens_sent == 2


def test_cancel_finds_nothing_for_an_unknown_request_or_another_connections_answer(
    stack: LocalStack,
) -> None:
    rid = new_id("mine")

    async def scenario() -> tuple[Frame, Frame, list[Frame]]:
        async with websockets.connect(stack.ws_url, open_timeout=60) as owner:
            frames: list[Frame] = []
            await owner.send(send(rid, "#mock tokens=30 rate=60"))
            await read_until(owner, frames, lambda f: f["type"] == "delta")
            async with websockets.connect(stack.ws_url, open_timeout=60) as other:
                await other.send(cancel(rid))
                theirs = json.loads(await other.recv())
                await other.send(cancel(new_id("unknown")))
                unknown = json.loads(await other.recv())
            await read_to_close(owner, frames)
            return theirs, unknown, frames

    theirs, unknown, frames = run(scenario())
    assert (theirs["type"], theirs["code"], theirs["requestId"]) == ("error", "not_found", rid)
    assert (unknown["type"], unknown["code"]) == ("error", "not_found")
    assert text(frames) == tokens(30) and frames[-1]["finishReason"] == "stop"


# --------------------------------------------------------------------------- resume


def test_a_client_that_drops_mid_answer_resumes_it_on_a_new_connection_without_loss_or_repeats(
    stack: LocalStack,
) -> None:
    rid, marker = new_id("resume"), uuid.uuid4().hex

    async def scenario() -> tuple[list[Frame], list[Frame], int | None]:
        seen_a: list[Frame] = []
        async with websockets.connect(stack.ws_url, open_timeout=60) as a:
            await a.send(send(rid, f"#mock tokens=60 rate=20\n{marker}", resumable=True))
            await read_until(a, seen_a, lambda f: len(deltas(seen_a)) == 5)
        # a's socket is closed; the answer goes on without it
        seen_b: list[Frame] = []
        async with websockets.connect(stack.ws_url, open_timeout=60) as b:
            await b.send(resume(rid, seqs(seen_a)[-1]))
            await read_to_close(b, seen_b)
            return seen_a, seen_b, b.close_code

    seen_a, seen_b, close_code = run(scenario())
    assert seen_b[0] == {"type": "accepted", "requestId": rid}
    assert seen_b[-1]["type"] == "end" and seen_b[-1]["finishReason"] == "stop"
    assert {f["type"] for f in seen_b[1:-1]} == {"delta"}
    both = seqs(seen_a) + seqs(seen_b)
    assert both == list(range(len(both))), "a seq is missing or repeated"
    assert text(seen_a) + text(seen_b) == tokens(60)
    assert close_code == 1000
    assert llm_request(stack, marker).completed  # the model was not stopped by the drop


def test_a_client_that_comes_back_after_the_answer_ended_gets_the_rest_from_storage(
    stack: LocalStack,
) -> None:
    rid = new_id("stored")

    async def drop_early() -> list[Frame]:
        seen: list[Frame] = []
        async with websockets.connect(stack.ws_url, open_timeout=60) as a:
            await a.send(send(rid, "#mock tokens=40 rate=200", resumable=True))
            await read_until(a, seen, lambda f: len(deltas(seen)) == 3)
        return seen

    async def come_back(after_seq: int) -> tuple[list[Frame], int | None]:
        seen: list[Frame] = []
        async with websockets.connect(stack.ws_url, open_timeout=60) as b:
            await b.send(resume(rid, after_seq))
            await read_to_close(b, seen)
            return seen, b.close_code

    seen_a = run(drop_early())
    assert prompt_invocation_done(stack, rid).ok  # the answer has ended without its client
    seen_b, close_code = run(come_back(seqs(seen_a)[-1]))
    assert seen_b[0]["type"] == "accepted" and seen_b[-1]["type"] == "end"
    both = seqs(seen_a) + seqs(seen_b)
    assert both == list(range(len(both)))
    assert text(seen_a) + text(seen_b) == tokens(40)
    assert close_code == 1000

    def replays(invocations: list[Any]) -> list[Any]:
        return [
            i
            for i in invocations
            if i.function == "stream"
            and '"kind":"resume"' in (message := i.event["Records"][0]["Sns"]["Message"])
            and rid in message
        ]

    (replay,) = stack.wait_for_invocations(replays, timeout=10)
    assert replay.ok


def test_resume_finds_nothing_for_an_unknown_or_a_non_resumable_answer(stack: LocalStack) -> None:
    rid = new_id("plain")

    async def scenario() -> tuple[Frame, Frame]:
        async with websockets.connect(stack.ws_url, open_timeout=60) as ws:
            await ws.send(send(rid, "#mock tokens=3 rate=0", keepOpen=True))
            await read_until(ws, [], is_end)
            await ws.send(resume(rid, 0))
            plain = json.loads(await ws.recv())
            await ws.send(resume(new_id("unknown"), -1))
            return plain, json.loads(await ws.recv())

    plain, unknown = run(scenario())
    assert (plain["code"], plain["requestId"]) == ("not_found", rid)
    assert "resumable" in plain["message"]
    assert unknown["code"] == "not_found"


def test_a_request_id_in_use_is_refused(stack: LocalStack) -> None:
    rid = new_id("twice")

    async def scenario() -> Frame:
        async with websockets.connect(stack.ws_url, open_timeout=60) as ws:
            await ws.send(send(rid, "#mock tokens=3 rate=0", keepOpen=True))
            await read_until(ws, [], is_end)
            await ws.send(send(rid, "#mock tokens=3 rate=0", keepOpen=True))
            return json.loads(await ws.recv())

    again = run(scenario())
    assert (again["type"], again["code"]) == ("error", "bad_request")
    assert "requestId" in again["message"]


# --------------------------------------------------------------------------- ownership


def test_only_the_same_principal_may_resume_or_cancel_an_answer(hmac_stack: LocalStack) -> None:
    rid = new_id("owned")

    def url(sub: str) -> str:
        return f"{hmac_stack.ws_url}/?token={hmac_stack.mint_token(sub)}"

    async def scenario() -> tuple[Frame, Frame, list[Frame], list[Frame]]:
        seen_alice: list[Frame] = []
        async with websockets.connect(url("alice"), open_timeout=60) as alice:
            await alice.send(send(rid, "#mock tokens=400 rate=20", resumable=True))
            await read_until(alice, seen_alice, lambda f: len(deltas(seen_alice)) == 2)
            async with websockets.connect(url("mallory"), open_timeout=60) as mallory:
                await mallory.send(resume(rid, -1))
                stolen = json.loads(await mallory.recv())
                await mallory.send(cancel(rid))
                stopped = json.loads(await mallory.recv())
        # Alice again, on another connection: the same principal may do both.
        seen_again: list[Frame] = []
        async with websockets.connect(url("alice"), open_timeout=60) as again:
            await again.send(resume(rid, seqs(seen_alice)[-1]))
            await read_until(again, seen_again, lambda f: len(deltas(seen_again)) == 2)
            await again.send(cancel(rid))
            await read_to_close(again, seen_again)
        return stolen, stopped, seen_alice, seen_again

    stolen, stopped, seen_alice, seen_again = run(scenario())
    assert (stolen["code"], stopped["code"]) == ("not_found", "not_found")
    assert seen_again[-1]["type"] == "end" and seen_again[-1]["finishReason"] == "cancelled"
    both = seqs(seen_alice) + seqs(seen_again)
    assert both == list(range(len(both)))


# --------------------------------------------------------------------------- races
#
# The local gateway, like API Gateway, runs one connection's messages at once: two frames sent
# back to back may be handled in either order. Each scenario runs a few times to meet both.


def test_a_cancel_sent_right_behind_its_send_always_cancels_it(stack: LocalStack) -> None:
    async def scenario() -> list[Frame]:
        async with websockets.connect(stack.ws_url, open_timeout=60) as ws:
            ends = []
            for _ in range(4):
                rid = new_id("raced")
                await ws.send(send(rid, "#mock tokens=400 rate=100", keepOpen=True))
                await ws.send(cancel(rid))
                frames: list[Frame] = []
                # A cancel handled before its send is answered not_found, and held: either way
                # the answer ends cancelled.
                ends.append(
                    await read_until(
                        ws, frames, lambda f, r=rid: f["type"] == "end" and f["requestId"] == r
                    )
                )
            return ends

    ends = run(scenario())
    assert [(f["type"], f.get("finishReason")) for f in ends] == [("end", "cancelled")] * 4


def test_a_resume_and_a_cancel_sent_back_to_back_always_stop_the_answer(stack: LocalStack) -> None:
    """What the chat page does on Stop after a reconnect: resume, then cancel, at once."""

    async def one() -> tuple[str, list[Frame]]:
        rid = new_id("stop-after-drop")
        seen_a: list[Frame] = []
        async with websockets.connect(stack.ws_url, open_timeout=60) as a:
            await a.send(send(rid, "#mock tokens=400 rate=100", resumable=True))
            await read_until(a, seen_a, lambda f: len(deltas(seen_a)) == 3)
        seen_b: list[Frame] = []
        async with websockets.connect(stack.ws_url, open_timeout=60) as b:
            await b.send(resume(rid, seqs(seen_a)[-1]))
            await b.send(cancel(rid))
            await read_to_close(b, seen_b)
        return rid, seen_b

    async def scenario() -> list[tuple[str, list[Frame]]]:
        return [await one() for _ in range(3)]

    for rid, seen_b in run(scenario()):
        replies = [f for f in seen_b if f["type"] in ("accepted", "error") and "code" not in f]
        assert len(replies) == 2, seen_b  # the resume and the cancel were both accepted
        assert seen_b[-1]["type"] == "end" and seen_b[-1]["finishReason"] == "cancelled", rid
