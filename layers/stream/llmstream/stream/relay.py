"""Delivers one request's frames to whichever connection holds the request now.

The frame sender posts through ``Relay.post``. A resumable answer's frames are remembered, and
when its client drops, the answer keeps streaming for a grace period: a client that resumes on a
new connection gets the frames after the last seq it received, then the rest live, with nothing
missing and nothing twice. The watcher (``watcher.py``) tells the relay when the client resumes
elsewhere.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from ..apigw.connection import Connection, ConnectionGone, Delivery, post_with_retry
from ..core.observability import logger
from ..core.protocol import TEXT_FRAMES, Encoded, encode
from ..core.transport import DIALECT, ChunkEncoder


class Relay:
    """The ``post`` of one stream's FrameSender, in front of the client's current connection."""

    def __init__(
        self,
        conn: Connection,
        request_id: str,
        *,
        resumable: bool = False,
        grace: float = 30.0,
        dialect: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.current = conn
        self.request_id = request_id
        self.resumable = resumable
        self.dialect = dialect
        # To the AI SDK's transport, our frames go as its chunks (core.transport).
        self._encoder = ChunkEncoder(request_id) if dialect == DIALECT else None
        self.start: dict[str, Any] | None = None  # a transport resume replays it too
        self._grace = grace
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.RLock()
        self.texts: list[str] = []
        """Texts by seq (deltas and reasoning: one seq space), kept for a resumable answer."""
        self.kinds: list[str] = []
        """Each kept text's frame type: ``delta`` or ``reasoning``."""
        self.final: dict[str, Any] | None = None
        """The answer's last frame (end or error), once posted."""
        self._delivered = -1  # the last delta seq the current connection has
        self._final_delivered = False
        self._detached_at: float | None = None
        self.abandoned = False
        """Nobody resumed the answer within the grace period: it was stopped."""

    @property
    def detached(self) -> bool:
        """The client left a resumable answer, which goes on for a resume to pick it up."""
        return self._detached_at is not None

    def post(self, data: bytes) -> None:
        """Deliver one frame (the sender retries on Throttled and PostFailed, and stops on
        ConnectionGone, which a resumable answer raises only once its grace period is over)."""
        # Frames arrive typed (protocol.Encoded): read, never decoded again. Plain bytes come
        # only from callers outside the sender, and are decoded for them.
        frame = data.frame if isinstance(data, Encoded) else json.loads(data)
        kind = frame.get("type")
        with self._lock:
            if kind in TEXT_FRAMES:
                seq = frame["seq"]
                if self.resumable and seq == len(self.texts):
                    self.texts.append(frame["text"])
                    self.kinds.append(kind)
                if seq <= self._delivered:
                    return  # replayed to this connection already
            elif kind == "start" and self.start is None:
                self.start = dict(frame)
            elif kind in ("end", "error"):
                if self.final is None:
                    self.final = dict(frame)
                if self._final_delivered:
                    return
            if self._detached_at is not None:
                if self._clock() - self._detached_at < self._grace:
                    return  # kept for a resume
                self.abandoned = True
                raise ConnectionGone("nobody resumed the answer")
            try:
                self._deliver(frame, data)
            except ConnectionGone:
                if not self.resumable:
                    raise
                logger.info("the client left a resumable answer: waiting for a resume")
                self._detached_at = self._clock()
                return
            if kind in TEXT_FRAMES:
                self._delivered = frame["seq"]
            elif kind in ("end", "error"):
                self._final_delivered = True

    def probe(self) -> None:
        """The sender's idle check, as ``post`` would find it: raises ConnectionGone when the
        client left (for a resumable answer: once its grace period is over)."""
        with self._lock:
            if self._detached_at is None:
                if self.current.alive():
                    return
                if not self.resumable:
                    raise ConnectionGone("the client left")
                logger.info("the client left a resumable answer: waiting for a resume")
                self._detached_at = self._clock()
            if self._clock() - self._detached_at >= self._grace:
                self.abandoned = True
                raise ConnectionGone("nobody resumed the answer")

    def switch(self, conn: Connection, after_seq: int, request_id: str | None = None) -> None:
        """Move the answer to ``conn``: replay the texts after ``after_seq`` (and the last frame,
        if the answer is over), then go on live there. The sender waits meanwhile. A transport
        client resumes under a new ``request_id``, and gets the whole answer from its start."""
        with self._lock:
            self.current = conn
            self._detached_at = None
            self._delivered = after_seq
            self._final_delivered = False
            if self._encoder is not None:
                self._encoder = ChunkEncoder(request_id or self._encoder.request_id)
                self._delivered = -1
                if self.start is not None and not self._replay(encode(self.start)):
                    return
            for seq in range(self._delivered + 1, len(self.texts)):
                frame = TEXT_FRAMES[self.kinds[seq]](self.request_id, seq, self.texts[seq])
                if not self._replay(encode(frame)):
                    return
                self._delivered = seq
            if self.final is not None and len(self.texts) - 1 <= self._delivered:
                if not self._replay(encode(self.final)):
                    return
                self._final_delivered = True
            logger.info("resumed on a new connection", extra={"after_seq": after_seq})

    def _deliver(self, frame: Mapping[str, Any], data: bytes) -> None:
        """Post one frame as it is, or, to a transport client, as its chunks. A chunk that
        cannot be delivered counts as the client gone (it resumes): retrying one frame's chunks
        from the sender would number them twice."""
        if self._encoder is None:
            self.current.post(data)
            return
        for piece in self._encoder.encode(frame):
            delivery = post_with_retry(
                self.current.post, piece, clock=self._clock, sleep=self._sleep
            )
            if delivery is not Delivery.SENT:
                raise ConnectionGone(f"a chunk was not delivered ({delivery.value})")

    def _replay(self, data: Encoded) -> bool:
        try:
            if self._encoder is None:
                delivery = post_with_retry(
                    self.current.post, data, clock=self._clock, sleep=self._sleep
                )
                if delivery is not Delivery.SENT:
                    raise ConnectionGone(delivery.value)
            else:
                self._deliver(data.frame, data)
            return True
        except ConnectionGone:
            self._detached_at = self._clock()  # gone again: wait for the next resume
            return False
