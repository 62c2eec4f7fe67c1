"""The one record of a request: where its frames go, how it stands, and who holds it.

One item per request in the frames table (``seq`` = -1), keyed by ``owner_key``. The message
handler registers it (queued). The stream function claims it (streaming, under a lease that its
heartbeat renews), so a duplicate SNS or Lambda delivery finds it held or ended and streams
nothing. Cancel and resume change it while it streams; the stream function settles it; the
dead-letter function reads it to learn whether the client was told, and closes it out.

Keys are scoped to their owner, because request ids are chosen by clients: with auth on, one
principal can never reach another's requests; with auth off, an unguessable request id is what
lets a client cancel or resume its answer (docs/sessions.md).
"""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Any, NamedTuple

from ..core.envelope import Address

RECORD_SEQ = -1
"""The record's sort key; a resumable answer's stored frames follow it (seq >= 0)."""
LEASE_SECONDS = 30
"""A streaming request whose lease is older than this belongs to an invocation that died
(STREAM_LEASE_SECONDS). Lambda's first retry of a failed invocation comes a minute later, so a
retry always finds the lease of a crash expired. The heartbeat renews it three times a lease."""


class Status(StrEnum):
    """How a request stands: queued or streaming while it lives, then how it ended."""

    QUEUED = "queued"
    STREAMING = "streaming"
    COMPLETED = "completed"
    CANCELLED = "cancelled"
    """The client cancelled; it got ``end`` with ``finishReason: "cancelled"``."""
    GONE = "client_gone"
    """The client left: the answer stopped, or (resumable) nobody resumed it in time."""
    LLM_ERROR = "llm_error"
    TIMEOUT = "timeout"
    DELIVERY_FAILED = "delivery_failed"
    FAILED = "failed"
    """A bug or an outage on our side; the client got an ``internal`` error frame. A later
    delivery of the same request fails again, so that its event ends in the dead-letter queue."""

    @property
    def live(self) -> bool:
        return self in (Status.QUEUED, Status.STREAMING)


def item_key(key: str, seq: int = RECORD_SEQ) -> dict[str, Any]:
    """The frames table's key of ``key``'s item ``seq``: its record (-1), a pointer beside it
    (requests.chats) or a run of its stored frames (0 and up)."""
    return {"requestId": key, "seq": seq}


def owner_key(principal_id: str | None, name: str) -> str:
    """``name`` (a request or conversation id, which never holds '#') in its owner's space."""
    return f"p:{principal_id}#{name}" if principal_id else f"anon#{name}"


# A NamedTuple, not a dataclass: the message handler's cold start (docs/architecture.md).
class Request(NamedTuple):
    """A request's record as read."""

    request_id: str
    status: Status
    address: Address
    """The connection its client is on now (a resume moves it)."""
    owner: str | None = None
    attach: int = 0
    """How many times a client has resumed the request; each resume adds one."""
    after_seq: int = -1
    """The last seq the client that resumed last had received."""
    cancel_requested: bool = False
    resumable: bool = False
    keep_open: bool = False
    lease_until_ms: int = 0
    expires_at: int = 0
    """The record's TTL: as long as a duplicate delivery of its prompt could still come."""
    resumable_until: int = 0
    """Once the answer is over, how long a client may still resume it (RESUME_TTL_SECONDS)."""
    last_seq: int = -1
    final: dict[str, Any] | None = None
    """The answer's last frame (``end`` or ``error``), kept once a resumable answer is over."""
    replayed: int = 0
    """The last attach whose replay a stream function took on."""
    slot_connection: str = ""
    """The connection whose stream slot the request holds (where it was sent from)."""
    alias: str | None = None
    """The requestId a transport client resumed it under: its frames carry that id now."""
    pending_cancel: bool = False
    """A cancel that came before its request was registered holds the key."""

    @property
    def live(self) -> bool:
        return self.status.live

    def lease_lapsed(self, now_ms: int) -> bool:
        return self.status is Status.STREAMING and self.lease_until_ms < now_ms

    @classmethod
    def from_item(cls, item: dict[str, Any]) -> Request:
        final = item.get("final")
        return cls(
            request_id=item.get("rid", ""),
            status=Status(item.get("status", Status.FAILED.value)),
            address=Address(
                item.get("connectionId", ""), item.get("domainName", ""), item.get("stage", "")
            ),
            owner=item.get("owner"),
            attach=item.get("attach", 0),
            after_seq=item.get("afterSeq", -1),
            cancel_requested=bool(item.get("cancelRequested", False)),
            resumable=bool(item.get("resumable", False)),
            keep_open=bool(item.get("keepOpen", False)),
            lease_until_ms=item.get("leaseUntil", 0),
            expires_at=item.get("expiresAt", 0),
            resumable_until=item.get("resumableUntil", 0),
            last_seq=item.get("lastSeq", -1),
            final=json.loads(final) if final else None,
            replayed=item.get("replayed", 0),
            slot_connection=item.get("slotConnection", ""),
            alias=item.get("alias"),
            pending_cancel=bool(item.get("pendingCancel", False)),
        )


def address_item(address: Address) -> dict[str, str]:
    return {
        "connectionId": address.connection_id,
        "domainName": address.domain_name,
        "stage": address.stage,
    }
