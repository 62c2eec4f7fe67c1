"""Posts one stream's frames in order, one post in flight, batching deltas that arrive meanwhile.

The LLM reader calls ``delta``/``send`` and never waits; a worker thread owns every post. Deltas
that arrive while a post is in flight leave together in the next frame, and delta frames start at
least ``min_interval`` apart, so delivery keeps pace with the LLM whatever the post latency while
the message count stays low (numbers in docs/benchmarks.md).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..apigw.connection import (
    ConnectionGone,
    Delivery,
    RetryPolicy,
    Throttled,
    post_with_retry,
)
from ..core.protocol import TEXT_FRAMES, ErrorCode, delta_frame, encode, error_frame
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


def split_text(
    text: str, request_id: str, seq: int, max_frame_bytes: int, frame: Any = delta_frame
) -> list[str]:
    """Cut text into pieces whose frames (``frame``: delta, or reasoning), numbered from
    ``seq``, fit in max_frame_bytes."""
    pieces: list[str] = []
    while text:
        overhead = len(encode(frame(request_id, seq + len(pieces), "")))
        budget = max_frame_bytes - overhead
        if budget <= 0:
            raise ValueError("max_frame_bytes is too small for a delta frame")
        piece = text.encode("utf-8")[:budget].decode("utf-8", errors="ignore") or text[0]
        # JSON escaping can grow the text; shrink until the encoded frame fits.
        while len(encode(frame(request_id, seq + len(pieces), piece))) > max_frame_bytes:
            piece = piece[: max(1, len(piece) * 3 // 4)]
        pieces.append(piece)
        text = text[len(piece) :]
    return pieces


class Outbox:
    """What the reader queued and the worker has yet to post, and when the worker may take it.

    Text waits only for the minimum interval since the last delta frame *started*, so a post
    slower than the interval is followed at once by the next frame: frames go out every
    max(post round trip, min_interval), and never faster. With nothing queued for
    ``probe_after`` seconds, the worker is told to probe the connection.
    """

    def __init__(self, min_interval: float, probe_after: float | None, clock: Callable[[], float]):
        self._queue: deque[tuple[str, Any]] = deque()
        self._cond = threading.Condition()
        self._closing = False
        self._min_interval = min_interval
        self._probe_after = probe_after
        self._clock = clock
        self.last_delta_start: float | None = None
        self.last_activity = clock()

    def put(self, kind: str, payload: Any) -> None:
        with self._cond:
            self._queue.append((kind, payload))
            # Only an idle worker needs waking: one holding text for the interval wakes on time.
            if kind == "frame" or len(self._queue) == 1:
                self._cond.notify()

    def close(self) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify()

    def clear(self) -> None:
        with self._cond:
            self._queue.clear()

    def stop_probing(self) -> None:
        self._probe_after = None

    def take(self) -> tuple[str, Any] | None:
        """Wait for work: a control frame, all the text queued before the next control frame,
        or a probe; None once closed and empty."""
        with self._cond:
            while True:
                if not self._queue:
                    if self._closing:
                        return None
                    due = self._probe_due_in()
                    if due is not None and due <= 0:
                        self.last_activity = self._clock()
                        return "probe", None
                    self._cond.wait(due)
                    continue
                kind = self._queue[0][0]
                if kind == "frame":
                    return self._queue.popleft()
                wait = self._interval_wait()
                if wait > 0 and not self._closing and all(k != "frame" for k, _ in self._queue):
                    self._cond.wait(wait)
                    continue
                text = []  # a run of one kind: answer text and reasoning never share a frame
                while self._queue and self._queue[0][0] == kind:
                    text.append(self._queue.popleft()[1])
                return kind, "".join(text)

    def _probe_due_in(self) -> float | None:
        """Seconds until the idle connection is due a probe; None when it never is."""
        if self._probe_after is None:
            return None
        return self.last_activity + self._probe_after - self._clock()

    def _interval_wait(self) -> float:
        if self.last_delta_start is None or self._min_interval <= 0:
            return 0.0
        return self.last_delta_start + self._min_interval - self._clock()


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
        self._max_frame_bytes = max_frame_bytes
        self._policy = RetryPolicy(throttle_budget=throttle_budget, max_attempts=max_post_attempts)
        self._clock = clock
        self._sleep = sleep
        self._outbox = Outbox(min_interval, probe_after if probe else None, clock)
        self._seq = 0
        self._gone = Signal()
        self._probe = probe
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
        """While the block runs, a client found gone runs ``action`` (at once if gone already)."""
        return self._gone.on_set(action)

    @property
    def failed(self) -> bool:
        """Frames could not be delivered; stop producing."""
        return self._failed.is_set()

    def delta(self, text: str) -> None:
        if text:
            self.stats.deltas += 1
            self._outbox.put("delta", text)

    def reasoning(self, text: str) -> None:
        """The model's reasoning: batched like answer text, in its own frames."""
        if text:
            self._outbox.put("reasoning", text)

    def send(self, frame: dict[str, Any]) -> None:
        """Queue a control frame (start, end, error) after everything queued before it."""
        self._outbox.put("frame", frame)

    def close(self, timeout: float | None = None) -> SendStats:
        """Deliver everything queued, then stop the worker."""
        self._outbox.close()
        self._worker.join(timeout)
        return self.stats

    # ------------------------------------------------------------------ worker side

    def _run(self) -> None:
        while (work := self._outbox.take()) is not None:
            kind, payload = work
            if kind == "probe":
                delivered = self._check_alive()
            elif kind == "frame":
                delivered = self._deliver(encode(payload))
            else:
                delivered = self._deliver_text(payload, TEXT_FRAMES[kind])
            if not delivered:
                self._outbox.clear()
                return

    def _deliver_text(self, text: str, frame: Any) -> bool:
        # Built outside the outbox's lock, so the reader never waits on encoding or splitting.
        for piece in split_text(text, self.request_id, self._seq, self._max_frame_bytes, frame):
            data = encode(frame(self.request_id, self._seq, piece))
            self._seq += 1
            self._outbox.last_delta_start = self._clock()
            if not self._deliver(data):
                return False
            self.stats.delta_frames += 1
            if self.stats.first_delta_at is None:
                self.stats.first_delta_at = self._clock()
        return True

    def _check_alive(self) -> bool:
        """False when the probe found the client gone (the stream stops, as after a post)."""
        assert self._probe is not None
        try:
            self._probe()
        except ConnectionGone:
            self._gone.set()
            self._outbox.stop_probing()
            return False
        except Exception:  # unknown: the next post, or the next probe, will tell
            pass
        return True

    def _deliver(self, data: bytes) -> bool:
        """Post one frame under the retry policy; False when the stream must stop."""

        def count(exc: Exception) -> None:
            if isinstance(exc, Throttled):
                self.stats.throttled += 1
            else:
                self.stats.post_errors += 1

        delivery = post_with_retry(
            self._post,
            data,
            policy=self._policy,
            clock=self._clock,
            sleep=self._sleep,
            on_retry=count,
        )
        if delivery is Delivery.SENT:
            self.stats.frames += 1
            self.stats.bytes += len(data)
            self._outbox.last_activity = self._clock()
            return True
        if delivery is Delivery.GONE:
            self._gone.set()
            self._outbox.stop_probing()
        elif delivery is Delivery.THROTTLED:
            self._fail("API Gateway kept throttling the connection")
        else:
            self._fail("part of the answer could not be delivered")
        return False

    def _fail(self, reason: str) -> None:
        """Tell the client (best effort), then stop."""
        self._failed.set()
        # The client may be unreachable too; the outcome is already recorded.
        with contextlib.suppress(Exception):
            self._post(encode(error_frame(self.request_id, ErrorCode.INTERNAL, reason)))
