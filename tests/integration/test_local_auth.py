"""$connect authorization through the local stack, in the template's simple HMAC-token mode."""

from __future__ import annotations

import json

import pytest
import websockets
from websockets.exceptions import InvalidStatus

from devstack.stack import LocalStack
from tests.integration.test_local_stack import converse, run, send_message, tokens

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("query", ["", "?token=", "?token=not-a-token", "?token=a.b"])
def test_a_connect_without_a_valid_token_is_refused_with_401(hmac_stack: LocalStack, query: str):
    async def attempt() -> int:
        with pytest.raises(InvalidStatus) as refused:
            await websockets.connect(hmac_stack.ws_url + "/" + query, open_timeout=60)
        return refused.value.response.status_code

    assert run(attempt()) == 401


def test_an_expired_token_is_refused(hmac_stack: LocalStack):
    async def attempt() -> int:
        token = hmac_stack.mint_token("alice", ttl=-60)
        with pytest.raises(InvalidStatus) as refused:
            await websockets.connect(f"{hmac_stack.ws_url}/?token={token}", open_timeout=60)
        return refused.value.response.status_code

    assert run(attempt()) == 401


def test_a_valid_token_streams_and_its_principal_travels_in_the_sns_message(hmac_stack: LocalStack):
    url = f"{hmac_stack.ws_url}/?token={hmac_stack.mint_token('alice')}"
    conversation = run(converse(url, send_message("hi\n#mock tokens=5 rate=0", "auth-req-1")))
    assert conversation.text == tokens(5)
    [published] = [
        json.loads(m["Message"])
        for m in hmac_stack.published()
        if json.loads(m["Message"])["requestId"] == "auth-req-1"
    ]
    assert published["principalId"] == "alice"


def test_a_token_in_sec_websocket_protocol_is_accepted_and_the_subprotocol_echoed(
    hmac_stack: LocalStack,
):
    async def attempt() -> str | None:
        token = hmac_stack.mint_token("bob")
        async with websockets.connect(
            hmac_stack.ws_url, subprotocols=["bearer", token], open_timeout=60
        ) as ws:
            return ws.subprotocol

    assert run(attempt()) == "bearer"
