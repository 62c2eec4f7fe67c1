"""The terminal chat client (devstack/chat.py): its frame rendering, and --once against a fake
server on localhost that answers with scripted frames."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from llmstream.core.protocol import REQUEST_ID_PATTERN
from websockets.asyncio.server import ServerConnection, serve

from devstack import chat

Script = Callable[[dict[str, Any]], list[Any]]


# --------------------------------------------------------------------------- render


def test_a_delta_prints_its_text_with_no_newline() -> None:
    assert chat.render({"type": "delta", "requestId": "r", "seq": 0, "text": "Hel"}) == "Hel"


def test_accepted_and_start_print_nothing() -> None:
    assert chat.render({"type": "accepted", "requestId": "r"}) == ""
    assert chat.render({"type": "start", "requestId": "r", "model": "gpt-4o-mini"}) == ""


def test_end_after_answer_text_starts_a_new_line_then_prints_the_usage() -> None:
    frame = {
        "type": "end",
        "requestId": "r",
        "finishReason": "stop",
        "usage": {"inputTokens": 14, "outputTokens": 17},
    }

    assert chat.render(frame, mid_line=True) == "\n(tokens: 14 in / 17 out)\n"
    assert chat.render(frame) == "(tokens: 14 in / 17 out)\n"


def test_end_without_usage_or_with_a_finish_reason_other_than_stop_says_so() -> None:
    assert chat.render({"type": "end", "finishReason": "stop", "usage": None}) == (
        "(no usage reported)\n"
    )
    assert chat.render(
        {"type": "end", "finishReason": "length", "usage": {"inputTokens": 3, "outputTokens": None}}
    ) == ("(tokens: 3 in, finished: length)\n")


def test_an_error_frame_prints_its_code_and_message() -> None:
    frame = {"type": "error", "requestId": "r", "code": "llm_error", "message": "the model failed"}

    assert chat.render(frame) == "error [llm_error]: the model failed\n"
    assert chat.render(frame, mid_line=True) == "\nerror [llm_error]: the model failed\n"


def test_a_delta_after_a_gap_in_seq_is_preceded_by_a_warning() -> None:
    one = chat.render({"type": "delta", "seq": 3, "text": "x"}, mid_line=True, next_seq=2)
    many = chat.render({"type": "delta", "seq": 5, "text": "x"}, next_seq=2)

    assert one == "\n[missing delta seq 2]\nx"
    assert many == "[missing delta seq 2-4]\nx"


def test_api_gateways_own_reply_is_shown_and_unknown_frame_types_are_ignored() -> None:
    assert chat.render({"message": "Forbidden", "connectionId": "c", "requestId": "gw"}) == (
        "gateway: Forbidden\n"
    )
    assert chat.render({"type": "progress", "requestId": "r"}) == ""


def test_the_message_carries_the_model_only_when_one_is_asked_for() -> None:
    assert chat.send_message("hi", "r1") == {
        "action": "sendMessage",
        "requestId": "r1",
        "prompt": "hi",
    }
    assert chat.send_message("hi", "r1", "gpt-4o")["model"] == "gpt-4o"


def test_a_trailing_backslash_continues_the_prompt_on_the_next_line() -> None:
    lines = iter(["Hello \\", "#mock tokens=3", "next"])
    prompts: list[str] = []

    def read_line(prompt: str) -> str:
        prompts.append(prompt)
        try:
            return next(lines)
        except StopIteration:
            raise EOFError from None

    assert chat.read_prompt(read_line) == "Hello \n#mock tokens=3"
    assert prompts == ["you> ", "...> "]
    assert chat.read_prompt(read_line) == "next"
    assert chat.read_prompt(read_line) is None


# --------------------------------------------------------------------------- --once


@dataclass
class FakeServer:
    """A WebSocket server on localhost that answers each message with ``script(message)``."""

    url: str
    received: list[dict[str, Any]] = field(default_factory=list)
    connections: int = 0


@pytest.fixture
def fake_server() -> Iterator[Callable[[Script], FakeServer]]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    servers: list[Any] = []

    def start(script: Script) -> FakeServer:
        fake = FakeServer(url="")

        async def handler(ws: ServerConnection) -> None:
            fake.connections += 1
            async for raw in ws:
                message = json.loads(raw)
                fake.received.append(message)
                for frame in script(message):
                    if frame == "close":
                        await ws.close()
                        return
                    await ws.send(json.dumps(frame))

        async def listen() -> Any:
            return await serve(handler, "127.0.0.1", 0)

        server = asyncio.run_coroutine_threadsafe(listen(), loop).result(5)
        servers.append(server)
        fake.url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        return fake

    yield start

    async def close(server: Any) -> None:
        server.close()
        await server.wait_closed()

    for server in servers:
        asyncio.run_coroutine_threadsafe(close(server), loop).result(5)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.close()


def answer(*texts: str) -> Script:
    def script(message: dict[str, Any]) -> list[Any]:
        rid = message["requestId"]
        frames: list[Any] = [
            {"type": "accepted", "requestId": rid},
            {"type": "start", "requestId": rid, "model": "gpt-4o-mini"},
        ]
        frames += [
            {"type": "delta", "requestId": rid, "seq": i, "text": t} for i, t in enumerate(texts)
        ]
        frames.append(
            {
                "type": "end",
                "requestId": rid,
                "finishReason": "stop",
                "usage": {"inputTokens": 5, "outputTokens": len(texts)},
            }
        )
        return [*frames, "close"]

    return script


def test_once_prints_the_answer_as_it_streams_and_exits_0_on_end(
    fake_server: Callable[[Script], FakeServer], capsys: pytest.CaptureFixture[str]
) -> None:
    server = fake_server(answer("Streams ", "of light"))

    status = chat.main(["--url", server.url, "--once", "Write a haiku", "--model", "gpt-4o"])

    assert status == 0
    assert capsys.readouterr().out == "Streams of light\n(tokens: 5 in / 2 out)\n"
    [message] = server.received
    assert message["action"] == "sendMessage" and message["prompt"] == "Write a haiku"
    assert message["model"] == "gpt-4o"
    assert REQUEST_ID_PATTERN.match(message["requestId"])


def test_once_exits_1_on_an_error_frame_even_if_the_server_keeps_the_socket_open(
    fake_server: Callable[[Script], FakeServer], capsys: pytest.CaptureFixture[str]
) -> None:
    server = fake_server(
        lambda m: [
            {
                "type": "error",
                "requestId": m["requestId"],
                "code": "payload_too_large",
                "message": "too big",
            }
        ]
    )

    assert chat.main(["--url", server.url, "--once", "x"]) == 1
    assert capsys.readouterr().out == "error [payload_too_large]: too big\n"


def test_once_ignores_frames_for_other_requests_and_reports_a_socket_closed_mid_answer(
    fake_server: Callable[[Script], FakeServer], capsys: pytest.CaptureFixture[str]
) -> None:
    server = fake_server(
        lambda m: [
            {"type": "delta", "requestId": "someone-else", "seq": 0, "text": "nope"},
            {"type": "delta", "requestId": m["requestId"], "seq": 0, "text": "partial"},
            "close",
        ]
    )

    assert chat.main(["--url", server.url, "--once", "x"]) == 1
    out = capsys.readouterr().out
    assert out.startswith("partial\nerror: the connection closed before the answer was complete")
    assert "nope" not in out


def test_each_prompt_read_from_stdin_gets_its_own_connection(
    fake_server: Callable[[Script], FakeServer],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import io

    server = fake_server(answer("ok"))
    monkeypatch.setattr("sys.stdin", io.StringIO("first\n\nsecond \\\nline\n"))

    assert chat.main(["--url", server.url]) == 0
    assert [m["prompt"] for m in server.received] == ["first", "second \nline"]
    assert server.connections == 2
    assert capsys.readouterr().out == "ok\n(tokens: 5 in / 1 out)\n" * 2


def test_an_unreachable_url_exits_1_with_a_message(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as probe:  # a port nothing listens on once this closes
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    assert chat.main(["--url", f"ws://127.0.0.1:{port}", "--once", "hi"]) == 1
    assert f"cannot connect to ws://127.0.0.1:{port}" in capsys.readouterr().err
