"""The control item of one request, and the frames kept so that its client can resume.

Both live in the frames table. The control item (``seq`` = -1) says where the answer goes and
how it stands. The message handler creates it, flags it cancelled, or points it at the new
connection of a client that resumes. The stream function begins it, watches it while it streams
and settles it at the end. A resumable answer's delta texts follow it, packed a few frames to an
item (``seq`` = the first frame's seq), written once the answer has ended.

Keys are scoped to their owner (``owner_key``), because request ids are chosen by clients: with
auth on, one principal can never reach another's requests; with auth off, an unguessable
request id is what lets a client cancel or resume its answer (docs/sessions.md).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from botocore.exceptions import ClientError

CONTROL_SEQ = -1
CHUNK_BYTES = 64 * 1024
"""Delta texts packed into one frames item, at most (a single frame may be up to 32 KB)."""
BATCH_SIZE = 25
"""BatchWriteItem's limit."""
LEASE_SECONDS = 30
"""A streaming request whose lease is older than this belongs to an invocation that died."""
RENEW_EVERY_SECONDS = 10


class Status(StrEnum):
    QUEUED = "queued"
    STREAMING = "streaming"
    DONE = "done"
    CANCELLED = "cancelled"
    FAILED = "failed"
    GONE = "gone"
    """The client left: the answer stopped, or (resumable) nobody resumed it in time."""


LIVE = (Status.QUEUED, Status.STREAMING)

_NAMES = {
    "#status": "status",
    "#attach": "attach",
    "#owner": "owner",
    "#final": "final",
}


def owner_key(principal_id: str | None, name: str) -> str:
    """``name`` (a request or conversation id, which never holds '#') in its owner's space."""
    return f"p:{principal_id}#{name}" if principal_id else f"anon#{name}"


def _conditional_failed(exc: ClientError) -> bool:
    return exc.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException"


def _names(*used: str) -> dict[str, str]:
    return {k: v for k, v in _NAMES.items() if k in used}


@dataclass(frozen=True)
class Target:
    """Where a request's frames go: one connection of one API stage."""

    connection_id: str
    domain_name: str
    stage: str


@dataclass(frozen=True)
class ControlState:
    """A control item as read."""

    request_id: str
    status: str
    target: Target
    attach: int = 0
    """How many times a client has resumed the request; each resume adds one."""
    after_seq: int = -1
    """The last seq the client that resumed last had received."""
    owner: str | None = None
    cancel_requested: bool = False
    resumable: bool = False
    keep_open: bool = False
    lease_until_ms: int = 0
    expires_at: int = 0
    last_seq: int = -1
    final: dict[str, Any] | None = None
    """The answer's last frame (``end`` or ``error``), kept once a resumable answer is over."""

    @property
    def live(self) -> bool:
        return self.status in LIVE

    @classmethod
    def from_item(cls, item: dict[str, Any]) -> ControlState:
        def s(name: str) -> str | None:
            return item[name]["S"] if name in item else None

        def n(name: str, default: int) -> int:
            return int(item[name]["N"]) if name in item else default

        def b(name: str) -> bool:
            return bool(item[name]["BOOL"]) if name in item else False

        final = s("final")
        return cls(
            request_id=s("rid") or "",
            status=s("status") or "",
            target=Target(s("connectionId") or "", s("domainName") or "", s("stage") or ""),
            attach=n("attach", 0),
            after_seq=n("afterSeq", -1),
            owner=s("owner"),
            cancel_requested=b("cancelRequested"),
            resumable=b("resumable"),
            keep_open=b("keepOpen"),
            lease_until_ms=n("leaseUntil", 0),
            expires_at=n("expiresAt", 0),
            last_seq=n("lastSeq", -1),
            final=json.loads(final) if final else None,
        )


@dataclass(frozen=True)
class Attached:
    """The request is still queued or streaming: its stream function moves it to the caller."""


@dataclass(frozen=True)
class Replay:
    """The answer is over: a stream function must replay its stored frames (this attach)."""

    attach: int


@dataclass(frozen=True)
class Refused:
    reason: str
    """``not_found``, ``not_resumable``, ``interrupted`` or ``busy``."""


class RequestControl:
    """Control items and stored frames of one frames table."""

    def __init__(
        self, dynamodb: Any, table: str, *, clock: Callable[[], float] = time.time
    ) -> None:
        self._dynamodb = dynamodb
        self._table = table
        self._clock = clock

    def _key(self, key: str, seq: int = CONTROL_SEQ) -> dict[str, Any]:
        return {"requestId": {"S": key}, "seq": {"N": str(seq)}}

    def _now(self) -> int:
        return int(self._clock())

    def _lease(self, seconds: float) -> str:
        return str(int((self._clock() + seconds) * 1000))

    # ------------------------------------------------------------------ message handler

    def create(
        self,
        key: str,
        *,
        request_id: str,
        owner: str | None,
        target: Target,
        resumable: bool,
        keep_open: bool,
        expires_at: int,
    ) -> bool:
        """Record a new request as queued; False when its id is taken (in use, or used lately)."""
        item: dict[str, Any] = {
            **self._key(key),
            "rid": {"S": request_id},
            "status": {"S": Status.QUEUED.value},
            "connectionId": {"S": target.connection_id},
            "domainName": {"S": target.domain_name},
            "stage": {"S": target.stage},
            "attach": {"N": "0"},
            "resumable": {"BOOL": resumable},
            "keepOpen": {"BOOL": keep_open},
            "createdAt": {"N": str(int(self._clock() * 1000))},
            "expiresAt": {"N": str(expires_at)},
        }
        if owner:
            item["owner"] = {"S": owner}
        try:
            self._dynamodb.put_item(
                TableName=self._table,
                Item=item,
                # DynamoDB deletes expired items lazily; an expired one counts as absent.
                ConditionExpression="attribute_not_exists(requestId) OR expiresAt < :now",
                ExpressionAttributeValues={":now": {"N": str(self._now())}},
            )
            return True
        except ClientError as exc:
            if _conditional_failed(exc):
                return False
            raise

    def forget(self, key: str) -> None:
        """Remove a request that was never queued (its prompt could not be published)."""
        self._dynamodb.delete_item(TableName=self._table, Key=self._key(key))

    def cancel(self, key: str, *, principal_id: str | None, connection_id: str) -> bool:
        """Flag a queued or streaming request cancelled; False when there is none the caller may
        cancel. With auth on the caller must be its principal; with auth off, its connection."""
        if principal_id:
            whose, values = "#owner = :who", {":who": {"S": principal_id}}
        else:
            whose, values = "connectionId = :who", {":who": {"S": connection_id}}
        try:
            self._dynamodb.update_item(
                TableName=self._table,
                Key=self._key(key),
                UpdateExpression="SET cancelRequested = :true",
                ConditionExpression=(
                    f"#status IN (:queued, :streaming) AND expiresAt > :now AND {whose}"
                ),
                ExpressionAttributeNames=_names("#status", *(["#owner"] if principal_id else [])),
                ExpressionAttributeValues={
                    ":true": {"BOOL": True},
                    ":queued": {"S": Status.QUEUED.value},
                    ":streaming": {"S": Status.STREAMING.value},
                    ":now": {"N": str(self._now())},
                    **values,
                },
            )
            return True
        except ClientError as exc:
            if _conditional_failed(exc):
                return False
            raise

    def attach_client(
        self, key: str, *, principal_id: str | None, target: Target, after_seq: int
    ) -> Attached | Replay | Refused:
        """Point a request at the connection of a client that resumes it."""
        for _ in range(3):
            state = self.read(key)
            if state is None or state.owner != principal_id:
                return Refused("not_found")
            if not state.resumable:
                return Refused("not_resumable")
            now_ms = int(self._clock() * 1000)
            if state.status == Status.STREAMING and state.lease_until_ms < now_ms:
                return Refused("interrupted")
            try:
                self._dynamodb.update_item(
                    TableName=self._table,
                    Key=self._key(key),
                    UpdateExpression=(
                        "SET connectionId = :c, domainName = :d, stage = :s, afterSeq = :a, "
                        "#attach = :next"
                    ),
                    ConditionExpression="#attach = :seen AND #status = :status",
                    ExpressionAttributeNames=_names("#attach", "#status"),
                    ExpressionAttributeValues={
                        ":c": {"S": target.connection_id},
                        ":d": {"S": target.domain_name},
                        ":s": {"S": target.stage},
                        ":a": {"N": str(after_seq)},
                        ":next": {"N": str(state.attach + 1)},
                        ":seen": {"N": str(state.attach)},
                        ":status": {"S": state.status},
                    },
                )
            except ClientError as exc:
                if _conditional_failed(exc):
                    continue  # the stream ended, or another resume came first: look again
                raise
            return Attached() if state.live else Replay(state.attach + 1)
        return Refused("busy")

    # ------------------------------------------------------------------ both

    def read(self, key: str) -> ControlState | None:
        """The control item, or None when there is none (or it has expired)."""
        item = self._dynamodb.get_item(
            TableName=self._table, Key=self._key(key), ConsistentRead=True
        ).get("Item")
        if item is None:
            return None
        state = ControlState.from_item(item)
        return None if state.expires_at < self._now() else state

    # ------------------------------------------------------------------ stream function

    def begin(self, key: str, *, lease: float = LEASE_SECONDS) -> ControlState | str | None:
        """Mark a queued request streaming. Returns its state; None when it has no control item
        (it was queued without one); its status (a string) when it is not queued, that is when
        this delivery is a duplicate."""
        try:
            item = self._dynamodb.update_item(
                TableName=self._table,
                Key=self._key(key),
                UpdateExpression="SET #status = :streaming, leaseUntil = :lease",
                ConditionExpression="#status = :queued",
                ExpressionAttributeNames=_names("#status"),
                ExpressionAttributeValues={
                    ":streaming": {"S": Status.STREAMING.value},
                    ":queued": {"S": Status.QUEUED.value},
                    ":lease": {"N": self._lease(lease)},
                },
                ReturnValues="ALL_NEW",
            )["Attributes"]
            return ControlState.from_item(item)
        except ClientError as exc:
            if not _conditional_failed(exc):
                raise
        state = self.read(key)
        return None if state is None else state.status

    def renew(self, key: str, *, lease: float = LEASE_SECONDS) -> ControlState | None:
        """Extend the lease of a request this invocation streams; returns its state."""
        try:
            item = self._dynamodb.update_item(
                TableName=self._table,
                Key=self._key(key),
                UpdateExpression="SET leaseUntil = :lease",
                ConditionExpression="#status = :streaming",
                ExpressionAttributeNames=_names("#status"),
                ExpressionAttributeValues={
                    ":lease": {"N": self._lease(lease)},
                    ":streaming": {"S": Status.STREAMING.value},
                },
                ReturnValues="ALL_NEW",
            )["Attributes"]
            return ControlState.from_item(item)
        except ClientError as exc:
            if _conditional_failed(exc):
                return None
            raise

    def poll(self, key: str) -> ControlState | None:
        """What the watcher reads several times a second: one small consistent GetItem."""
        item = self._dynamodb.get_item(
            TableName=self._table,
            Key=self._key(key),
            ConsistentRead=True,
            ProjectionExpression=(
                "rid, #status, connectionId, domainName, stage, #attach, afterSeq, "
                "cancelRequested, resumable"
            ),
            ExpressionAttributeNames=_names("#status", "#attach"),
        ).get("Item")
        return None if item is None else ControlState.from_item(item)

    def settle(
        self,
        key: str,
        *,
        status: Status,
        attach: int,
        last_seq: int,
        final: dict[str, Any] | None,
        expires_at: int,
    ) -> bool:
        """Record how the answer ended. False when a client resumed it since ``attach``: the
        caller must move the answer to that client first, then settle again."""
        sets = "#status = :status, lastSeq = :last, expiresAt = :expires"
        values: dict[str, Any] = {
            ":status": {"S": status.value},
            ":last": {"N": str(last_seq)},
            ":expires": {"N": str(expires_at)},
            ":attach": {"N": str(attach)},
        }
        if final is not None:
            sets += ", #final = :final"
            values[":final"] = {"S": json.dumps(final, ensure_ascii=False)}
        try:
            self._dynamodb.update_item(
                TableName=self._table,
                Key=self._key(key),
                UpdateExpression=f"SET {sets} REMOVE leaseUntil",
                ConditionExpression="#attach = :attach",
                ExpressionAttributeNames=_names(
                    "#status", "#attach", *(["#final"] if final is not None else [])
                ),
                ExpressionAttributeValues=values,
            )
            return True
        except ClientError as exc:
            if _conditional_failed(exc):
                return False
            raise

    def claim_replay(self, key: str, attach: int) -> bool:
        """Exactly one delivery replays a given resume; False for a duplicate or a stale one."""
        try:
            self._dynamodb.update_item(
                TableName=self._table,
                Key=self._key(key),
                UpdateExpression="SET replayed = :attach",
                ConditionExpression=(
                    "#attach = :attach AND (attribute_not_exists(replayed) OR replayed < :attach)"
                ),
                ExpressionAttributeNames=_names("#attach"),
                ExpressionAttributeValues={":attach": {"N": str(attach)}},
            )
            return True
        except ClientError as exc:
            if _conditional_failed(exc):
                return False
            raise

    # ------------------------------------------------------------------ frames

    def store_frames(self, key: str, texts: list[str], *, expires_at: int) -> int:
        """Write delta texts 0..n-1 as items of consecutive frames; returns the item count."""
        items = [
            {
                "PutRequest": {
                    "Item": {
                        **self._key(key, first),
                        "texts": {"L": [{"S": t} for t in chunk]},
                        "expiresAt": {"N": str(expires_at)},
                    }
                }
            }
            for first, chunk in _chunks(texts)
        ]
        for start in range(0, len(items), BATCH_SIZE):
            self._batch_write(items[start : start + BATCH_SIZE])
        return len(items)

    def _batch_write(self, requests: list[dict[str, Any]], attempts: int = 8) -> None:
        delay = 0.05
        for _ in range(attempts):
            response = self._dynamodb.batch_write_item(RequestItems={self._table: requests})
            requests = response.get("UnprocessedItems", {}).get(self._table, [])
            if not requests:
                return
            time.sleep(delay)
            delay = min(delay * 2, 1.0)
        raise RuntimeError(f"{len(requests)} frame items were left unprocessed")

    def load_frames(self, key: str, after_seq: int) -> list[tuple[int, str]]:
        """Stored delta frames after ``after_seq``, as (seq, text), in order."""
        frames: list[tuple[int, str]] = []
        kwargs: dict[str, Any] = {
            "TableName": self._table,
            "KeyConditionExpression": "requestId = :k AND seq >= :zero",
            "ExpressionAttributeValues": {":k": {"S": key}, ":zero": {"N": "0"}},
            "ConsistentRead": True,
        }
        while True:
            page = self._dynamodb.query(**kwargs)
            for item in page.get("Items", []):
                first = int(item["seq"]["N"])
                for i, text in enumerate(item.get("texts", {}).get("L", [])):
                    if first + i > after_seq:
                        frames.append((first + i, text["S"]))
            if "LastEvaluatedKey" not in page:
                return frames
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def _chunks(texts: list[str]) -> Iterable[tuple[int, list[str]]]:
    """(first seq, texts) runs of at most CHUNK_BYTES of UTF-8 each (and at least one text)."""
    first, size = 0, 0
    run: list[str] = []
    for seq, text in enumerate(texts):
        length = len(text.encode("utf-8", errors="surrogatepass"))
        if run and size + length > CHUNK_BYTES:
            yield first, run
            first, run, size = seq, [], 0
        run.append(text)
        size += length
    if run:
        yield first, run
