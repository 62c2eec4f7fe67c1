"""The batching sender: order, gapless seq, frame size, one post in flight, and post faults."""

from __future__ import annotations

import json
import threading
import time

import pytest
from llmstream.apigw.connection import ConnectionGone, PostFailed, Throttled
from llmstream.core.protocol import start_frame
from llmstream.stream.sender import FrameSender, split_text


class Recorder:
    """A post function that records frames, can be slow, and can fail on chosen calls."""

    def __init__(self, delay: float = 0.0, failures: dict[int, Exception] | None = None):
        self.delay = delay
        self.failures = failures or {}
        self.frames: list[dict] = []
        self.raw: list[bytes] = []
        self.calls = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.lock = threading.Lock()
        self.posted = threading.Condition(self.lock)

    def __call__(self, data: bytes) -> None:
        with self.lock:
            self.calls += 1
            call = self.calls
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.delay:
                time.sleep(self.delay)
            if call in self.failures:
                raise self.failures[call]
            with self.lock:
                self.raw.append(data)
                self.frames.append(json.loads(data))
                self.posted.notify_all()
        finally:
            with self.lock:
                self.in_flight -= 1

    def wait_for_frames(self, n: int, timeout: float = 5.0) -> None:
        with self.posted:
            assert self.posted.wait_for(lambda: len(self.frames) >= n, timeout)

    def deltas(self) -> list[dict]:
        return [f for f in self.frames if f["type"] == "delta"]


def no_sleep(_seconds: float) -> None:
    pass


def test_all_text_arrives_in_order_with_gapless_seq_and_fewer_frames_than_deltas():
    post = Recorder(delay=0.01)
    sender = FrameSender(post, "r1", min_interval=0)
    sender.send(start_frame("r1", "m"))
    tokens = [f"t{i} " for i in range(200)]
    for token in tokens:
        sender.delta(token)
    stats = sender.close()
    deltas = post.deltas()
    assert "".join(d["text"] for d in deltas) == "".join(tokens)
    assert [d["seq"] for d in deltas] == list(range(len(deltas)))
    assert post.frames[0]["type"] == "start"
    assert len(deltas) < len(tokens) / 4, "deltas queued during a slow post must share a frame"
    assert stats.deltas == 200 and stats.delta_frames == len(deltas)


def test_at_most_one_post_is_in_flight():
    post = Recorder(delay=0.002)
    sender = FrameSender(post, "r1", min_interval=0)
    for i in range(100):
        sender.delta(f"t{i} ")
    sender.close()
    assert post.max_in_flight == 1


def test_the_first_delta_goes_out_at_once_and_later_ones_wait_for_the_minimum_interval():
    post = Recorder()
    sender = FrameSender(post, "r1", min_interval=60.0)
    sender.delta("a")
    post.wait_for_frames(1)  # would time out if the first delta waited for the interval
    sender.delta("b")
    sender.delta("c")
    sender.close()  # closing flushes what the interval held back, in one frame
    assert [d["text"] for d in post.deltas()] == ["a", "bc"]


def test_a_control_frame_flushes_held_text_before_it():
    post = Recorder()
    sender = FrameSender(post, "r1", min_interval=60.0)
    sender.delta("a")
    post.wait_for_frames(1)
    sender.delta("b")
    sender.send({"type": "end", "requestId": "r1"})
    post.wait_for_frames(3)
    assert [f.get("text", f["type"]) for f in post.frames] == ["a", "b", "end"]
    sender.close()


@pytest.mark.parametrize("char", ["x", "é", "😀", '"', "\n", "\x01"])
def test_no_frame_exceeds_the_frame_limit_and_split_text_reassembles_exactly(char):
    post = Recorder()
    sender = FrameSender(post, "r1", min_interval=0, max_frame_bytes=1024)
    text = char * 5000
    sender.delta(text)
    sender.close()
    assert all(len(raw) <= 1024 for raw in post.raw)
    assert "".join(d["text"] for d in post.deltas()) == text
    assert [d["seq"] for d in post.deltas()] == list(range(len(post.deltas())))


def test_a_100_kb_answer_is_never_posted_as_one_32_kb_frame():
    post = Recorder()
    sender = FrameSender(post, "r1", min_interval=0)
    sender.delta("y" * 100_000)
    sender.close()
    assert len(post.deltas()) >= 4
    assert max(len(raw) for raw in post.raw) <= 32 * 1024


def test_split_text_numbers_each_piece_for_its_own_seq():
    pieces = split_text("z" * 300, "r", 8, 120)
    assert "".join(pieces) == "z" * 300 and len(pieces) > 2


def test_a_gone_connection_stops_all_posting():
    post = Recorder(failures={2: ConnectionGone()})
    sender = FrameSender(post, "r1", min_interval=0)
    sender.send(start_frame("r1", "m"))
    post.wait_for_frames(1)
    sender.delta("lost")
    sender.close()
    assert sender.gone
    assert post.calls == 2 and [f["type"] for f in post.frames] == ["start"]


def test_throttled_posts_are_retried_without_loss_duplication_or_reordering():
    post = Recorder(failures={2: Throttled(), 3: Throttled(), 5: Throttled()})
    sender = FrameSender(post, "r1", min_interval=0, sleep=no_sleep)
    tokens = [f"t{i} " for i in range(50)]
    for token in tokens:
        sender.delta(token)
        time.sleep(0.0005)
    stats = sender.close()
    deltas = post.deltas()
    assert "".join(d["text"] for d in deltas) == "".join(tokens)
    assert [d["seq"] for d in deltas] == list(range(len(deltas)))
    assert stats.throttled == 3 and not sender.failed


def test_an_unexpected_post_error_is_retried_a_bounded_number_of_times_then_reported():
    post = Recorder(failures={1: PostFailed("x"), 2: PostFailed("x"), 3: PostFailed("x")})
    sender = FrameSender(post, "r1", min_interval=0, max_post_attempts=3, sleep=no_sleep)
    sender.delta("hello")
    sender.close()
    assert sender.failed
    assert post.frames == [
        {
            "type": "error",
            "requestId": "r1",
            "code": "internal",
            "message": "part of the answer could not be delivered",
        }
    ]


def test_a_transient_post_error_is_retried_and_nothing_is_lost():
    post = Recorder(failures={1: PostFailed("x")})
    sender = FrameSender(post, "r1", min_interval=0, sleep=no_sleep)
    sender.delta("hello")
    sender.close()
    assert not sender.failed and [d["text"] for d in post.deltas()] == ["hello"]


class TimedRecorder(Recorder):
    """Also records when each post started."""

    def __init__(self, delay: float = 0.0):
        super().__init__(delay)
        self.started: list[float] = []

    def __call__(self, data: bytes) -> None:
        self.started.append(time.monotonic())
        super().__call__(data)


def feed(sender: FrameSender, seconds: float, every: float = 0.002) -> list[str]:
    """Deltas at a steady pace for ``seconds``, like a fast model; returns what was sent."""
    tokens, end = [], time.monotonic() + seconds
    while time.monotonic() < end:
        tokens.append(f"t{len(tokens)} ")
        sender.delta(tokens[-1])
        time.sleep(every)
    return tokens


def test_delta_frames_start_at_least_the_minimum_interval_apart():
    post = TimedRecorder()
    sender = FrameSender(post, "r1", min_interval=0.04)
    tokens = feed(sender, 0.5)
    sender.close()
    gaps = [b - a for a, b in zip(post.started, post.started[1:], strict=False)]
    # The final flush at close may come sooner; every other frame waits for the interval.
    assert min(gaps[:-1]) > 0.03, "without the interval they would be ~2 ms apart"
    assert "".join(d["text"] for d in post.deltas()) == "".join(tokens)


class FakeClock:
    """A clock that moves only when told: here, by the length of each simulated post."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_post_slower_than_the_interval_is_followed_at_once_not_after_a_further_interval():
    clock = FakeClock()
    post = Recorder()
    started: list[float] = []

    def fifty_ms_post(data: bytes) -> None:
        started.append(clock.now)
        post(data)
        clock.now += 0.05  # the post takes 50 ms, longer than the 40 ms interval

    sender = FrameSender(fifty_ms_post, "r1", min_interval=0.04, clock=clock)
    sender.delta("a")
    post.wait_for_frames(1)
    sender.delta("b")
    # The interval runs from the previous post's start (0 ms), so at 50 ms "b" is already due.
    # Counting from the post's end would hold it until 90 ms, a time this clock never reaches.
    post.wait_for_frames(2)
    sender.close()
    assert [d["text"] for d in post.deltas()] == ["a", "b"]
    assert started == [0.0, 0.05]


def test_text_is_held_until_the_interval_since_the_last_post_started_has_passed():
    clock = FakeClock()
    post = Recorder()
    sender = FrameSender(post, "r1", min_interval=0.04, clock=clock)
    sender.delta("a")
    post.wait_for_frames(1)
    clock.now = 0.039
    sender.delta("b")
    with post.posted:
        assert not post.posted.wait_for(lambda: len(post.frames) > 1, 0.2), "sent too early"
    clock.now = 0.04
    post.wait_for_frames(2)  # the sender re-checks its clock within the remaining interval
    sender.close()
    assert [d["text"] for d in post.deltas()] == ["a", "b"]


def test_the_reader_never_waits_for_a_slow_post():
    gate, in_flight = threading.Event(), threading.Event()
    post = Recorder()

    def stuck_post(data: bytes) -> None:
        in_flight.set()
        assert gate.wait(10), "the test never released the post"
        post(data)

    sender = FrameSender(stuck_post, "r1", min_interval=0)
    sender.send(start_frame("r1", "m"))
    assert in_flight.wait(5)
    reader = threading.Thread(target=lambda: [sender.delta(f"t{i} ") for i in range(500)])
    reader.start()
    reader.join(5)
    assert not reader.is_alive(), "delta() blocked behind the post in flight"
    assert post.frames == [], "the start frame's post is still in flight"
    gate.set()
    sender.close()
    # Everything the reader queued during the stuck post leaves together in one frame.
    assert [d["text"] for d in post.deltas()] == ["".join(f"t{i} " for i in range(500))]


def test_text_held_while_throttled_follows_the_retried_frame_in_order():
    post = Recorder(failures={2: Throttled(), 3: Throttled()}, delay=0.01)
    sender = FrameSender(post, "r1", min_interval=0)
    sender.send(start_frame("r1", "m"))
    post.wait_for_frames(1)
    sender.delta("first ")
    for i in range(20):
        sender.delta(f"t{i} ")
    sender.send({"type": "end", "requestId": "r1"})
    stats = sender.close()
    texts = [d["text"] for d in post.deltas()]
    assert "".join(texts) == "first " + "".join(f"t{i} " for i in range(20))
    assert [d["seq"] for d in post.deltas()] == list(range(len(texts)))
    assert post.frames[-1]["type"] == "end" and stats.throttled == 2


# --------------------------------------------------------------------------- idle probes


def test_an_idle_sender_asks_whether_the_client_is_there_and_stops_once_it_is_gone():
    probes: list[float] = []

    def probe() -> None:
        probes.append(time.monotonic())
        if len(probes) == 2:
            raise ConnectionGone()

    told = threading.Event()
    post = Recorder()
    sender = FrameSender(post, "r1", min_interval=0, probe=probe, probe_after=0.05)
    with sender.on_gone(told.set):
        sender.send(start_frame("r1", "m"))
        assert told.wait(5), "the probe found the client gone, and said so"
    assert sender.gone and len(probes) == 2
    sender.delta("nobody is listening")
    sender.close()
    assert [f["type"] for f in post.frames] == ["start"]


def test_a_probe_that_cannot_tell_changes_nothing():
    probes = threading.Semaphore(0)

    def probe() -> None:
        probes.release()
        raise PostFailed("the Management API is having a moment")

    post = Recorder()
    sender = FrameSender(post, "r1", min_interval=0, probe=probe, probe_after=0.02)
    assert probes.acquire(timeout=5) and probes.acquire(timeout=5)  # it keeps asking
    sender.delta("still here")
    sender.close()
    assert not sender.gone and [d["text"] for d in post.deltas()] == ["still here"]


def test_a_callback_registered_after_the_client_left_runs_at_once():
    post = Recorder(failures={1: ConnectionGone()})
    sender = FrameSender(post, "r1", min_interval=0)
    sender.delta("lost")
    sender.close()
    called = []
    with sender.on_gone(lambda: called.append(True)):
        assert called == [True]


# --------------------------------------------------------------------------- the connection


@pytest.mark.parametrize(
    ("error", "alive"),
    [
        (None, True),
        ("GoneException", False),
        ("LimitExceededException", True),  # cannot tell: never end an answer on a guess
        ("InternalServerErrorException", True),
    ],
)
def test_a_connection_is_alive_unless_get_connection_says_it_is_gone(error, alive):
    from botocore.stub import Stubber
    from llmstream.apigw.connection import Connection, management_client

    client = management_client("https://x7k2m9q4pd.execute-api.us-east-1.amazonaws.com/prod")
    with Stubber(client) as stub:
        params = {"ConnectionId": "c="}
        if error is None:
            stub.add_response("get_connection", {"ConnectedAt": "2024-11-25T16:50:00Z"}, params)
        else:
            status = 410 if error == "GoneException" else 500
            stub.add_client_error("get_connection", error, http_status_code=status)
        assert Connection(client, "c=").alive() is alive
        stub.assert_no_pending_responses()
