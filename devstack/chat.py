"""A terminal chat client for the WebSocket API: ``python -m devstack chat [--url URL]``.

It opens one connection per prompt, as the server closes the socket after every answer, and
prints the answer's deltas as they arrive. Frame handling is the pure ``render`` below.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TextIO

import websockets
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

DEFAULT_URL = "ws://127.0.0.1:3001"
PROMPT = "you> "
CONTINUATION = "...> "


def send_message(prompt: str, request_id: str, model: str | None = None) -> dict[str, Any]:
    """The client message for one prompt (docs/protocol.md)."""
    message = {"action": "sendMessage", "requestId": request_id, "prompt": prompt}
    if model:
        message["model"] = model
    return message


def render(frame: Mapping[str, Any], *, mid_line: bool = False, next_seq: int = 0) -> str:
    """What to print for one server frame.

    ``mid_line``: answer text is on the current line, so a closing line starts a new one.
    ``next_seq``: the delta ``seq`` expected next; a later one is preceded by a gap warning.
    """
    newline = "\n" if mid_line else ""
    kind = frame.get("type")
    if kind == "delta":
        seq, text = frame.get("seq"), str(frame.get("text", ""))
        if isinstance(seq, int) and seq > next_seq:
            missing = f"{next_seq}-{seq - 1}" if seq - 1 > next_seq else f"{next_seq}"
            return f"{newline}[missing delta seq {missing}]\n{text}"
        return text
    if kind == "end":
        usage = frame.get("usage") or {}
        parts = []
        if usage.get("inputTokens") is not None:
            parts.append(f"{usage['inputTokens']} in")
        if usage.get("outputTokens") is not None:
            parts.append(f"{usage['outputTokens']} out")
        summary = f"tokens: {' / '.join(parts)}" if parts else "no usage reported"
        reason = frame.get("finishReason")
        if reason and reason != "stop":
            summary += f", finished: {reason}"
        return f"{newline}({summary})\n"
    if kind == "error":
        return f"{newline}error [{frame.get('code')}]: {frame.get('message', '')}\n"
    if kind is None and "message" in frame:  # API Gateway's own reply, e.g. "Forbidden"
        return f"{newline}gateway: {frame['message']}\n"
    return ""  # accepted, start, or a frame type this client does not know


@dataclass
class Answer:
    """How one request ended: ``end``, ``error``, or ``closed`` (the socket, before either)."""

    outcome: str
    text: str = ""


async def ask(
    url: str, prompt: str, *, model: str | None = None, out: TextIO | None = None
) -> Answer:
    """Send one prompt on a new connection; print the answer as it streams; return how it ended."""
    out = out or sys.stdout
    request_id = uuid.uuid4().hex
    text: list[str] = []
    mid_line = False
    next_seq = 0
    async with websockets.connect(url, open_timeout=10) as ws:
        await ws.send(json.dumps(send_message(prompt, request_id, model)))
        try:
            async for raw in ws:
                try:
                    frame = json.loads(raw)
                except ValueError:
                    continue  # not a frame of this protocol
                if not isinstance(frame, dict) or not ours(frame, request_id):
                    continue
                printed = render(frame, mid_line=mid_line, next_seq=next_seq)
                out.write(printed)
                out.flush()
                if printed:
                    mid_line = not printed.endswith("\n")
                if frame.get("type") == "delta":
                    text.append(str(frame.get("text", "")))
                    if isinstance(frame.get("seq"), int):
                        next_seq = max(next_seq, frame["seq"] + 1)
                elif frame.get("type") in ("end", "error") or "type" not in frame:
                    outcome = "end" if frame.get("type") == "end" else "error"
                    return Answer(outcome, "".join(text))
        except ConnectionClosed:
            pass
        newline = "\n" if mid_line else ""
        out.write(
            f"{newline}error: the connection closed before the answer was complete "
            f"(code {ws.close_code})\n"
        )
        return Answer("closed", "".join(text))


def ours(frame: Mapping[str, Any], request_id: str) -> bool:
    """Whether a frame answers our request: it names it, names none, or is API Gateway's own."""
    return "type" not in frame or frame.get("requestId") in (request_id, None)


def run(url: str, prompt: str, model: str | None, out: TextIO | None = None) -> int:
    """One prompt: 0 when the answer ended with ``end``, 1 otherwise."""
    try:
        answer = asyncio.run(ask(url, prompt, model=model, out=out))
    except (OSError, InvalidURI, InvalidHandshake, TimeoutError) as exc:
        print(f"error: cannot connect to {url}: {exc}", file=sys.stderr)
        return 1
    return 0 if answer.outcome == "end" else 1


def read_prompt(read_line: Callable[[str], str]) -> str | None:
    """One prompt, or None at the end of input. A line ending in a backslash continues it.

    ``read_line(prompt)`` returns one line without its newline and raises EOFError at the end.
    """
    lines: list[str] = []
    while True:
        try:
            line = read_line(CONTINUATION if lines else PROMPT)
        except EOFError:
            return "\n".join(lines) if lines else None
        if line.endswith("\\"):
            lines.append(line[:-1])
            continue
        lines.append(line)
        return "\n".join(lines)


def _piped_line(prompt: str) -> str:
    line = sys.stdin.readline()
    if not line:
        raise EOFError
    return line.rstrip("\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m devstack chat",
        description="Chat with the llm-stream WebSocket API from a terminal. "
        "End a line with \\ to continue the prompt on the next line.",
    )
    parser.add_argument(
        "--url",
        default=DEFAULT_URL,
        help=f"WebSocket URL, ws:// or wss://…/prod (default {DEFAULT_URL})",
    )
    parser.add_argument("--model", help="ask for this model (one of the deployment's allowed)")
    parser.add_argument(
        "--once",
        metavar="PROMPT",
        help="send one prompt ('-' reads it from stdin) and exit: 0 after `end`, 1 after an error",
    )
    args = parser.parse_args(argv)

    if args.once is not None:
        prompt = sys.stdin.read() if args.once == "-" else args.once
        return run(args.url, prompt, args.model)

    if sys.stdin.isatty():
        with contextlib.suppress(ImportError):
            import readline  # noqa: F401  (line editing and history for input())
        read_line: Callable[[str], str] = input
        print(f"Chatting with {args.url}, one connection per prompt. Ctrl-D quits.")
    else:
        read_line = _piped_line
    failures = 0
    while True:
        try:
            prompt = read_prompt(read_line)
        except KeyboardInterrupt:
            prompt = None
        if prompt is None:
            if read_line is input:
                print()
            return 1 if failures else 0
        if not prompt.strip():
            continue
        try:
            failures += run(args.url, prompt, args.model)
        except KeyboardInterrupt:  # the answer is abandoned; the server stops when it sees that
            print("\n(interrupted)")


if __name__ == "__main__":
    raise SystemExit(main())
