"""The API Gateway Management API for one connection, with its errors turned into three plain kinds,
and the one retry policy every post follows.

Callers see ConnectionGone (stop everything), Throttled (back off, retry the same frame) and
PostFailed (anything else; retry a bounded number of times).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from functools import cache
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from ..core.observability import logger
from ..core.protocol import encode

THROTTLE_CODES = frozenset(
    {"LimitExceededException", "TooManyRequestsException", "ThrottlingException"}
)


class ConnectionGone(Exception):
    """The client has disconnected (HTTP 410)."""


class Throttled(Exception):
    """API Gateway asked us to slow down (HTTP 429)."""


class PostFailed(Exception):
    """Any other failure to deliver a frame."""


def _classify(exc: ClientError) -> Exception:
    error = exc.response.get("Error", {})
    code = error.get("Code", "")
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    if code == "GoneException" or status == 410:
        return ConnectionGone(code or "410")
    if code in THROTTLE_CODES or status == 429:
        return Throttled(code or "429")
    return PostFailed(code or str(status))


class Connection:
    """One WebSocket connection, reached through a Management API client."""

    def __init__(self, client: Any, connection_id: str) -> None:
        self._client = client
        self.connection_id = connection_id

    def post(self, data: bytes) -> None:
        try:
            self._client.post_to_connection(ConnectionId=self.connection_id, Data=data)
        except ClientError as exc:
            raise _classify(exc) from None
        except BotoCoreError as exc:
            raise PostFailed(type(exc).__name__) from None

    def alive(self) -> bool:
        """Whether the client is still connected (GetConnection); True when that cannot be
        told, so that a failed check never ends an answer."""
        try:
            self._client.get_connection(ConnectionId=self.connection_id)
            return True
        except ClientError as exc:
            return not isinstance(_classify(exc), ConnectionGone)
        except BotoCoreError:
            return True

    def close(self) -> bool:
        """Close the connection; False when it was already gone."""
        try:
            self._client.delete_connection(ConnectionId=self.connection_id)
            return True
        except ClientError as exc:
            if isinstance(_classify(exc), ConnectionGone):
                return False
            raise


@cache
def management_client(endpoint_url: str) -> Any:
    """One client per endpoint per container. Retries are ours (the sender's), not botocore's."""
    import boto3
    from botocore.config import Config

    return boto3.client(
        "apigatewaymanagementapi",
        endpoint_url=endpoint_url,
        config=Config(
            retries={"total_max_attempts": 1, "mode": "standard"},
            connect_timeout=3,
            read_timeout=10,
            tcp_keepalive=True,
        ),
    )


class Delivery(StrEnum):
    """What became of one frame."""

    SENT = "sent"
    GONE = "gone"
    THROTTLED = "throttled"
    """API Gateway kept throttling the connection for longer than the policy's budget."""
    FAILED = "failed"
    """Posting kept failing, as often as the policy allows."""


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to try one frame: throttles are retried for ``throttle_budget`` seconds, other
    failures ``max_attempts`` times in all, with jittered exponential backoff between tries."""

    throttle_budget: float = 30.0
    max_attempts: int = 3
    first_backoff: float = 0.05
    max_backoff: float = 1.0


RETRY = RetryPolicy()


def post_with_retry(
    post: Callable[[bytes], None],
    data: bytes,
    *,
    policy: RetryPolicy = RETRY,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    on_retry: Callable[[Exception], None] = lambda exc: None,
) -> Delivery:
    """Post one frame under ``policy``; ``on_retry`` hears of each throttle or failure."""
    attempts, backoff = 0, policy.first_backoff
    throttled_since: float | None = None
    while True:
        try:
            post(data)
            return Delivery.SENT
        except ConnectionGone:
            return Delivery.GONE
        except Throttled as exc:
            on_retry(exc)
            now = clock()
            throttled_since = now if throttled_since is None else throttled_since
            if now - throttled_since > policy.throttle_budget:
                return Delivery.THROTTLED
        except PostFailed as exc:
            on_retry(exc)
            attempts += 1
            if attempts >= policy.max_attempts:
                return Delivery.FAILED
        sleep(random.uniform(backoff / 2, backoff))
        backoff = min(backoff * 2, policy.max_backoff)


def close_quietly(conn: Connection) -> None:
    """Close the connection; a failure here must not fail the invocation (Lambda would retry)."""
    try:
        conn.close()
    except Exception as exc:
        logger.warning("could not close the connection", extra={"error": type(exc).__name__})


def tell_and_close(conn: Connection, frame: dict[str, Any]) -> Delivery:
    """Post one last frame (an error the client must hear of), then close the connection.
    Best effort: the client may be gone already."""
    try:
        conn.post(encode(frame))
    except ConnectionGone:
        logger.info("could not tell the client: it has gone")
        return Delivery.GONE
    except Exception as exc:  # throttled or failed: the caller decides what that means
        logger.warning("could not tell the client", extra={"error": type(exc).__name__})
        return Delivery.FAILED
    close_quietly(conn)
    return Delivery.SENT
