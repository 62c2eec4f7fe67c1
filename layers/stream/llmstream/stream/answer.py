"""One claimed request's stream, and what is done around it: its conversation history, the
relay in front of its client's connection, the watcher of its record, and how it is settled.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

from ..apigw.connection import Connection, close_quietly
from ..core import transport
from ..core.envelope import Address, PromptEnvelope
from ..core.observability import logger
from ..core.protocol import ErrorCode, error_frame
from ..core.settings import Settings
from ..requests.frames import StoredFrames
from ..requests.history import Conversations, History
from ..requests.lifecycle import Requests
from ..requests.record import Request, Status, owner_key
from .cache import CachingProvider, cache_scope
from .cache.store import CacheStore
from .providers.base import Provider
from .relay import Relay
from .sender import FrameSender
from .signals import Signal
from .streaming import StreamLimits, StreamResult, stream_answer
from .watcher import Watcher


class Answer:
    """The stream of one request this invocation has claimed."""

    def __init__(
        self,
        envelope: PromptEnvelope,
        request: Request,
        *,
        settings: Settings,
        requests: Requests,
        dynamodb: Any,
        connection: Callable[[Address], Connection],
        provider: Callable[[PromptEnvelope], Provider],
        remaining_time: Callable[[], float],
        on_finish: Callable[[], None],
    ) -> None:
        self.envelope = envelope
        self.key = owner_key(envelope.principal_id, envelope.request_id)
        self.settings = settings
        self.requests = requests
        self.dynamodb = dynamodb
        self.connection = connection
        self.provider = provider
        self.remaining_time = remaining_time
        self.on_finish = on_finish
        self.resumable = envelope.resumable and settings.resume_grace_seconds > 0
        self.attach = request.attach
        self.cancelled = Signal()
        if request.cancel_requested:
            self.cancelled.set()
        self.relay = Relay(
            self._start_connection(request),
            envelope.request_id,
            resumable=self.resumable,
            grace=settings.resume_grace_seconds,
            dialect=envelope.dialect,
        )

    def _start_connection(self, request: Request) -> Connection:
        conn = self.connection(self.envelope.address)
        if request.attach > 0:  # resumed before it started: start on the new connection
            with contextlib.suppress(ValueError):
                conn = self.connect(request.address)
        return conn

    def _cancelled_now(self) -> bool:
        """Asked once, just before the model is called: a cancel recorded since the watcher's
        last look still skips the call. A read that fails leaves it to the watcher."""
        try:
            state = self.requests.poll(self.key)
        except Exception:
            logger.warning("could not read the request's record before calling the model")
            return False
        return state is not None and state.cancel_requested

    def _behind_cache(self, llm: Provider) -> Provider:
        """The provider behind the response cache, where it is on and the request may use it:
        not opted out (``"cache": false``), and shared or of a known principal."""
        settings, envelope = self.settings, self.envelope
        scope = cache_scope(envelope.principal_id, shared=settings.response_cache_shared)
        if settings.response_cache_ttl_seconds <= 0 or not envelope.cache or scope is None:
            return llm
        return CachingProvider(
            llm,
            CacheStore(self.dynamodb, settings.response_cache_table),
            scope=scope,
            ttl_seconds=settings.response_cache_ttl_seconds,
            # A live stream may wait on a stalled model that long before it gives up.
            lease_seconds=settings.stream_lease_seconds + settings.llm_stall_timeout,
            poll_interval=settings.control_poll_interval,
        )

    def connect(self, address: Address) -> Connection:
        """A connection to ``address``, checked like the envelope's own endpoint."""
        if not address.valid:
            raise ValueError("invalid endpoint")
        return self.connection(address)

    def run(self) -> StreamResult:
        settings, envelope, relay = self.settings, self.envelope, self.relay
        llm = self.provider(envelope)
        history, conversations = load_history(envelope, settings, self.dynamodb)
        if history is not None and history.messages:
            envelope = envelope._replace(messages=history.messages + envelope.messages)
        llm = self._behind_cache(llm)
        sender = FrameSender(
            relay.post,
            envelope.request_id,
            min_interval=settings.min_frame_interval,
            # A transport chunk frame is a little larger than our delta of the same text.
            max_frame_bytes=settings.max_frame_bytes
            - (transport.OVERHEAD_BYTES if envelope.dialect else 0),
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

        watcher = Watcher(
            self.requests,
            self.key,
            relay,
            self.connect,
            attach=self.attach,
            interval=settings.control_poll_interval,
            cancelled=self.cancelled,
        )
        with watcher:
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
                on_finish=self.on_finish,
                cancelled=self.cancelled,
                cancelled_now=self._cancelled_now,
                forward_reasoning=settings.forward_reasoning,
                before_end=remember_turn if conversations is not None else None,
            )
        self.attach = watcher.attach
        result.cache = getattr(llm, "outcome", None)
        if settings.log_content:
            logger.info("completion", extra={"text": result.text})
        settle(self, result, watcher)
        # After an error during the stream the connection closes, keepOpen or not: the client
        # starts afresh (docs/protocol.md). A clean end closes it unless keepOpen.
        ended_cleanly = result.outcome in (Status.COMPLETED, Status.CANCELLED)
        reachable = not sender.gone and not relay.detached
        # A transport client keeps one socket for all its chats: never closed under it.
        if reachable and not envelope.dialect and (not envelope.keep_open or not ended_cleanly):
            close_quietly(relay.current)
        return result


def load_history(
    envelope: PromptEnvelope, settings: Settings, dynamodb: Any
) -> tuple[History | None, Conversations | None]:
    """The stored turns of the envelope's conversation, if it names one."""
    conversation_id = envelope.conversation_id
    if conversation_id is None or settings.history_max_turns <= 0:
        return None, None
    conversations = Conversations(
        dynamodb,
        settings.conversations_table,
        max_turns=settings.history_max_turns,
        max_tokens=settings.history_max_tokens,
        ttl_seconds=settings.history_ttl_seconds,
    )
    history = conversations.load(owner_key(envelope.principal_id, conversation_id))
    logger.info(
        "conversation loaded",
        extra={"turns_kept": len(history.messages) // 2, "turns_dropped": history.dropped},
    )
    return history, conversations


def settle(answer: Answer, result: StreamResult, watcher: Watcher) -> None:
    """Store a resumable answer's frames, then record how it ended. A client that resumed
    after the watcher's last look gets the answer moved to it first."""
    relay = answer.relay
    status, final = Status(result.outcome), relay.final
    if relay.abandoned:
        status = Status.GONE
        final = error_frame(
            answer.envelope.request_id,
            ErrorCode.TIMEOUT,
            f"nobody resumed the answer within {answer.settings.resume_grace_seconds:g} s, "
            "so it was stopped; send the prompt again",
        )
    try:
        if answer.resumable:
            StoredFrames(answer.dynamodb, answer.settings.frames_table).store(
                answer.key,
                relay.texts,
                kinds=relay.kinds,
                expires_at=answer.requests.store.now() + answer.requests.kept_seconds,
            )
        while not answer.requests.settle(
            answer.key,
            status=status,
            attach=watcher.attach,
            last_seq=len(relay.texts) - 1,
            final=final if answer.resumable else None,
        ):
            state = answer.requests.read(answer.key)
            if state is None or state.attach <= watcher.attach:
                logger.error("the request's record changed unexpectedly")
                return
            watcher.apply(state)
        answer.attach = watcher.attach
    except Exception:  # the client has its answer; only a later resume would miss it
        logger.exception("could not record the end of the request")
