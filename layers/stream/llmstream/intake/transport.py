"""What the message function does with the AI SDK transport's frames (core.transport): a send is
accepted like ours, but answered in the transport's words (nothing, or an ``error``); an abort
is our cancel, of the request or of the resume it goes by now; a resume finds the chat's running
answer and moves it to this connection under the resume's requestId.
"""

from __future__ import annotations

from typing import Any

from ..core import transport
from ..core.observability import logger
from ..core.protocol import Cancel, Resume
from ..requests.lifecycle import Attached, Refused
from ..requests.record import owner_key
from .accept import Intake

NOT_RESUMED = "the answer could not be resumed; try again"


def in_dialect(frame: dict[str, Any]) -> dict[str, Any] | None:
    """Our reply as the transport's: an ``accepted`` is no frame at all (the client would
    drop the connection on it), an ``error`` is the transport's ``error``."""
    if frame["type"] == "accepted":
        return None
    return transport.error_frame(frame["requestId"], f"{frame['code']}: {frame['message']}")


def abort(message: Cancel, intake: Intake) -> None:
    """Cancel the request, or the one it was resumed as, and give its stream slot back at once
    (``stop()`` resolves at once: the next send comes right behind). No reply is expected."""
    requests, caller = intake.requests, intake.caller
    principal, connection = caller.principal_id, caller.connection_id
    try:
        key = owner_key(principal, message.request_id)
        cancelled = requests.cancels.cancel(key, principal_id=principal, connection_id=connection)
        if cancelled is None:  # the requestId of a resume: find the request it moved
            resumed = requests.chats.resolve(principal, message.request_id)
            if resumed is None:
                return
            key = resumed
            cancelled = requests.cancels.cancel(
                key, principal_id=principal, connection_id=connection
            )
        if cancelled is not None:
            intake.limits.give_back_cancelled(requests.store.table.name, key, cancelled)
    except Exception:  # the client is not listening for a reply: log it, for the operator
        logger.exception("could not abort the request")


def resume(message: Resume, intake: Intake) -> dict[str, Any] | None:
    """Move the chat's running answer here, replayed from its start under the resume's
    requestId; ``no-active`` when the chat has none running."""
    caller, requests = intake.caller, intake.requests
    rid, chat_id = message.request_id, message.chat_id
    assert chat_id is not None
    try:
        key = requests.chats.running(caller.principal_id, chat_id)
        if key is None:
            return transport.no_active_frame(rid)
        outcome = requests.attach(
            key, principal_id=caller.principal_id, address=caller.address, after_seq=-1, alias=rid
        )
        if isinstance(outcome, Attached):
            requests.chats.alias(caller.principal_id, rid, key)
            return None
    except Exception:
        logger.exception("could not resume the chat")
        return transport.error_frame(rid, f"internal: {NOT_RESUMED}")
    if isinstance(outcome, Refused) and outcome.reason in ("interrupted", "busy"):
        logger.info("resume refused", extra={"reason": outcome.reason})
        return transport.error_frame(rid, f"internal: {NOT_RESUMED}")
    return transport.no_active_frame(rid)  # over, or never resumable: nothing is running
