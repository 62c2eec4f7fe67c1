"""The API Gateway Management API for one connection, with its errors turned into three plain kinds.

Callers see ConnectionGone (stop everything), Throttled (back off, retry the same frame) and
PostFailed (anything else; retry a bounded number of times).
"""

from __future__ import annotations

from functools import cache
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

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
