"""Replays a finished answer from storage to the connection of a client that resumed it after
the end: the stored deltas after the last seq it had, then the answer's last frame.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

from ..apigw.connection import Connection, Delivery, close_quietly, post_with_retry
from ..core.envelope import Address, ResumeEnvelope
from ..core.observability import logger
from ..core.protocol import TEXT_FRAMES, ErrorCode, encode, error_frame
from ..requests.frames import StoredFrames
from ..requests.lifecycle import Requests
from ..requests.record import owner_key

NOT_REPLAYED = "the rest of the answer could not be sent; resume again"


def replay_answer(
    resume: ResumeEnvelope,
    *,
    requests: Requests,
    frames: StoredFrames,
    connection: Callable[[Address], Connection],
) -> None:
    """Send a finished answer's stored deltas after ``after_seq``, then its last frame, to the
    connection that resumed it; then close it, unless the request asked to keep it open."""
    key = owner_key(resume.principal_id, resume.request_id)
    conn = connection(resume.address)
    try:
        if not requests.claim_replay(key, resume.attach):
            logger.info("duplicate or superseded resume: not replaying")
            return
        state = requests.read(key)
        stored = frames.load_typed(key, resume.after_seq) if state is not None else []
    except Exception:
        logger.exception("could not read the stored answer")
        _tell(conn, resume.request_id)
        return
    expected = list(range(resume.after_seq + 1, (state.last_seq if state else -1) + 1))
    if state is None or state.final is None or [seq for seq, _, _ in stored] != expected:
        logger.error("the stored answer is incomplete")
        _tell(conn, resume.request_id)
        return
    for seq, kind, text in stored:
        frame = TEXT_FRAMES[kind](resume.request_id, seq, text)
        if post_with_retry(conn.post, encode(frame)) != Delivery.SENT:
            logger.info("the client left during the replay")
            return
    if post_with_retry(conn.post, encode(state.final)) != Delivery.SENT:
        return
    logger.info("replayed a stored answer", extra={"frames": len(stored)})
    if not state.keep_open:
        close_quietly(conn)


def _tell(conn: Connection, request_id: str) -> None:
    with contextlib.suppress(Exception):
        conn.post(encode(error_frame(request_id, ErrorCode.INTERNAL, NOT_REPLAYED)))
