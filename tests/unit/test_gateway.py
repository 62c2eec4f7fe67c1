"""The local WebSocket gateway and Management API, driven by a real client against fake handlers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import boto3
import pytest
import websockets
from aiohttp import web
from botocore.config import Config
from websockets.exceptions import ConnectionClosed, InvalidStatus

from devstack.gateway import Gateway, GatewayConfig, policy_allows
from devstack.management import ManagementApi
from devstack.runtime import FunctionSpec, Invocation, Runtime
from devstack.stack import serve

KB = 1024


@dataclass
class Api:
    gateway: Gateway
    runtime: Runtime
    ws_url: str
    management_url: str
    events: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def events_of(self, route_key: str) -> list[dict[str, Any]]:
        return [
            e
            for fn, events in self.events.items()
            if fn != "authorizer"
            for e in events
            if e["requestContext"]["routeKey"] == route_key
        ]

    async def wait(self, predicate: Callable[[list[Invocation]], Any], timeout: float = 5) -> Any:
        return await self.runtime.wait_for(predicate, timeout)

    async def disconnected(self, count: int = 1) -> list[Invocation]:
        return await self.wait(
            lambda invs: (
                [i for i in invs if i.function == "disconnect"]
                if sum(i.function == "disconnect" for i in invs) >= count
                else None
            )
        )

    def management(self) -> Any:
        return boto3.client(
            "apigatewaymanagementapi",
            endpoint_url=self.management_url,
            region_name="us-east-1",
            aws_access_key_id="x",
            aws_secret_access_key="x",
            config=Config(retries={"total_max_attempts": 1, "mode": "standard"}),
        )


def _ok(body: str | None = None) -> Callable[[dict[str, Any], Any], dict[str, Any]]:
    def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        return {"statusCode": 200, **({"body": body} if body is not None else {})}

    return handler


def _echo(event: dict[str, Any], context: Any) -> dict[str, Any]:
    ctx = event["requestContext"]
    return {
        "statusCode": 200,
        "body": json.dumps({"route": ctx["routeKey"], "body": event["body"]}),
    }


@contextlib.asynccontextmanager
async def local_api(
    handlers: dict[str, Callable[..., Any]] | None = None, **config: Any
) -> AsyncIterator[Api]:
    handlers = {"connect": _ok(), "disconnect": _ok(), "message": _echo, **(handlers or {})}
    api_events: dict[str, list[dict[str, Any]]] = {}
    lock = threading.Lock()

    def recording(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def handler(event: dict[str, Any], context: Any) -> Any:
            with lock:
                api_events.setdefault(name, []).append(event)
            return fn(event, context)

        return handler

    runtime = Runtime(
        [
            FunctionSpec(name, handler=recording(name, fn), isolation="thread", timeout=5)
            for name, fn in handlers.items()
        ]
    )
    await runtime.start("http://127.0.0.1:9")
    gateway = Gateway(GatewayConfig(port=0, **config), runtime.invoke)
    app = web.Application()
    ManagementApi(gateway).add_routes(app)
    gateway.add_routes(app)
    runner, port = await serve(app, "127.0.0.1", 0)
    gateway.bound(port)
    try:
        yield Api(
            gateway,
            runtime,
            f"ws://127.0.0.1:{port}",
            f"http://127.0.0.1:{port}/{gateway.config.stage}",
            api_events,
        )
    finally:
        await runtime.stop()
        await runner.cleanup()


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 30))


# --------------------------------------------------------------------------- $connect


def test_connect_event_has_the_api_gateway_shape_with_headers_and_query_string() -> None:
    async def scenario() -> None:
        async with local_api() as api:
            async with websockets.connect(api.ws_url + "/?token=abc&x=1", user_agent_header="ua/1"):
                pass
            await api.disconnected()
            (event,) = api.events_of("$connect")
            ctx = event["requestContext"]
            assert ctx["eventType"] == "CONNECT"
            assert ctx["messageDirection"] == "IN"
            assert ctx["stage"] == "local"
            assert ctx["domainName"] == api.gateway.domain_name
            assert ctx["identity"] == {"sourceIp": "127.0.0.1", "userAgent": "ua/1"}
            assert {
                "connectionId",
                "requestId",
                "extendedRequestId",
                "requestTime",
                "requestTimeEpoch",
                "connectedAt",
                "apiId",
            } <= ctx.keys()
            assert event["queryStringParameters"] == {"token": "abc", "x": "1"}
            assert event["headers"]["Sec-WebSocket-Version"] == "13"
            assert event["multiValueHeaders"]["X-Forwarded-For"] == ["127.0.0.1"]
            assert event["isBase64Encoded"] is False

    run(scenario())


def test_connect_returning_a_non_2xx_status_rejects_the_handshake_with_that_status() -> None:
    async def scenario() -> None:
        deny = {"connect": lambda e, c: {"statusCode": 403, "body": "nope"}}
        async with local_api(deny) as api:
            with pytest.raises(InvalidStatus) as rejected:
                await websockets.connect(api.ws_url)
            assert rejected.value.response.status_code == 403
            assert not api.gateway.connections

    run(scenario())


def test_connect_handler_failure_rejects_the_handshake_with_500() -> None:
    def boom(event: Any, context: Any) -> Any:
        raise RuntimeError("boom")

    async def scenario() -> None:
        async with local_api({"connect": boom}) as api:
            with pytest.raises(InvalidStatus) as rejected:
                await websockets.connect(api.ws_url)
            assert rejected.value.response.status_code == 500

    run(scenario())


# --------------------------------------------------------------------------- routing


def test_messages_are_routed_by_action_and_the_route_response_comes_back_as_a_frame() -> None:
    async def scenario() -> None:
        async with local_api() as api, websockets.connect(api.ws_url) as ws:
            await ws.send(json.dumps({"action": "sendMessage", "prompt": "hi"}))
            assert json.loads(await ws.recv())["route"] == "sendMessage"
            await ws.send(json.dumps({"action": "cancel", "requestId": "r"}))
            assert json.loads(await ws.recv())["route"] == "cancel"
            (event,) = api.events_of("sendMessage")
            assert event["body"] == json.dumps({"action": "sendMessage", "prompt": "hi"})
            assert event["requestContext"]["eventType"] == "MESSAGE"
            assert event["requestContext"]["messageId"]
            assert event["isBase64Encoded"] is False

    run(scenario())


def test_non_json_bodies_and_unknown_actions_go_to_the_default_route() -> None:
    async def scenario() -> None:
        async with local_api() as api, websockets.connect(api.ws_url) as ws:
            for body in (
                "not json",
                json.dumps({"action": "nope"}),
                json.dumps([1, 2]),
                json.dumps({"action": "$connect"}),
            ):
                await ws.send(body)
                assert json.loads(await ws.recv()) == {"route": "$default", "body": body}

    run(scenario())


def test_messages_from_one_connection_are_handled_at_once_not_one_at_a_time() -> None:
    """API Gateway makes each message its own integration call and promises no order: the
    first message here waits for the second, which would deadlock one-at-a-time dispatch."""
    second_started = threading.Event()

    def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        n = json.loads(event["body"])["n"]
        if n == 0:
            assert second_started.wait(5), "the second message waited for the first"
        else:
            second_started.set()
        return {"statusCode": 200, "body": str(n)}

    async def scenario() -> None:
        async with local_api({"message": handler}) as api, websockets.connect(api.ws_url) as ws:
            for n in range(2):
                await ws.send(json.dumps({"action": "sendMessage", "n": n}))
            # Both answered: the first saw the second start while it was still running (handled
            # one at a time, the first would have failed its wait and got an error frame).
            assert sorted([await ws.recv() for _ in range(2)]) == ["0", "1"]

    run(scenario())


def test_a_failing_route_handler_gets_api_gateways_internal_server_error_frame() -> None:
    def boom(event: Any, context: Any) -> Any:
        raise ValueError("bug")

    async def scenario() -> None:
        async with local_api({"message": boom}) as api, websockets.connect(api.ws_url) as ws:
            await ws.send(json.dumps({"action": "sendMessage"}))
            frame = json.loads(await ws.recv())
            assert frame["message"] == "Internal server error"
            assert frame["connectionId"] in api.gateway.connections

    run(scenario())


def test_client_close_fires_disconnect_with_its_status_code() -> None:
    async def scenario() -> None:
        async with local_api() as api:
            async with websockets.connect(api.ws_url) as ws:
                await ws.close(code=4000, reason="bye")
            await api.disconnected()
            (event,) = api.events_of("$disconnect")
            assert event["requestContext"]["eventType"] == "DISCONNECT"
            assert event["requestContext"]["disconnectStatusCode"] == 4000
            assert "disconnectReason" in event["requestContext"]
            assert not api.gateway.connections

    run(scenario())


# --------------------------------------------------------------------------- limits


def test_a_frame_over_32_kb_closes_the_socket_with_1009() -> None:
    async def scenario() -> None:
        async with local_api() as api, websockets.connect(api.ws_url, max_size=None) as ws:
            await ws.send("x" * (32 * KB + 1))
            with pytest.raises(ConnectionClosed):
                await ws.recv()
            assert ws.close_code == 1009
            await api.disconnected()
            assert not api.events_of("$default")

    run(scenario())


def test_a_message_of_small_frames_up_to_128_kb_is_delivered_whole() -> None:
    async def scenario() -> None:
        async with local_api() as api, websockets.connect(api.ws_url) as ws:
            await ws.send(["y" * (30 * KB)] * 4)  # four fragments, one message of 120 KB
            assert len(json.loads(await ws.recv())["body"]) == 120 * KB

    run(scenario())


def test_a_message_over_128_kb_closes_the_socket_with_1009_even_in_small_frames() -> None:
    async def scenario() -> None:
        async with local_api() as api, websockets.connect(api.ws_url) as ws:
            await ws.send(["z" * (30 * KB)] * 5)  # every frame is fine, the message is not
            with pytest.raises(ConnectionClosed):
                await ws.recv()
            assert ws.close_code == 1009

    run(scenario())


def test_a_binary_frame_closes_the_socket_with_1003() -> None:
    async def scenario() -> None:
        async with local_api() as api, websockets.connect(api.ws_url) as ws:
            await ws.send(b"\x00\x01")
            with pytest.raises(ConnectionClosed):
                await ws.recv()
            assert ws.close_code == 1003

    run(scenario())


def test_an_idle_socket_is_closed_after_the_idle_timeout() -> None:
    async def scenario() -> None:
        async with local_api(idle_timeout=0.3) as api, websockets.connect(api.ws_url) as ws:
            with pytest.raises(ConnectionClosed):
                await ws.recv()
            assert ws.close_code == 1001
            (invocation,) = await api.disconnected()
            assert invocation.event["requestContext"]["disconnectStatusCode"] == 1001

    run(scenario())


def test_messages_keep_a_socket_alive_but_not_past_its_maximum_life() -> None:
    async def scenario() -> None:
        async with local_api(idle_timeout=0.4, max_connection_life=1.0) as api:
            loop = asyncio.get_running_loop()
            async with websockets.connect(api.ws_url) as ws:
                opened = loop.time()
                with pytest.raises(ConnectionClosed):
                    while True:
                        await ws.send(json.dumps({"action": "sendMessage"}))
                        await ws.recv()
                        await asyncio.sleep(0.1)  # the client's pace, not a wait for the server
                assert ws.close_code == 1001
                assert loop.time() - opened >= 0.9

    run(scenario())


# --------------------------------------------------------------------------- Management API


def test_management_api_posts_gets_and_deletes_through_boto3() -> None:
    async def scenario() -> None:
        async with local_api() as api, websockets.connect(api.ws_url) as ws:
            (conn_id,) = api.gateway.connections
            client = api.management()
            await asyncio.to_thread(
                client.post_to_connection, ConnectionId=conn_id, Data=b'{"a":1}'
            )
            assert await ws.recv() == '{"a":1}'
            info = await asyncio.to_thread(client.get_connection, ConnectionId=conn_id)
            assert info["Identity"]["SourceIp"] == "127.0.0.1"
            assert info["ConnectedAt"] <= info["LastActiveAt"]
            await asyncio.to_thread(client.delete_connection, ConnectionId=conn_id)
            with pytest.raises(ConnectionClosed):
                await ws.recv()
            (invocation,) = await api.disconnected()
            assert invocation.event["requestContext"]["connectionId"] == conn_id

    run(scenario())


def test_posting_to_a_closed_connection_raises_gone_exception() -> None:
    async def scenario() -> None:
        async with local_api() as api:
            async with websockets.connect(api.ws_url):
                (conn_id,) = api.gateway.connections
            await api.disconnected()
            client = api.management()
            for call in (client.post_to_connection, client.get_connection):
                kwargs: dict[str, Any] = {"ConnectionId": conn_id}
                if call == client.post_to_connection:
                    kwargs["Data"] = b"x"
                with pytest.raises(client.exceptions.GoneException):
                    await asyncio.to_thread(call, **kwargs)
            with pytest.raises(client.exceptions.GoneException):
                await asyncio.to_thread(client.delete_connection, ConnectionId="never-existed=")

    run(scenario())


def test_throttle_every_makes_every_nth_post_fail_with_limit_exceeded() -> None:
    async def scenario() -> None:
        async with local_api(throttle_every=3) as api, websockets.connect(api.ws_url):
            (conn_id,) = api.gateway.connections
            client = api.management()
            codes = []
            for _ in range(6):
                try:
                    await asyncio.to_thread(
                        client.post_to_connection, ConnectionId=conn_id, Data=b"x"
                    )
                    codes.append("ok")
                except client.exceptions.LimitExceededException as exc:
                    assert exc.response["ResponseMetadata"]["HTTPStatusCode"] == 429
                    codes.append("throttled")
            assert codes == ["ok", "ok", "throttled"] * 2

    run(scenario())


# --------------------------------------------------------------------------- authorizer


def _authorizer(event: dict[str, Any], context: Any) -> dict[str, Any]:
    token = (event.get("queryStringParameters") or {}).get("token")
    if token in (None, "bad"):
        raise Exception("Unauthorized")
    effect = "Deny" if token == "deny" else "Allow"
    return {
        "principalId": f"user-{token}",
        "policyDocument": {
            "Version": "2012-10-17",
            "Statement": [
                {"Action": "execute-api:Invoke", "Effect": effect, "Resource": event["methodArn"]}
            ],
        },
        "context": {"plan": "free"},
    }


def test_authorizer_allow_passes_the_principal_into_every_later_event() -> None:
    async def scenario() -> None:
        async with local_api({"authorizer": _authorizer}, auth_enabled=True) as api:
            async with websockets.connect(api.ws_url + "/?token=alice") as ws:
                await ws.send(json.dumps({"action": "sendMessage"}))
                await ws.recv()
            await api.disconnected()
            (auth_event,) = api.events["authorizer"]
            assert auth_event["type"] == "REQUEST"
            assert auth_event["methodArn"].endswith("/local/$connect")
            for key in ("$connect", "sendMessage", "$disconnect"):
                (event,) = api.events_of(key)
                authorizer = event["requestContext"]["authorizer"]
                assert authorizer["principalId"] == "user-alice"
                assert authorizer["plan"] == "free"

    run(scenario())


@pytest.mark.parametrize(
    ("query", "status"), [("", 401), ("?token=bad", 401), ("?token=deny", 403)]
)
def test_authorizer_rejects_a_missing_or_bad_token_before_connect_runs(
    query: str, status: int
) -> None:
    async def scenario() -> None:
        async with local_api({"authorizer": _authorizer}, auth_enabled=True) as api:
            with pytest.raises(InvalidStatus) as rejected:
                await websockets.connect(api.ws_url + "/" + query)
            assert rejected.value.response.status_code == status
            assert not api.events_of("$connect")
            assert len(api.events["authorizer"]) == 1  # no identity source: it always decides

    run(scenario())


def test_policy_evaluation_needs_an_allow_and_lets_a_deny_win() -> None:
    arn = "arn:aws:execute-api:us-east-1:123456789012:api/local/$connect"
    allow = {"Action": "execute-api:Invoke", "Effect": "Allow", "Resource": "arn:aws:execute-api:*"}
    deny = {**allow, "Effect": "Deny", "Resource": [arn]}
    assert policy_allows({"Statement": [allow]}, arn)
    assert policy_allows({"Statement": allow}, arn)
    assert not policy_allows({"Statement": [allow, deny]}, arn)
    assert not policy_allows({"Statement": []}, arn)
    assert not policy_allows(None, arn)


def test_management_api_refuses_posts_over_128_kb_and_other_stages() -> None:
    async def scenario() -> None:
        async with local_api(post_latency=0.05) as api, websockets.connect(api.ws_url):
            (conn_id,) = api.gateway.connections
            client = api.management()
            loop = asyncio.get_running_loop()
            started = loop.time()
            await asyncio.to_thread(client.post_to_connection, ConnectionId=conn_id, Data=b"x")
            assert loop.time() - started >= 0.05  # the injected latency
            with pytest.raises(client.exceptions.PayloadTooLargeException):
                await asyncio.to_thread(
                    client.post_to_connection, ConnectionId=conn_id, Data=b"x" * (128 * KB + 1)
                )
            other = api.management_url.rsplit("/", 1)[0] + "/prod"
            with pytest.raises(client.exceptions.ForbiddenException):
                await asyncio.to_thread(
                    boto3.client(
                        "apigatewaymanagementapi",
                        endpoint_url=other,
                        region_name="us-east-1",
                        aws_access_key_id="x",
                        aws_secret_access_key="x",
                    ).get_connection,
                    ConnectionId=conn_id,
                )

    run(scenario())


def test_every_close_code_the_gateway_uses_is_documented_for_clients() -> None:
    """docs/protocol.md lists the close codes a client can meet; the local gateway's are there."""
    import re
    from pathlib import Path

    from devstack.ws_connection import CLOSE_REASONS

    root = Path(__file__).resolve().parents[2]
    documented = {
        int(code)
        for code in re.findall(r"^\| (\d{4}) \|", (root / "docs" / "protocol.md").read_text(), re.M)
    }
    assert set(CLOSE_REASONS) <= documented


def test_the_disconnect_event_pairs_its_status_code_with_the_matching_reason() -> None:
    from devstack.ws_connection import CLOSE_REASONS
    from tests.conftest import load_event

    ctx = load_event("disconnect.json")["requestContext"]
    assert ctx["disconnectReason"] == CLOSE_REASONS[ctx["disconnectStatusCode"]]
