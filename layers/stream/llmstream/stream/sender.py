"""Posts one stream's frames in order, one post in flight, batching deltas that arrive meanwhile.

The LLM reader calls ``delta``/``send`` and never waits; a worker thread owns every post. Deltas
that arrive while a post is in flight leave together in the next frame, and delta frames start at
least ``min_interval`` apart, so delivery keeps pace with the LLM whatever the post latency while
the message count stays low (numbers in docs/benchmarks.md).
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..apigw.connection import ConnectionGone, PostFailed, Throttled
from ..core.protocol import ErrorCode, delta_frame, encode, error_frame
from ..core.settings import WEBSOCKET_FRAME_LIMIT
from .signals import Signal

Post = Callable[[bytes], None]

IDLE_PROBE_SECONDS = 5.0
"""After this long with nothing to send (the model is thinking, or stalled), ask whether the
client is still there: a post would have told, but there is nothing to post."""


@dataclass
class SendStats:
    frames: int = 0
    delta_frames: int = 0
    deltas: int = 0
    bytes: int = 0
    throttled: int = 0
    post_errors: int = 0
    first_delta_at: float | None = None
    """Clock time at which the first delta frame was posted."""


def split_text(text: str, request_id: str, seq: int, max_frame_bytes: int) -> list[str]:
    """Cut text into pieces whose delta frames, numbered from ``seq``, fit in max_frame_bytes."""
    pieces: list[str] = []
    while text:
        overhead = len(encode(delta_frame(request_id, seq + len(pieces), "")))
        budget = max_frame_bytes - overhead
        if budget <= 0:
            raise ValueError("max_frame_bytes is too small for a delta frame")
        piece = text.encode("utf-8")[:budget].decode("utf-8", errors="ignore") or text[0]
        # JSON escaping can grow the text; shrink until the encoded frame fits.
        while len(encode(delta_frame(request_id, seq + len(pieces), piece))) > max_frame_bytes:
            piece = piece[: max(1, len(piece) * 3 // 4)]
        pieces.append(piece)
        text = text[len(piece) :]
    return pieces


class FrameSender:
    """One stream's ordered, batched sender. Not reusable across streams."""

    def __init__(
        self,
        post: Post,
        request_id: str,
        *,
        min_interval: float = 0.05,
        max_frame_bytes: int = WEBSOCKET_FRAME_LIMIT,
        max_post_attempts: int = 3,
        throttle_budget: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        probe: Callable[[], None] | None = None,
        probe_after: float = IDLE_PROBE_SECONDS,
    ) -> None:
        """``probe`` raises ConnectionGone when the client has left; it is called after
        ``probe_after`` seconds without a post, and again after each such spell."""
        self._post = post
        self.request_id = request_id
        self._min_interval = min_interval
        self._max_frame_bytes = max_frame_bytes
        self._max_post_attempts = max_post_attempts
        self._throttle_budget = throttle_budget
        self._clock = clock
        self._sleep = sleep
        self._queue: deque[tuple[str, Any]] = deque()
        self._cond = threading.Condition()
        self._closing = False
        self._seq = 0
        self._last_delta_start: float | None = None
        self._gone = Signal()
        self._probe = probe
        self._probe_after = probe_after
        self._last_activity = clock()
        self._failed = threading.Event()
        self.stats = SendStats()
        self._worker = threading.Thread(target=self._run, name=f"sender-{request_id}", daemon=True)
        self._worker.start()

    # ------------------------------------------------------------------ producer side

    @property
    def gone(self) -> bool:
        """The client disconnected; stop producing."""
        return self._gone.is_set()

    def on_gone(self, action: Callable[[], None]) -> contextlib.AbstractContextManager[None]:
        """While the block runs, finding the client gone runs ``action`` (on the sender's
        thread; at once if it is gone already). The stream aborts a stalled model's read."""
        return self._gone.on_set(action)

    @property
    def failed(self) -> bool:
        """Frames could not be delivered; stop producing."""
        return self._failed.is_set()

    @property
    def next_seq(self) -> int:
        return self._seq

    def delta(self, text: str) -> None:
        if not text:
            return
        with self._cond:
            self.stats.deltas += 1
            self._queue.append(("text", text))
            # Only an idle worker needs waking: one holding text for the interval wakes on time.
            if len(self._queue) == 1:
                self._cond.notify()

    def send(self, frame: dict[str, Any]) -> None:
        """Queue a control frame (start, end, error) after everything queued before it."""
        with self._cond:
            self._queue.append(("frame", frame))
            self._cond.notify()

    def close(self, timeout: float | None = None) -> SendStats:
        """Deliver everything queued, then stop the worker."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._worker.join(timeout)
        return self.stats

    # ------------------------------------------------------------------ worker side

    def _run(self) -> None:
        while True:
            work = self._next_work()
            if work is None:
                return
            kind, payload = work
            if kind == "probe":
                if not self._check_alive():
                    self._abandon()
                    return
                continue
            if kind == "frame":
                if not self._deliver(encode(payload)):
                    self._abandon()
                    return
                continue
            # Built outside the lock, so the reader never waits on JSON encoding or splitting.
            pieces = split_text(payload, self.request_id, self._seq, self._max_frame_bytes)
            for piece in pieces:
                data = encode(delta_frame(self.request_id, self._seq, piece))
                self._seq += 1
                self._last_delta_start = self._clock()
                if not self._deliver(data):
                    self._abandon()
                    return
                self.stats.delta_frames += 1
                if self.stats.first_delta_at is None:
                    self.stats.first_delta_at = self._clock()

    def _next_work(self) -> tuple[str, Any] | None:
        """Wait for work: a control frame, or all the text queued before the next control frame.

        Text waits only for the minimum interval since the last delta frame *started*, so a
        post slower than the interval is followed at once by the next frame: frames go out every
        max(post round trip, min_interval), and never faster.
        """
        with self._cond:
            while True:
                if not self._queue:
                    if self._closing:
                        return None
                    due = self._probe_due_in()
                    if due is not None and due <= 0:
                        self._last_activity = self._clock()
                        return "probe", None
                    self._cond.wait(due)
                    continue
                kind, _ = self._queue[0]
                if kind == "frame":
                    return self._queue.popleft()
                wait = self._interval_wait()
                if wait > 0 and not self._closing and self._only_text_queued():
                    self._cond.wait(wait)
                    continue
                text = []
                while self._queue and self._queue[0][0] == "text":
                    text.append(self._queue.popleft()[1])
                return "text", "".join(text)

    def _probe_due_in(self) -> float | None:
        """Seconds until the idle connection is due a probe; None when it never is."""
        if self._probe is None or self._gone.is_set():
            return None
        return self._last_activity + self._probe_after - self._clock()

    def _check_alive(self) -> bool:
        """False when the probe found the client gone (the stream stops, as after a post)."""
        assert self._probe is not None
        try:
            self._probe()
        except ConnectionGone:
            self._gone.set()
            return False
        except Exception:  # unknown: the next post, or the next probe, will tell
            pass
        return True

    def _only_text_queued(self) -> bool:
        return all(kind == "text" for kind, _ in self._queue)

    def _interval_wait(self) -> float:
        if self._last_delta_start is None or self._min_interval <= 0:
            return 0.0
        return self._last_delta_start + self._min_interval - self._clock()

    def _deliver(self, data: bytes) -> bool:
        """Post one frame, retrying throttles in place; False when the stream must stop."""
        attempts = 0
        throttled_since: float | None = None
        backoff = 0.05
        while True:
            try:
                self._post(data)
                self.stats.frames += 1
                self.stats.bytes += len(data)
                self._last_activity = self._clock()
                return True
            except ConnectionGone:
                self._gone.set()
                return False
            except Throttled:
                self.stats.throttled += 1
                now = self._clock()
                throttled_since = throttled_since if throttled_since is not None else now
                if now - throttled_since > self._throttle_budget:
                    self._fail("API Gateway kept throttling the connection")
                    return False
            except PostFailed:
                self.stats.post_errors += 1
                attempts += 1
                if attempts >= self._max_post_attempts:
                    self._fail("part of the answer could not be delivered")
                    return False
            self._sleep(random.uniform(backoff / 2, backoff))
            backoff = min(backoff * 2, 1.0)

    def _fail(self, reason: str) -> None:
        """Tell the client (best effort), then stop."""
        self._failed.set()
        # The client may be unreachable too; the outcome is already recorded.
        with contextlib.suppress(Exception):
            self._post(encode(error_frame(self.request_id, ErrorCode.INTERNAL, reason)))

    def _abandon(self) -> None:
        with self._cond:
            self._queue.clear()
