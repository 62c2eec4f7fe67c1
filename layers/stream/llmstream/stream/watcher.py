"""Watches a streaming request's record: renews its one lease (the heartbeat that tells a live
invocation from a dead one), and acts on a cancel or on a client that resumed elsewhere.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from ..apigw.connection import Connection
from ..core.envelope import Address
from ..core.observability import logger
from ..requests.lifecycle import Requests
from ..requests.record import Request
from .relay import Relay
from .signals import Signal


class Watcher:
    """Reads the record every ``interval`` while the answer streams (renewing its lease three
    times a lease instead, which reads it too), and acts on a cancel or a resume."""

    def __init__(
        self,
        requests: Requests,
        key: str,
        relay: Relay,
        connect: Callable[[Address], Connection],
        *,
        attach: int,
        interval: float,
        cancelled: Signal,
        renew_every: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.requests = requests
        self.key = key
        self.relay = relay
        self.connect = connect
        self.attach = attach
        self.interval = interval
        self.renew_every = requests.lease / 3 if renew_every is None else renew_every
        """Three renewals a lease by default, so that one missed renewal is survived."""
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
        while not self._stop.wait(min(self.interval, self.renew_every)):
            try:
                if self._clock() - renewed >= self.renew_every:
                    state = self.requests.renew(self.key)
                    renewed = self._clock()
                else:
                    state = self.requests.poll(self.key)
                self.apply(state)
            except Exception:  # a missed poll is survivable; a missed renewal too, once
                logger.warning("could not read the request's record", exc_info=True)

    def apply(self, state: Request | None) -> None:
        """Act on what the record says: a cancel, or a client that resumed elsewhere."""
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
                conn = self.connect(state.address)
            except ValueError:
                logger.warning("ignoring a resume to an invalid endpoint")
                return
            self.relay.switch(conn, state.after_seq, state.alias)
