"""What the stream function does with one SNS message: check it, claim it, stream the answer,
close up, and give the connection's stream slot back. A resume message instead replays a
finished answer's stored frames to the connection of a client that came back.

The provider and the connection come from factories, and DynamoDB is passed in, so tests use
local or stubbed ones. Faults of the client or the model end in a frame and a normal return.
Our own failures also end in a frame, then raise: Lambda retries, the retry finds the request
settled as failed, and the event ends in the dead-letter queue with its client already told.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import time
from collections.abc import Callable
from typing import Any

from ..apigw.connection import Connection
from ..core.envelope import InvalidEnvelope, PromptEnvelope, ResumeEnvelope, parse_message
from ..core.observability import logger
from ..core.protocol import ErrorCode, delta_frame, encode, error_frame
from ..core.settings import Settings
from ..requests.claim import Claim, Deduplicator, deduplicator
from ..requests.claim import Status as ClaimStatus
from ..requests.history import Conversations, History
from ..requests.record import ControlState, RequestControl, Status, Target, owner_key
from ..requests.slots import release_stream
from .providers.base import Provider
from .relay import Relay, Watcher, post_with_retry
from .sender import FrameSender
from .signals import Signal
from .streaming import Outcome, StreamLimits, StreamResult, stream_answer

DOMAIN_PATTERN = re.compile(r"^[A-Za-z0-9.-]{1,253}(:[0-9]{1,5})?$")
STAGE_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,128}$")

INTERRUPTED = "the answer was interrupted; send the prompt again"
NOT_STARTED = "the answer could not be started; send the prompt again"
FAILED = "the answer failed on our side; send the prompt again"
NOT_REPLAYED = "the rest of the answer could not be sent; resume again"

STATUS_OF_OUTCOME = {
    Outcome.COMPLETED: Status.DONE,
    Outcome.CANCELLED: Status.CANCELLED,
    Outcome.GONE: Status.GONE,
}


class RequestFailed(Exception):
    """The request failed on our side and its client was told (where it is still connected).

    Raised so that the invocation fails: Lambda retries it, every retry finds the request
    settled as failed, and the event lands in the alarmed dead-letter queue.
    """


def run_prompt(
    raw_message: str,
    *,
    settings: Settings,
    provider: Callable[[PromptEnvelope], Provider],
    connection: Callable[[Any], Connection],
    remaining_time: Callable[[], float],
    dynamodb: Any = None,
) -> StreamResult | None:
    """Stream one prompt to its connection, once; None when there is nothing to stream.

    ``connection`` builds a Connection from anything with ``connection_id``, ``domain_name`` and
    ``stage`` (an envelope).
    """
    message = _trusted_message(raw_message)
    if message is None:
        return None
    logger.append_keys(connection_id=message.connection_id, request_id=message.request_id)
    if isinstance(message, ResumeEnvelope):
        replay_answer(message, settings=settings, connection=connection, dynamodb=dynamodb)
        return None
    envelope = message
    if settings.log_content:
        logger.info("prompt", extra={"messages": list(envelope.messages)})
    answer = _Answer(envelope, connection, settings, provider, remaining_time, dynamodb)
    if dynamodb is None or not settings.idempotency_table:
        logger.warning("IDEMPOTENCY_TABLE is not set: a duplicate delivery would stream again")
        if not answer.begin():
            return None
        return answer.run_and_release()

    dedupe = deduplicator(dynamodb, settings)
    key = envelope.idempotency_key
    try:
        claim = dedupe.claim(key)
    except Exception:
        logger.exception("could not claim the request")
        answer.tell_and_close(NOT_STARTED)
        raise RequestFailed("the request could not be claimed") from None
    if claim in (Claim.IN_PROGRESS, Claim.COMPLETED):
        logger.info("duplicate delivery: not streaming again", extra={"claim": claim.value})
        return None
    if claim is Claim.FAILED:
        logger.warning("delivery of a request that failed before: failing again")
        raise RequestFailed("the request failed before and its client was told")
    if claim is Claim.INTERRUPTED:
        logger.error("the invocation streaming this request died: telling the client")
        answer.tell_and_close(INTERRUPTED)
        answer.settle_interrupted()
        answer.release()
        raise RequestFailed("the request was interrupted")
    if not answer.begin():
        _settle(dedupe, key, ClaimStatus.COMPLETED)
        return None

    try:
        with dedupe.heartbeat(key, on_error=lambda: logger.warning("could not renew the lease")):
            result = answer.run()
    except Exception:
        logger.exception("the stream could not run")
        answer.tell_and_close(FAILED)
        _settle(dedupe, key, ClaimStatus.FAILED)
        answer.settle_interrupted()
        answer.release()
        raise
    failed = result.outcome == Outcome.FAILED
    _settle(dedupe, key, ClaimStatus.FAILED if failed else ClaimStatus.COMPLETED)
    answer.release()
    if failed:
        raise RequestFailed("the stream failed on our side")
    return result


def _trusted_message(raw_message: str) -> PromptEnvelope | ResumeEnvelope | None:
    try:
        message = parse_message(raw_message)
    except InvalidEnvelope as exc:
        # Never log the message itself: it may hold a prompt.
        logger.warning("ignoring a malformed prompt message", extra={"reason": str(exc)})
        return None
    # The endpoint is built from these two; nothing may smuggle a path or a scheme into it.
    if not _valid_endpoint(message.domain_name, message.stage):
        logger.warning(
            "ignoring a malformed prompt message", extra={"reason": "invalid domainName or stage"}
        )
        return None
    return message


def _valid_endpoint(domain_name: str, stage: str) -> bool:
    return bool(DOMAIN_PATTERN.fullmatch(domain_name) and STAGE_PATTERN.fullmatch(stage))


def _settle(dedupe: Deduplicator, key: str, status: ClaimStatus) -> None:
    """Record the end. A failure here must not fail the invocation: a retry would find a dead
    lease and tell a client that got its whole answer that it was interrupted."""
    try:
        dedupe.settle(key, status)
    except Exception:
        logger.exception("could not record the end of the request")


class _Answer:
    """One request's stream, and the few things done around it: its control item (cancel,
    resume), its conversation history, the connection's stream slot."""

    def __init__(
        self,
        envelope: PromptEnvelope,
        connection: Callable[[Any], Connection],
        settings: Settings,
        provider: Callable[[PromptEnvelope], Provider],
        remaining_time: Callable[[], float],
        dynamodb: Any,
    ) -> None:
        self.envelope = envelope
        self.connection = connection
        self.conn = connection(envelope)
        self.settings = settings
        self.provider = provider
        self.remaining_time = remaining_time
        self.dynamodb = dynamodb
        self._released = False
        self.cancelled = Signal()
        self.key = owner_key(envelope.principal_id, envelope.request_id)
        self.control = (
            RequestControl(dynamodb, settings.frames_table)
            if dynamodb is not None and settings.frames_table
            else None
        )
        self.state: ControlState | None = None
        self.relay: Relay | None = None
        self.watcher: Watcher | None = None

    @property
    def resumable(self) -> bool:
        return (
            self.envelope.resumable
            and self.state is not None
            and self.settings.resume_grace_seconds > 0
        )

    def connect(self, target: Target) -> Connection:
        """A connection to ``target``, checked like the envelope's own endpoint."""
        if not _valid_endpoint(target.domain_name, target.stage) or not target.connection_id:
            raise ValueError("invalid endpoint")
        return self.connection(
            dataclasses.replace(
                self.envelope,
                connection_id=target.connection_id,
                domain_name=target.domain_name,
                stage=target.stage,
            )
        )

    def begin(self) -> bool:
        """Take the request from its control item; False when another delivery has it already.
        Without a control item (none was created, or the table is down) it streams all the
        same, without cancel or resume."""
        if self.control is None:
            return True
        try:
            begun = self.control.begin(self.key)
        except Exception:
            logger.exception("could not read the request's control item: no cancel or resume")
            return True
        if isinstance(begun, str):
            logger.info("the request is not queued: a duplicate delivery", extra={"status": begun})
            return False
        if begun is None:
            logger.warning("the request has no control item: no cancel or resume")
            return True
        self.state = begun
        if begun.cancel_requested:
            self.cancelled.set()
        if begun.attach > 0:  # resumed before it started: start on the new connection
            with contextlib.suppress(ValueError):
                self.conn = self.connect(begun.target)
        return True

    def run(self) -> StreamResult:
        settings, envelope = self.settings, self.envelope
        llm = self.provider(envelope)
        history, conversations = self._history()
        if history is not None and history.messages:
            envelope = dataclasses.replace(envelope, messages=history.messages + envelope.messages)
        relay = self.relay = Relay(
            self.conn,
            envelope.request_id,
            resumable=self.resumable,
            grace=settings.resume_grace_seconds,
        )
        sender = FrameSender(
            relay.post,
            envelope.request_id,
            min_interval=settings.min_frame_interval,
            max_frame_bytes=settings.max_frame_bytes,
            probe=relay.probe,
        )

        def remember_turn(outcome: str, text: str) -> None:
            if conversations is None or history is None or not text:
                return
            assert self.envelope.conversation_id is not None
            conversations.append(
                owner_key(self.envelope.principal_id, self.envelope.conversation_id),
                history.next_turn,
                request_id=self.envelope.request_id,
                messages=self.envelope.messages,
                answer=text,
            )

        watching: Any = contextlib.nullcontext()
        if self.control is not None and self.state is not None:
            watching = self.watcher = Watcher(
                self.control,
                self.key,
                relay,
                self.connect,
                attach=self.state.attach,
                interval=settings.control_poll_interval,
                cancelled=self.cancelled,
            )
        with watching:
            result = stream_answer(
                envelope,
                llm,
                sender,
                system_prompt=settings.system_prompt,
                limits=StreamLimits(
                    read_timeout=settings.llm_stall_timeout,
                    retry_budget=settings.llm_retry_budget,
                    deadline_margin=settings.deadline_margin,
                ),
                remaining_time=self.remaining_time,
                keep_text=settings.log_content,
                on_finish=self.release,
                cancelled=self.cancelled,
                before_end=remember_turn if conversations is not None else None,
            )
        if settings.log_content:
            logger.info("completion", extra={"text": result.text})
        self._settle_control(result, relay)
        reachable = not sender.gone and not relay.detached
        if reachable and (not envelope.keep_open or result.outcome == Outcome.FAILED):
            _close_quietly(relay.current)
        return result

    def _history(self) -> tuple[History | None, Conversations | None]:
        """The stored turns of the envelope's conversation, if it names one."""
        settings, conversation_id = self.settings, self.envelope.conversation_id
        if conversation_id is None or settings.history_max_turns <= 0:
            return None, None
        if self.dynamodb is None or not settings.conversations_table:
            logger.warning("CONVERSATIONS_TABLE is not set: the conversation is not kept")
            return None, None
        conversations = Conversations(
            self.dynamodb,
            settings.conversations_table,
            max_turns=settings.history_max_turns,
            max_tokens=settings.history_max_tokens,
            ttl_seconds=settings.history_ttl_seconds,
        )
        history = conversations.load(owner_key(self.envelope.principal_id, conversation_id))
        logger.info(
            "conversation loaded",
            extra={"turns_kept": len(history.messages) // 2, "turns_dropped": history.dropped},
        )
        return history, conversations

    def _settle_control(self, result: StreamResult, relay: Relay) -> None:
        """Store a resumable answer's frames, then record how it ended. A client that resumed
        after the watcher's last look gets the answer moved to it first."""
        if self.control is None or self.state is None:
            return
        status = STATUS_OF_OUTCOME.get(result.outcome, Status.FAILED)
        final = relay.final
        if relay.abandoned:
            status = Status.GONE
            final = error_frame(
                self.envelope.request_id,
                ErrorCode.TIMEOUT,
                f"nobody resumed the answer within {self.settings.resume_grace_seconds:g} s, "
                "so it was stopped; send the prompt again",
            )
        now = int(time.time())
        try:
            if self.resumable:
                self.control.store_frames(
                    self.key, relay.texts, expires_at=now + self.settings.resume_ttl_seconds
                )
            watcher = self.watcher
            assert watcher is not None
            while not self.control.settle(
                self.key,
                status=status,
                attach=watcher.attach,
                last_seq=len(relay.texts) - 1,
                final=final if self.resumable else None,
                expires_at=now + self.settings.resume_ttl_seconds,
            ):
                state = self.control.read(self.key)
                if state is None or state.attach <= watcher.attach:
                    logger.error("the request's control item changed unexpectedly")
                    return
                watcher.apply(state)
        except Exception:  # the client has its answer; only a later resume would miss it
            logger.exception("could not record the end of the request")

    def settle_interrupted(self, message: str = INTERRUPTED) -> None:
        """Best effort: a request that cannot be answered is no longer in progress, and a client
        that resumes it is told so (its frames died with the invocation that streamed them)."""
        if self.control is None:
            return
        try:
            state = self.state = self.state or self.control.read(self.key)
            if state is None:
                return
            self.control.settle(
                self.key,
                status=Status.FAILED,
                attach=max(state.attach, self.watcher.attach if self.watcher else 0),
                last_seq=-1,
                final=error_frame(self.envelope.request_id, ErrorCode.INTERNAL, message),
                expires_at=int(time.time()) + self.settings.resume_ttl_seconds,
            )
        except Exception:
            logger.exception("could not record the end of the request")

    def run_and_release(self) -> StreamResult:
        try:
            result = self.run()
        except Exception:
            logger.exception("the stream could not run")
            self.tell_and_close(FAILED)
            self.settle_interrupted()
            self.release()
            raise
        self.release()
        if result.outcome == Outcome.FAILED:
            raise RequestFailed("the stream failed on our side")
        return result

    def tell_and_close(self, message: str) -> None:
        """Best effort: the client may be gone already."""
        conn = self.relay.current if self.relay is not None else self.conn
        frame = error_frame(self.envelope.request_id, ErrorCode.INTERNAL, message)
        try:
            conn.post(encode(frame))
        except Exception:
            logger.info("could not tell the client")
            return
        _close_quietly(conn)

    def release(self) -> None:
        """Give back the stream slot the message handler took for this request, once."""
        if self._released or self.dynamodb is None or not self.settings.connections_table:
            return
        self._released = True
        if self.settings.max_concurrent_streams <= 0:
            return
        try:
            release_stream(
                self.dynamodb, self.settings.connections_table, self.envelope.connection_id
            )
        except Exception:
            logger.exception("could not give back the stream slot")


def give_up(
    envelope: PromptEnvelope,
    message: str,
    *,
    settings: Settings,
    connection: Callable[[Any], Connection],
    dynamodb: Any,
) -> Connection:
    """End a request that no invocation will answer (the dead-letter function's part): record
    ``message`` as its end for a client that resumes it, give back its stream slot, and return
    the connection its client is on now, to be told there."""
    answer = _Answer(envelope, connection, settings, _no_provider, lambda: 0.0, dynamodb)
    answer.settle_interrupted(message)
    answer.release()
    if answer.state is not None and answer.state.attach > 0:  # the client resumed elsewhere
        with contextlib.suppress(ValueError):
            return answer.connect(answer.state.target)
    return answer.conn


def _no_provider(envelope: PromptEnvelope) -> Provider:
    raise RuntimeError("a request given up on calls no model")


def replay_answer(
    resume: ResumeEnvelope,
    *,
    settings: Settings,
    connection: Callable[[Any], Connection],
    dynamodb: Any,
) -> None:
    """Send a finished answer's stored deltas after ``after_seq``, then its last frame, to the
    connection that resumed it; then close it, unless the request asked to keep it open."""
    if dynamodb is None or not settings.frames_table:
        logger.warning("FRAMES_TABLE is not set: a resume cannot be replayed")
        return
    control = RequestControl(dynamodb, settings.frames_table)
    key = owner_key(resume.principal_id, resume.request_id)
    conn = connection(resume)
    try:
        if not control.claim_replay(key, resume.attach):
            logger.info("duplicate or superseded resume: not replaying")
            return
        state = control.read(key)
        frames = control.load_frames(key, resume.after_seq) if state is not None else []
    except Exception:
        logger.exception("could not read the stored answer")
        _tell(conn, resume.request_id, NOT_REPLAYED)
        return
    expected = list(range(resume.after_seq + 1, (state.last_seq if state else -1) + 1))
    if state is None or state.final is None or [seq for seq, _ in frames] != expected:
        logger.error("the stored answer is incomplete")
        _tell(conn, resume.request_id, NOT_REPLAYED)
        return
    for seq, text in frames:
        if not post_with_retry(conn, encode(delta_frame(resume.request_id, seq, text))):
            logger.info("the client left during the replay")
            return
    if not post_with_retry(conn, encode(state.final)):
        return
    logger.info("replayed a stored answer", extra={"frames": len(frames)})
    if not state.keep_open:
        _close_quietly(conn)


def _tell(conn: Connection, request_id: str, message: str) -> None:
    with contextlib.suppress(Exception):
        conn.post(encode(error_frame(request_id, ErrorCode.INTERNAL, message)))


def _close_quietly(conn: Connection) -> None:
    """Close the connection; a failure here must not fail the invocation (Lambda would retry)."""
    try:
        conn.close()
    except Exception:
        logger.exception("could not close the connection")
