"""What may happen to a request, decided on its one record: registered by the message handler,
claimed by one stream delivery, cancelled or moved by its client, settled at the end, or closed
out by the dead-letter function when no invocation is left to answer it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, NamedTuple

from ..core.dynamo import ConditionFailed
from ..core.envelope import Address
from ..core.protocol import ErrorCode, error_frame
from ..core.settings import Settings
from .cancels import Cancels
from .chats import Chats
from .record import LEASE_SECONDS, Request, Status, address_item
from .store import RequestStore, final_json

INTERRUPTED = "the answer was interrupted; send the prompt again"
NOT_STARTED = "the answer could not be started; send the prompt again"
FAILED = "the answer failed on our side; send the prompt again"


class Taken(StrEnum):
    """What a claim found, and so what its caller does."""

    CLAIMED = "claimed"
    """The caller holds the request now: stream it (or, closing out, tell the client)."""
    HELD = "held"
    """A live invocation streams the request right now: do nothing."""
    ENDED = "ended"
    """The request has ended and its client was told; ``request.status`` says how."""
    TAKEN_OVER = "taken_over"
    """The invocation that streamed it died; the caller now owns telling the client. The record
    is failed already, with the ``error`` frame a client that resumes gets."""


# A NamedTuple, not a dataclass: the message handler's cold start (docs/architecture.md).
class Claim(NamedTuple):
    """What the stream function's claim of a request found, and the record as it is now."""

    taken: Taken
    request: Request


@dataclass(frozen=True)
class Attached:
    """The request is still queued or streaming: its stream function moves it to the caller."""


@dataclass(frozen=True)
class Replay:
    """The answer is over: a stream function must replay its stored frames (this attach)."""

    attach: int


@dataclass(frozen=True)
class Refused:
    """A cancel, resume or attach that cannot be done, and why."""

    reason: str
    """``not_found``, ``not_resumable``, ``interrupted`` or ``busy``."""


class NewRequest(NamedTuple):
    """What a record is created with, by the message handler or, for a prompt that reached the
    stream function without one (published by another function), by its claim."""

    request_id: str
    address: Address
    owner: str | None = None
    resumable: bool = False
    keep_open: bool = False


class Requests:
    """The request records of one frames table, and the rules for changing them. A live record
    lasts ``ttl_seconds`` (CONNECTION_TTL_SECONDS); an ended answer may be resumed for
    ``kept_seconds`` (RESUME_TTL_SECONDS)."""

    def __init__(
        self,
        dynamodb: Any,
        table: str,
        *,
        lease: float = LEASE_SECONDS,
        ttl_seconds: int = 7200,
        kept_seconds: int = 3600,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = RequestStore(dynamodb, table, clock=clock)
        self.cancels = Cancels(self.store)
        self.chats = Chats(self.store, ttl_seconds)
        self.lease = lease
        self.ttl_seconds = ttl_seconds
        self.kept_seconds = kept_seconds

    @classmethod
    def of(cls, dynamodb: Any, settings: Settings) -> Requests:
        """The deployment's request records: its frames table, its lease, its lifetimes."""
        return cls(
            dynamodb,
            settings.frames_table,
            lease=settings.stream_lease_seconds,
            ttl_seconds=settings.connection_ttl_seconds,
            kept_seconds=settings.resume_ttl_seconds,
        )

    def read(self, key: str) -> Request | None:
        """The record, or None when there is none (or it has expired)."""
        request = self.store.read(key)
        return None if request is None or request.expires_at < self.store.now() else request

    def poll(self, key: str) -> Request | None:  # between renewals: one small consistent read
        return self.store.read(key, polled=True)

    def register(self, key: str, new: NewRequest) -> bool:
        """The message handler records a new request as queued; False when its id is taken (in
        use, or used lately). A cancel that came first makes it start cancelled."""
        fields = {
            **record_fields(new, self.store.clock(), self.ttl_seconds),
            "status": Status.QUEUED.value,
        }
        taken = self.store.create(key, fields)
        if taken is None:
            return True
        return taken.pending_cancel and self.cancels.register_over_held(key, fields, new)

    def forget(self, key: str) -> None:  # a request never queued: its prompt was not published
        self.store.delete(key)

    def attach(
        self,
        key: str,
        *,
        principal_id: str | None,
        address: Address,
        after_seq: int,
        alias: str | None = None,
    ) -> Attached | Replay | Refused:
        """Point a request at a client that resumes it (under ``alias``, its new request id)."""
        for _ in range(3):
            request = self.read(key)
            if request is None or request.owner != principal_id:
                return Refused("not_found")
            if not request.resumable:
                return Refused("not_resumable")
            if request.lease_lapsed(self.store.now_ms()):
                return Refused("interrupted")
            if not request.live and request.resumable_until < self.store.now():
                return Refused("not_found")  # over, and kept no longer for a resume
            if self.store.move(key, request, address, after_seq, alias):
                return Attached() if request.live else Replay(request.attach + 1)
            # the stream ended, or another resume came first: look again
        return Refused("busy")

    def claim(self, key: str, new: NewRequest) -> Claim:
        """A delivery's claim on the request: CLAIMED (stream it) or what became of it."""
        lease = {"leaseUntil": self.store.now_ms() + int(self.lease * 1000)}
        return self._take(key, new, Status.STREAMING, lease)

    def renew(self, key: str) -> Request | None:
        """Extend the lease of a request this invocation streams; its state, None once ended."""
        return self.store.renew(key, self.store.now_ms() + int(self.lease * 1000))

    def settle(
        self, key: str, *, status: Status, attach: int, last_seq: int, final: dict | None
    ) -> bool:
        """Record how the answer ended (kept for a resume for ``kept_seconds``). False when a
        client resumed it since ``attach``: move the answer to that client, then settle again."""
        return self.store.settle(
            key,
            status=status,
            attach=attach,
            last_seq=last_seq,
            final=final,
            resumable_until=self.store.now() + self.kept_seconds,
        )

    def fail(self, key: str, request_id: str, *, attach: int, message: str) -> bool:
        """Settle as failed; a client that resumes it gets ``message``, and no frames."""
        final = error_frame(request_id, ErrorCode.INTERNAL, message)
        return self.settle(key, status=Status.FAILED, attach=attach, last_seq=-1, final=final)

    def claim_replay(self, key: str, attach: int) -> bool:
        """Exactly one delivery replays a given resume; False for a duplicate or a stale one."""
        return self.store.mark_replayed(key, attach)

    def close_out(self, key: str, new: NewRequest) -> Claim:
        """Settle as failed a request that no invocation is left to answer: CLAIMED when it was
        never streamed, TAKEN_OVER when its streaming invocation died (the caller now owns
        telling the client, in both cases), HELD while a live invocation has it, else ENDED."""
        return self._take(
            key,
            new,
            Status.FAILED,
            failed_fields(new.request_id, NOT_STARTED, self.store.now() + self.kept_seconds),
        )

    def _take(self, key: str, new: NewRequest, status: Status, fields: dict[str, Any]) -> Claim:
        defaults = record_fields(new, self.store.clock(), self.ttl_seconds)
        for _ in range(3):
            try:
                taken = self.store.take(key, status=status, fields=fields, defaults=defaults)
                return Claim(Taken.CLAIMED, taken)
            except ConditionFailed as refused:
                old = Request.from_item(refused.old) if refused.old else self.store.read(key)
            if old is None or old.status is Status.QUEUED:
                continue  # it changed under us: look again
            if old.expires_at < self.store.now():  # expired, not yet deleted: counts as absent
                self.store.create(key, {**defaults, "status": Status.QUEUED.value})
                continue
            if not old.live:
                return Claim(Taken.ENDED, old)
            if not old.lease_lapsed(self.store.now_ms()):
                return Claim(Taken.HELD, old)
            try:
                until = self.store.now() + self.kept_seconds
                failed = failed_fields(new.request_id, INTERRUPTED, until)
                return Claim(
                    Taken.TAKEN_OVER, self.store.take_over(key, old.lease_until_ms, failed)
                )
            except ConditionFailed:
                return Claim(Taken.HELD, old)  # another caller took it over, or it was renewed
        raise RuntimeError("the request record kept changing")


def record_fields(new: NewRequest, now: float, ttl_seconds: int) -> dict[str, Any]:
    """What a new record holds, whoever creates it."""
    return {
        "rid": new.request_id,
        **address_item(new.address),
        "slotConnection": new.address.connection_id,
        "owner": new.owner,
        "attach": 0,
        "resumable": new.resumable,
        "keepOpen": new.keep_open,
        "createdAt": int(now * 1000),
        "expiresAt": int(now) + ttl_seconds,
    }


def failed_fields(request_id: str, message: str, resumable_until: int) -> dict[str, Any]:
    """The fields of a request that failed before any frame was kept: a client that resumes it
    gets ``message``."""
    frame = error_frame(request_id, ErrorCode.INTERNAL, message)
    return {"lastSeq": -1, "final": final_json(frame), "resumableUntil": resumable_until}
