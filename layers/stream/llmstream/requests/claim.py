"""At most one stream per request and connection, however often SNS or Lambda delivers it.

The first delivery claims ``connectionId#requestId`` with a conditional put and holds a short
lease that a heartbeat renews while it streams. Every later delivery reads the record and is told
what to do: nothing (the request is streaming or done), fail again (it failed, so the event can
reach the dead-letter queue), or tell the client that the answer was cut off (the invocation
that held the lease died). A request is never streamed twice: the client already saw part of it.

Powertools' idempotency utility re-runs a function whose first run raised and cannot tell a
live stream from a crashed one, hence these few lines of our own on its table schema
(``id`` key, ``expiration`` TTL).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import StrEnum
from typing import Any

from botocore.exceptions import ClientError

from ..core.settings import Settings

LEASE_SECONDS = 30
"""A claim whose lease is this old belongs to an invocation that died (STREAM_LEASE_SECONDS).
Lambda's first retry of a failed invocation comes a minute later, so a retry always finds the
lease of a crash expired. The heartbeat renews it three times per lease."""


class Status(StrEnum):
    IN_PROGRESS = "INPROGRESS"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"


class Claim(StrEnum):
    NEW = "new"
    """First delivery: stream it."""
    IN_PROGRESS = "in_progress"
    """Another invocation is streaming it right now: do nothing."""
    COMPLETED = "completed"
    """Already answered (whatever the outcome the client saw): do nothing."""
    FAILED = "failed"
    """It failed and the client was told: fail again, so that the event ends in the DLQ."""
    INTERRUPTED = "interrupted"
    """The invocation streaming it died; this delivery now owns telling the client."""


def _conditional_failed(exc: ClientError) -> bool:
    return exc.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException"


class Deduplicator:
    """Claims and settles requests in the idempotency table."""

    def __init__(
        self,
        dynamodb: Any,
        table: str,
        *,
        expires_after: int,
        lease: float = LEASE_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._dynamodb = dynamodb
        self._table = table
        self._expires_after = expires_after
        self._lease = lease
        self._clock = clock

    def _lease_until_ms(self) -> str:
        return str(int((self._clock() + self._lease) * 1000))

    def claim(self, key: str) -> Claim:
        """A delivery's claim on the request: NEW (stream it) or what became of it."""
        return self._claim(key, Status.IN_PROGRESS)

    def close_out(self, key: str) -> Claim:
        """Settle as failed a request that no invocation is left to answer (the dead-letter
        function's view): NEW when it was never claimed, INTERRUPTED when its streaming
        invocation died (the caller now owns telling the client, in both cases), IN_PROGRESS
        while a live invocation holds it, and otherwise how it ended."""
        return self._claim(key, Status.FAILED)

    def _claim(self, key: str, initial: Status) -> Claim:
        now = self._clock()
        item = {
            "id": {"S": key},
            "status": {"S": initial.value},
            "expiration": {"N": str(int(now) + self._expires_after)},
        }
        if initial is Status.IN_PROGRESS:
            item["in_progress_expiration"] = {"N": self._lease_until_ms()}
        try:
            self._dynamodb.put_item(
                TableName=self._table,
                Item=item,
                # DynamoDB deletes expired items lazily; an expired one counts as absent.
                ConditionExpression="attribute_not_exists(id) OR expiration < :now",
                ExpressionAttributeValues={":now": {"N": str(int(now))}},
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
            return Claim.NEW
        except ClientError as exc:
            if not _conditional_failed(exc):
                raise
            old = exc.response.get("Item") or self._read(key)
        status = old.get("status", {}).get("S")
        if status == Status.COMPLETED.value:
            return Claim.COMPLETED
        if status == Status.FAILED.value:
            return Claim.FAILED
        lease_until = old.get("in_progress_expiration", {}).get("N", "0")
        if int(lease_until) > now * 1000:
            return Claim.IN_PROGRESS
        return self._take_over(key, lease_until)

    def _take_over(self, key: str, lease_until: str) -> Claim:
        """Of all the deliveries that find the same dead lease, exactly one wins."""
        try:
            self._dynamodb.update_item(
                TableName=self._table,
                Key={"id": {"S": key}},
                UpdateExpression="SET #status = :failed",
                ConditionExpression="#status = :in_progress AND in_progress_expiration = :lease",
                ExpressionAttributeNames={"#status": "status"},
                ExpressionAttributeValues={
                    ":failed": {"S": Status.FAILED.value},
                    ":in_progress": {"S": Status.IN_PROGRESS.value},
                    ":lease": {"N": lease_until},
                },
            )
            return Claim.INTERRUPTED
        except ClientError as exc:
            if _conditional_failed(exc):
                return Claim.IN_PROGRESS
            raise

    def _read(self, key: str) -> dict[str, Any]:
        return (
            self._dynamodb.get_item(
                TableName=self._table, Key={"id": {"S": key}}, ConsistentRead=True
            ).get("Item")
            or {}
        )

    def renew(self, key: str) -> None:
        """Extend the lease of a claim this invocation holds."""
        self._dynamodb.update_item(
            TableName=self._table,
            Key={"id": {"S": key}},
            UpdateExpression="SET in_progress_expiration = :lease",
            ConditionExpression="#status = :in_progress",
            ExpressionAttributeNames={"#status": "status"},
            ExpressionAttributeValues={
                ":lease": {"N": self._lease_until_ms()},
                ":in_progress": {"S": Status.IN_PROGRESS.value},
            },
        )

    def settle(self, key: str, status: Status) -> None:
        """Record how the request ended; later deliveries are answered from this."""
        self._dynamodb.update_item(
            TableName=self._table,
            Key={"id": {"S": key}},
            UpdateExpression="SET #status = :status REMOVE in_progress_expiration",
            ExpressionAttributeNames={"#status": "status"},
            ExpressionAttributeValues={":status": {"S": status.value}},
        )

    @contextmanager
    def heartbeat(
        self,
        key: str,
        every: float | None = None,
        on_error: Callable[[], None] = lambda: None,
    ) -> Iterator[None]:
        """Renew the lease in the background for as long as the block runs (by default three
        times per lease, so that one missed renewal is survived)."""
        every = self._lease / 3 if every is None else every
        stop = threading.Event()

        def renew_until_stopped() -> None:
            while not stop.wait(every):
                try:
                    self.renew(key)
                except Exception:  # a missed renewal is survivable: the lease outlasts two
                    on_error()

        thread = threading.Thread(target=renew_until_stopped, name=f"lease-{key}", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()


def deduplicator(dynamodb: Any, settings: Settings) -> Deduplicator:
    """The deployment's deduplicator: its table, its record lifetime, its lease."""
    return Deduplicator(
        dynamodb,
        settings.idempotency_table,
        expires_after=settings.connection_ttl_seconds,
        lease=settings.stream_lease_seconds,
    )
