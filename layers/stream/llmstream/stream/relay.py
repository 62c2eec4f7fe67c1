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
from collections.abc import Callable
from typing import Any

from ..apigw.connection import Connection, ConnectionGone, Delivery, post_with_retry
from ..core.observability import logger
from ..core.protocol import Encoded, delta_frame, encode


class Relay:
    """The ``post`` of one stream's FrameSender, in front of the client's current connection."""

    def __init__(
        self,
        conn: Connection,
        request_id: str,
        *,
        resumable: bool = False,
        grace: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.current = conn
        self.request_id = request_id
        self.resumable = resumable
        self._grace = grace
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.RLock()
        self.texts: list[str] = []
        """Delta texts by seq, kept for a resumable answer."""
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
            if kind == "delta":
                seq = frame["seq"]
                if self.resumable and seq == len(self.texts):
                    self.texts.append(frame["text"])
                if seq <= self._delivered:
                    return  # replayed to this connection already
            elif kind in ("end", "error"):
                if self.final is None:
                    self.final = frame
                if self._final_delivered:
                    return
            if self._detached_at is not None:
                if self._clock() - self._detached_at < self._grace:
                    return  # kept for a resume
                self.abandoned = True
                raise ConnectionGone("nobody resumed the answer")
            try:
                self.current.post(data)
            except ConnectionGone:
                if not self.resumable:
                    raise
                logger.info("the client left a resumable answer: waiting for a resume")
                self._detached_at = self._clock()
                return
            if kind == "delta":
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

    def switch(self, conn: Connection, after_seq: int) -> None:
        """Move the answer to ``conn``: replay the deltas after ``after_seq`` (and the last frame,
        if the answer is over), then go on live there. The sender waits meanwhile."""
        with self._lock:
            self.current = conn
            self._detached_at = None
            self._delivered = after_seq
            self._final_delivered = False
            for seq in range(after_seq + 1, len(self.texts)):
                if not self._replay(encode(delta_frame(self.request_id, seq, self.texts[seq]))):
                    return
                self._delivered = seq
            if self.final is not None and len(self.texts) - 1 <= self._delivered:
                if not self._replay(encode(self.final)):
                    return
                self._final_delivered = True
            logger.info("resumed on a new connection", extra={"after_seq": after_seq})

    def _replay(self, data: bytes) -> bool:
        delivery = post_with_retry(self.current.post, data, clock=self._clock, sleep=self._sleep)
        if delivery is Delivery.SENT:
            return True
        self._detached_at = self._clock()  # gone again: wait for the next resume
        return False
