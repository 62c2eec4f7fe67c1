"""Delivers one request's frames to whichever connection holds the request now.

The frame sender posts through ``Relay.post``. A resumable answer's frames are remembered, and
when its client drops, the answer keeps streaming for a grace period: a client that resumes on a
new connection gets the frames after the last seq it received, then the rest live, with nothing
missing and nothing twice. ``Watcher`` reads the request's control item a few times a second and
tells the relay when the client cancels or resumes elsewhere.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable
from typing import Any

from ..apigw.connection import Connection, ConnectionGone, PostFailed, Throttled
from ..core.observability import logger
from ..core.protocol import delta_frame, encode
from ..requests.record import (
    LEASE_SECONDS,
    RENEW_EVERY_SECONDS,
    ControlState,
    RequestControl,
    Target,
)
from .signals import Signal

THROTTLE_BUDGET_SECONDS = 10.0
MAX_POST_ATTEMPTS = 3


def post_with_retry(
    conn: Connection,
    data: bytes,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> bool:
    """Post one frame, retrying throttles and errors a little; False when it cannot be delivered
    (the client is gone, or the connection keeps failing)."""
    attempts, backoff, started = 0, 0.05, clock()
    while True:
        try:
            conn.post(data)
            return True
        except ConnectionGone:
            return False
        except Throttled:
            if clock() - started > THROTTLE_BUDGET_SECONDS:
                return False
        except PostFailed:
            attempts += 1
            if attempts >= MAX_POST_ATTEMPTS:
                return False
        sleep(random.uniform(backoff / 2, backoff))
        backoff = min(backoff * 2, 1.0)


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
        frame = json.loads(data)
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
        if post_with_retry(self.current, data, clock=self._clock, sleep=self._sleep):
            return True
        self._detached_at = self._clock()  # gone again: wait for the next resume
        return False


class Watcher:
    """Reads the control item every ``interval`` while the answer streams (renewing its lease
    every RENEW_EVERY_SECONDS instead), and acts on a cancel or a resume."""

    def __init__(
        self,
        control: RequestControl,
        key: str,
        relay: Relay,
        connect: Callable[[Target], Connection],
        *,
        attach: int,
        interval: float,
        cancelled: Signal,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.control = control
        self.key = key
        self.relay = relay
        self.connect = connect
        self.attach = attach
        self.interval = interval
        self.cancelled = cancelled
        self._clock = clock
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"watch-{key}", daemon=True)

    def __enter__(self) -> Watcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        renewed = self._clock()
        while not self._stop.wait(self.interval):
            try:
                if self._clock() - renewed >= RENEW_EVERY_SECONDS:
                    state = self.control.renew(self.key, lease=LEASE_SECONDS)
                    renewed = self._clock()
                else:
                    state = self.control.poll(self.key)
                self.apply(state)
            except Exception:  # a missed poll is survivable: the next one comes soon
                logger.warning("could not read the request's control item", exc_info=True)

    def apply(self, state: ControlState | None) -> None:
        """Act on what the control item says: a cancel, or a client that resumed elsewhere."""
        if state is None:
            return
        if state.cancel_requested and not self.cancelled.is_set():
            logger.info("the client cancelled the answer")
            self.cancelled.set()
        if state.attach > self.attach:
            self.attach = state.attach
            if not self.relay.resumable:
                return
            try:
                conn = self.connect(state.target)
            except ValueError:
                logger.warning("ignoring a resume to an invalid endpoint")
                return
            self.relay.switch(conn, state.after_seq)
