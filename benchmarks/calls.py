"""AWS API calls per answer: every call the functions make for one answer, counted in the local
stack from the client's connect to its $disconnect, one row per kind of answer.

``python -m benchmarks --only calls`` runs it as a section; ``python -m benchmarks.calls`` only
prints its tables (to measure another checkout with this file and devstack/aws_calls.py copied
in, or tiny answers with ``--tokens 5 --rate 0``).
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

from . import local_stack
from .e2e import _stdout_to_stderr
from .report import mark, table

Progress = Callable[[str], None]

TOKENS, RATE = 100, 100.0  # the mock's answer: 100 tokens at 100/s after 0.2 s, about 1.2 s
FIRST_TOKEN_DELAY = 0.2
TIMEOUT = 60.0  # seconds for one answer, from connect to its $disconnect done
WRITE_TARGET = 7  # DynamoDB writes of a plain answer, at most
OTHER_READS_TARGET = 2  # and its reads besides the cancel poll
DEFAULT_POLL_MS = 200.0  # the layer's CONTROL_POLL_MS when the stack sets none
FUNCTIONS = ("connect", "message", "stream", "disconnect")  # what one answer invokes

WRITES = ("PutItem", "UpdateItem", "DeleteItem", "BatchWriteItem", "TransactWriteItems")
READS = ("GetItem", "Query", "Scan", "BatchGetItem", "TransactGetItems")
SERVICES = {"sns": "SNS", "apigatewaymanagementapi": "API GW", "secretsmanager": "Secrets"}


@dataclass(frozen=True)
class Answer:
    """One kind of answer, as the client asks for it; ``counted=False`` ones only set up."""

    kind: str
    fields: Mapping[str, Any] = field(default_factory=dict)
    counted: bool = True


ANSWERS = (
    Answer("warm-up", counted=False),  # so that the counted ones find warm containers
    Answer("plain"),
    Answer("resumable", {"resumable": True}),
    Answer("first turn", {"conversationId": "c1"}, counted=False),
    Answer("with a conversation", {"conversationId": "c1"}),  # turn 2: the history is read
)


@dataclass
class AnswerCalls:
    kind: str
    counts: dict[tuple[str, str], int]  # (service, operation) -> calls
    cancel_polls: int  # of the GetItems, the watcher's polls of the request record
    complete: bool  # the answer arrived whole, in order, and ended with `end`
    stream_ms: float  # the stream function's invocation

    def _dynamodb(self, operations: tuple[str, ...]) -> int:
        return sum(n for (s, op), n in self.counts.items() if s == "dynamodb" and op in operations)

    @property
    def writes(self) -> int:
        return self._dynamodb(WRITES)

    @property
    def reads(self) -> int:
        return self._dynamodb(READS)

    @property
    def other_reads(self) -> int:
        return self.reads - self.cancel_polls

    @property
    def total(self) -> int:
        return sum(self.counts.values())


@dataclass
class CallsResult:
    rows: list[AnswerCalls] = field(default_factory=list)
    poll_ms: float = float("nan")  # CONTROL_POLL_MS as the stack sets it for the stream function
    tokens: int = TOKENS
    rate: float = RATE
    error: str | None = None

    def row(self, kind: str) -> AnswerCalls | None:
        return next((r for r in self.rows if r.kind == kind), None)


def _counter_classes() -> tuple[Any, Any]:
    """The counter, and a counter of the cancel poll alone (imported late: devstack is optional)."""
    from devstack.aws_calls import AwsCallCounter

    class CancelPolls(AwsCallCounter):
        """Only GetItems on the watcher's thread (``watch-<key>``), which polls the request record
        for a cancel or a resume; its lease renewals are UpdateItems and count as writes."""

        def _saw(self, service: str, operation: str, caller: FrameType | None) -> None:
            if operation == "GetItem" and threading.current_thread().name.startswith("watch-"):
                super()._saw(service, operation, caller)

    return AwsCallCounter, CancelPolls


# --------------------------------------------------------------------------- one answer


async def _converse(url: str, message: dict[str, Any]) -> list[dict[str, Any]]:
    """Connect, send one prompt, read every frame until the stream function closes the socket."""
    import websockets

    frames: list[dict[str, Any]] = []
    async with websockets.connect(url, ping_interval=None, close_timeout=5, max_size=None) as ws:
        await ws.send(json.dumps(message))
        try:
            async for raw in ws:
                frames.append(json.loads(raw))
        except websockets.ConnectionClosed:
            pass
    return frames


def _one_answer(
    stack: Any, rid: str, answer: Answer, tokens: int, rate: float
) -> tuple[bool, float]:
    """Run one answer end to end; returns (complete, the stream invocation's ms) once its
    $disconnect and every other invocation it caused have finished."""
    seen = len(stack.invocations())
    directive = f"#mock tokens={tokens} rate={rate:g} first_token_delay={FIRST_TOKEN_DELAY:g}"
    prompt = f"Answer {rid}.\n{directive}"
    message = {"action": "sendMessage", "requestId": rid, "prompt": prompt, **answer.fields}
    frames = asyncio.run(asyncio.wait_for(_converse(stack.ws_url, message), TIMEOUT))

    def settled(invocations: list[Any]) -> bool:
        # The runtime lists an invocation once it has finished, so wait for each function's:
        # the stream function's may still be settling the record after $disconnect is done.
        return {i.function for i in invocations[seen:]} >= set(FUNCTIONS)

    stack.wait_for_invocations(settled, timeout=TIMEOUT)
    streams = [i for i in stack.invocations()[seen:] if i.function == "stream"]
    stream_ms = sum((i.finished_at - i.started_at) * 1000 for i in streams if i.started_at)
    deltas = [f for f in frames if f.get("type") == "delta"]
    complete = (
        bool(frames)
        and frames[-1].get("type") == "end"
        and [f["seq"] for f in deltas] == list(range(len(deltas)))
        and "".join(f["text"] for f in deltas) == "".join(f"t{i} " for i in range(tokens))
    )
    return complete, stream_ms


def run_calls(
    progress: Progress = lambda _line: None, *, tokens: int = TOKENS, rate: float = RATE
) -> CallsResult:
    """Count each kind of answer's calls in a fresh local stack (thread isolation, so the
    handlers run in this process where the counter sees them)."""
    result = CallsResult(tokens=tokens, rate=rate)
    try:
        counter, cancel_polls = _counter_classes()
        stack = local_stack(isolation="thread", env={"POWERTOOLS_LOG_LEVEL": "WARNING"})
    except ImportError as exc:
        result.error = f"the local stack is not available ({exc})"
        return result
    try:
        with _stdout_to_stderr(), stack:
            runtime = stack.runtime
            env = {**runtime.env, **runtime.specs["stream"].env}
            result.poll_ms = float(env.get("CONTROL_POLL_MS") or DEFAULT_POLL_MS)
            with counter.for_runtime(runtime) as calls, cancel_polls.for_runtime(runtime) as polls:
                for n, answer in enumerate(ANSWERS):
                    calls.reset()
                    polls.reset()
                    complete, stream_ms = _one_answer(stack, f"calls-{n}", answer, tokens, rate)
                    counts, polled = calls.reset(), polls.reset()
                    row = AnswerCalls(
                        answer.kind, counts, sum(polled.values()), complete, stream_ms
                    )
                    progress(
                        f"calls: {answer.kind}: {row.writes} writes, {row.cancel_polls} polls + "
                        f"{row.other_reads} reads, {row.total} calls in all"
                        + ("" if complete else " (the answer was not complete)")
                    )
                    if answer.counted:
                        result.rows.append(row)
    except Exception as exc:  # report what ran; the rest of the benchmark still stands
        result.error = f"{type(exc).__name__}: {exc}"
        progress(f"calls failed: {result.error}")
    return result


# --------------------------------------------------------------------------- the tables


def _label(service: str, operation: str) -> str:
    return operation if service == "dynamodb" else f"{operation} ({SERVICES.get(service, service)})"


def _order(key: tuple[str, str]) -> tuple[int, int, str, str]:
    service, operation = key
    if service == "dynamodb" and operation in WRITES:
        return (0, WRITES.index(operation), "", "")
    if service == "dynamodb" and operation in READS:
        return (1, READS.index(operation), "", "")
    return (2, 0, service, operation)


def render_calls(result: CallsResult | None) -> list[str]:
    out = ["## AWS calls per answer", ""]
    if result is None:
        return out + ["Not run.", ""]
    out += [
        f"Every AWS API call the functions make for one answer, counted in the local stack from "
        f"the client's connect to its disconnect: `$connect`, the message function, the stream "
        f"function (the mock LLM answers {result.tokens} tokens at {result.rate:g} tokens/s "
        f"after {FIRST_TOKEN_DELAY:g} s; it ends with `end` and closes the socket) and "
        "`$disconnect`, all finished. "
        "The handlers run in the benchmark's process (thread isolation), where "
        "`devstack/aws_calls.py` counts botocore's calls per operation: once per call, however "
        "often botocore retries it, and a `BatchWriteItem` once whatever it holds. Containers "
        "are warm (one answer first, not counted). *With a conversation* is the second turn "
        "of a `conversationId`, so its history is read.",
        "",
        "*Cancel poll*: the stream function's watcher reads the request record every "
        f"`CONTROL_POLL_MS` while the answer streams, to see a cancel or a resume; this stack "
        f"sets **{result.poll_ms:g} ms**. A longer answer polls more; nothing else here grows "
        "with its length but the posts, and the lease renewals (writes, every third of "
        "`STREAM_LEASE_SECONDS`) of an answer that outlasts one.",
        "",
    ]
    plain = result.row("plain")
    if plain is not None:
        out += [
            table(
                ["target (plain answer)", "measured", "met"],
                [
                    [
                        f"DynamoDB writes ≤ {WRITE_TARGET}",
                        plain.writes,
                        mark(plain.writes <= WRITE_TARGET),
                    ],
                    [
                        f"DynamoDB reads ≤ the cancel poll + {OTHER_READS_TARGET}",
                        f"{plain.cancel_polls} + {plain.other_reads}",
                        mark(plain.other_reads <= OTHER_READS_TARGET),
                    ],
                ],
            ),
            "",
        ]
    if result.rows:
        out += [
            table(
                [
                    "answer",
                    "DynamoDB writes",
                    "reads: cancel poll + other",
                    "all AWS calls",
                    "stream fn ms",
                    "answer complete",
                ],
                [
                    [
                        r.kind,
                        f"**{r.writes}**",
                        f"{r.cancel_polls} + **{r.other_reads}**",
                        r.total,
                        f"{r.stream_ms:.0f}",
                        mark(r.complete),
                    ]
                    for r in result.rows
                ],
            ),
            "",
            "Per operation:",
            "",
        ]
        keys = sorted({k for r in result.rows for k in r.counts}, key=_order)
        out += [
            table(
                ["answer", *(_label(*k) for k in keys)],
                [[r.kind, *(r.counts.get(k, 0) for k in keys)] for r in result.rows],
            ),
            "",
        ]
    if result.error:
        out += [f"**Pending / failed:** {result.error}", ""]
    return out


def main(argv: list[str] | None = None) -> int:
    import argparse

    from . import add_paths

    parser = argparse.ArgumentParser(prog="python -m benchmarks.calls", description=__doc__)
    parser.add_argument("--tokens", type=int, default=TOKENS, help="tokens per answer")
    parser.add_argument("--rate", type=float, default=RATE, help="tokens/s (0: all at once)")
    args = parser.parse_args(argv)
    add_paths()
    measured = run_calls(
        lambda line: print(line, file=sys.stderr, flush=True), tokens=args.tokens, rate=args.rate
    )
    print("\n".join(render_calls(measured)))
    whole = bool(measured.rows) and all(r.complete for r in measured.rows)
    return 0 if whole and not measured.error else 1


if __name__ == "__main__":
    sys.exit(main())
