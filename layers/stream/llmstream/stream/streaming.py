"""Streams one prompt's answer to one connection: start, deltas, end (or error), then close.

Plain logic: the provider, the sender and the clock come in as arguments, so tests drive it
without AWS. The result says what happened; the handler turns it into logs and metrics.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from ..core.envelope import PromptEnvelope
from ..core.observability import logger
from ..core.protocol import ErrorCode, FinishReason, end_frame, error_frame, start_frame
from ..requests.record import Status
from .providers.base import (
    ChunkStream,
    Ending,
    LLMError,
    LLMTimeout,
    Provider,
    retry_before_first_token,
)
from .sender import FrameSender, SendStats
from .signals import Signal


@dataclass
class StreamResult:
    """What became of one answer: for the record, the logs and the metrics."""

    outcome: Status
    """How the answer ended: the request's status, as its record keeps it."""
    finish_reason: str | None
    input_tokens: int | None
    output_tokens: int | None
    started_at: float
    first_token_at: float | None
    finished_at: float
    send: SendStats
    text: str | None = None
    """The answer as streamed, kept only when asked for (LOG_CONTENT)."""
    cache: str | None = None
    """With the response cache on: ``hit``, ``miss`` or ``coalesced`` (stream.cache)."""

    @property
    def duration(self) -> float:
        return self.finished_at - self.started_at

    @property
    def time_to_first_token(self) -> float | None:
        return None if self.first_token_at is None else self.first_token_at - self.started_at


@dataclass(frozen=True)
class StreamLimits:
    """How long the answer loop waits on the model, and when it stops."""

    read_timeout: float = 30.0
    """A model that sends nothing for this long is stalled."""
    retry_budget: float = 20.0
    """Time allowed for retrying a failed request before the first token."""
    deadline_margin: float = 10.0
    """Stop with a timeout frame when less than this is left of the invocation."""


def normalise_finish_reason(reason: str | None) -> str:
    """Map a vendor's finish reason onto the protocol's; anything unknown counts as a stop."""
    known = {r.value for r in FinishReason}
    return reason if reason in known else FinishReason.STOP.value


def build_messages(envelope: PromptEnvelope, system_prompt: str) -> list[dict[str, str]]:
    """The server's system prompt first; clients cannot send one of their own."""
    messages = [dict(m) for m in envelope.messages]
    return [{"role": "system", "content": system_prompt}, *messages] if system_prompt else messages


def stream_answer(
    envelope: PromptEnvelope,
    provider: Provider,
    sender: FrameSender,
    *,
    system_prompt: str = "",
    limits: StreamLimits = StreamLimits(),
    remaining_time: Callable[[], float] = lambda: float("inf"),
    clock: Callable[[], float] = time.monotonic,
    keep_text: bool = False,
    on_finish: Callable[[], None] = lambda: None,
    cancelled: Callable[[], bool] = lambda: False,
    cancelled_now: Callable[[], bool] = lambda: False,
    before_end: Callable[[str, str], None] | None = None,
    forward_reasoning: bool = True,
) -> StreamResult:
    """Stream the answer. ``on_finish`` runs once, just before the last frame is queued: a
    client that sends its next prompt on seeing ``end`` finds its stream slot already free.

    ``cancelled`` is asked before the model is called and before each chunk is passed on, and
    ``cancelled_now`` (a fresh look, where ``cancelled`` may lag) just before the call; once
    it says yes the model's stream is closed and ``end`` (``cancelled``) follows the text already
    handed to the sender, so at most the one frame being assembled precedes it. A ``Signal``
    also aborts the model's stream when it is raised while a read waits on the model (where
    the provider can: ``abort()``), as a client found gone does, so a stalled model ends at once.
    The model's reasoning goes out in ``reasoning`` frames unless ``forward_reasoning`` is off;
    it is never kept in the text or the history.
    ``before_end(outcome, text)`` runs just before ``end`` is queued (completed or cancelled),
    with the whole text of the answer: history is stored there, ahead of the client's next turn.
    """
    rid = envelope.request_id
    kept: list[str] | None = [] if keep_text or before_end is not None else None
    started = clock()
    first_token_at: float | None = None
    ending = Ending()
    outcome = Status.COMPLETED
    stream: ChunkStream | None = None

    finished = False

    def finish() -> None:
        nonlocal finished
        if not finished:
            finished = True
            on_finish()

    def fail(code: ErrorCode, message: str, result: Status) -> Status:
        finish()
        sender.send(error_frame(rid, code, message))
        return result

    sender.send(start_frame(rid, envelope.model))
    try:
        if cancelled() or cancelled_now():  # before the model was even called
            raise _Cancelled
        budget = max(0.0, min(limits.retry_budget, remaining_time() - limits.deadline_margin))
        read_timeout = max(1.0, min(limits.read_timeout, remaining_time() - limits.deadline_margin))
        stream = retry_before_first_token(
            lambda: provider.stream(
                build_messages(envelope, system_prompt),
                model=envelope.model,
                max_tokens=envelope.max_tokens,
                read_timeout=read_timeout,
            ),
            budget=budget,
        )
        abort = getattr(stream, "abort", None)
        with _aborted_on_cancel_or_gone(abort, cancelled, sender):
            for chunk in stream:
                if cancelled():
                    raise _Cancelled
                if sender.gone:
                    outcome = Status.GONE
                    break
                if sender.failed:
                    outcome = Status.DELIVERY_FAILED
                    break
                if chunk.reasoning and forward_reasoning:
                    sender.reasoning(chunk.reasoning)
                if chunk.text:
                    if first_token_at is None:
                        first_token_at = clock()
                    sender.delta(chunk.text)
                    if kept is not None:
                        kept.append(chunk.text)
                ending.take(chunk)
                if remaining_time() < limits.deadline_margin:
                    outcome = fail(
                        ErrorCode.TIMEOUT,
                        "the answer was cut short: the function's time limit is near",
                        Status.TIMEOUT,
                    )
                    break
        if outcome == Status.COMPLETED and _aborted(cancelled):
            raise _Cancelled  # the stream ended because it was aborted, not because it was done
    except _Cancelled:
        outcome = Status.CANCELLED
    except Exception as exc:  # after an abort, whatever the read raised is the abort's reason
        if _aborted(cancelled):
            outcome = Status.CANCELLED
        elif sender.gone:
            outcome = Status.GONE
        else:
            outcome = _failed(exc, fail)
    finally:
        if stream is not None:
            _close_quietly(stream)

    finish()
    text = None if kept is None else "".join(kept)
    if outcome in (Status.COMPLETED, Status.CANCELLED) and before_end is not None:
        try:
            before_end(outcome, text or "")
        except Exception:  # the answer itself is fine: deliver its end all the same
            logger.exception("could not finish the turn")
    if outcome == Status.COMPLETED:
        sender.send(
            end_frame(
                rid,
                normalise_finish_reason(ending.finish_reason),
                ending.input_tokens,
                ending.output_tokens,
                cached=bool(getattr(stream, "cached", False)),
                coalesced=bool(getattr(stream, "coalesced", False)),
            )
        )
    elif outcome == Status.CANCELLED:
        sender.send(
            end_frame(rid, FinishReason.CANCELLED.value, ending.input_tokens, ending.output_tokens)
        )
    stats = sender.close()
    if outcome == Status.COMPLETED and (sender.gone or sender.failed):
        outcome = Status.GONE if sender.gone else Status.DELIVERY_FAILED
    return StreamResult(
        outcome=outcome,
        finish_reason=ending.finish_reason,
        input_tokens=ending.input_tokens,
        output_tokens=ending.output_tokens,
        started_at=started,
        first_token_at=first_token_at,
        finished_at=clock(),
        send=stats,
        text=text if keep_text else None,
    )


class _Cancelled(Exception):
    """The client cancelled the answer."""


@contextlib.contextmanager
def _aborted_on_cancel_or_gone(
    abort: Callable[[], None] | None, cancelled: Callable[[], bool], sender: FrameSender
) -> Iterator[None]:
    """While the model streams, a cancel or a client found gone aborts its stream: a read that
    waits on a model sending nothing would otherwise wait out the stall timeout."""
    if abort is None:  # a provider that cannot abort: noticed at the next chunk, as before
        yield
        return
    on_cancel = (
        cancelled.on_set(abort) if isinstance(cancelled, Signal) else contextlib.nullcontext()
    )
    with on_cancel, sender.on_gone(abort):
        yield


def _aborted(cancelled: Callable[[], bool]) -> bool:
    return isinstance(cancelled, Signal) and cancelled.acted


def _failed(exc: Exception, fail: Callable[[ErrorCode, str, Status], Status]) -> Status:
    """The error frame and outcome of a stream that failed: the model's fault, or ours."""
    if isinstance(exc, LLMTimeout):
        return fail(ErrorCode.TIMEOUT, exc.message, Status.TIMEOUT)
    if isinstance(exc, LLMError):
        return fail(ErrorCode.LLM_ERROR, exc.message, Status.LLM_ERROR)
    # A bug or an outage of ours: still a frame in order, never a silent hang.
    logger.error("the stream failed", exc_info=exc)
    return fail(
        ErrorCode.INTERNAL, "the answer failed on our side; send the prompt again", Status.FAILED
    )


def _close_quietly(stream: ChunkStream) -> None:
    try:
        stream.close()
    except Exception:  # closing a broken HTTP stream may fail too; the outcome is already known
        logger.info("could not close the model's stream")
