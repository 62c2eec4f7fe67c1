"""SNS fan-out: moto's topic delivers to our endpoint, which invokes subscribed functions async."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from aiohttp import web

from devstack.runtime import FunctionSpec, Invocation, Runtime
from devstack.sns import Fanout, Subscription, lambda_event, patch_moto
from devstack.stack import serve


@pytest.fixture(scope="module")
def sns() -> Iterator[Any]:
    from moto.server import ThreadedMotoServer

    patch_moto()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield boto3.client(
            "sns",
            endpoint_url=f"http://{host}:{port}",
            region_name="us-east-1",
            aws_access_key_id="x",
            aws_secret_access_key="x",
        )
    finally:
        server.stop()


def prompt_attributes(provider: str) -> dict[str, Any]:
    return {
        "provider": {"DataType": "String", "StringValue": provider},
        "version": {"DataType": "Number", "StringValue": "1"},
    }


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 30))


async def fan_out(sns: Any, topic: str, runtime: Runtime, *subs: Subscription) -> web.AppRunner:
    fanout = Fanout(runtime)
    app = web.Application()
    fanout.add_routes(app)
    runner, port = await serve(app, "127.0.0.1", 0)
    await runtime.start("http://127.0.0.1:9")
    for sub in subs:
        await asyncio.to_thread(fanout.subscribe, sns, topic, sub, f"http://127.0.0.1:{port}")
    return runner


def test_a_publish_reaches_the_subscriber_as_a_lambda_sns_event_without_waiting_for_it(
    sns: Any,
) -> None:
    topic = sns.create_topic(Name="prompts-shape")["TopicArn"]
    release = threading.Event()

    def stream(event: dict[str, Any], context: Any) -> None:
        release.wait(10)  # still running when publish returns: delivery is asynchronous

    async def scenario() -> None:
        runtime = Runtime([FunctionSpec("stream", handler=stream, isolation="thread")])
        runner = await fan_out(
            sns, topic, runtime, Subscription("stream", {"provider": ["openai"]})
        )
        try:
            message_id = (
                await asyncio.to_thread(
                    sns.publish,
                    TopicArn=topic,
                    Message='{"hello":1}',
                    MessageAttributes=prompt_attributes("openai"),
                )
            )["MessageId"]
            assert not runtime.invocations
            release.set()
            (invocation,) = await runtime.wait_for(lambda invs: invs or None, timeout=10)
            (record,) = invocation.event["Records"]
            assert record["EventSource"] == "aws:sns"
            assert record["EventSubscriptionArn"].startswith(topic + ":")
            assert record["Sns"]["MessageId"] == message_id
            assert record["Sns"]["TopicArn"] == topic
            assert record["Sns"]["Message"] == '{"hello":1}'
            assert record["Sns"]["MessageAttributes"] == {
                "provider": {"Type": "String", "Value": "openai"},
                "version": {"Type": "Number", "Value": "1"},
            }
            assert invocation.asynchronous
        finally:
            await runtime.stop()
            await runner.cleanup()

    run(scenario())


def test_filter_policies_send_each_prompt_only_to_the_subscribers_that_match(sns: Any) -> None:
    topic = sns.create_topic(Name="prompts-filter")["TopicArn"]

    def handler(event: dict[str, Any], context: Any) -> None:
        return None

    async def scenario() -> None:
        runtime = Runtime(
            [
                FunctionSpec("stream", handler=handler, isolation="thread"),
                FunctionSpec("bedrock", handler=handler, isolation="thread"),
            ]
        )
        runner = await fan_out(
            sns,
            topic,
            runtime,
            Subscription("stream", {"provider": ["openai"]}),
            Subscription("bedrock", {"provider": ["bedrock"]}),
        )
        try:
            for provider in ("openai", "bedrock", "openai", "other"):
                await asyncio.to_thread(
                    sns.publish,
                    TopicArn=topic,
                    Message=provider,
                    MessageAttributes=prompt_attributes(provider),
                )

            def three(invs: list[Invocation]) -> list[Invocation] | None:
                return invs if len(invs) >= 3 else None

            invocations = await runtime.wait_for(three, timeout=10)
            await runtime.drain()
            received = sorted(
                (i.function, i.event["Records"][0]["Sns"]["Message"]) for i in invocations
            )
            assert received == [("bedrock", "bedrock"), ("stream", "openai"), ("stream", "openai")]
            assert len(runtime.invocations) == 3  # "other" matched no one
        finally:
            await runtime.stop()
            await runner.cleanup()

    run(scenario())


def test_lambda_events_use_lambdas_field_names_for_the_http_notification() -> None:
    notification = {
        "Type": "Notification",
        "MessageId": "m1",
        "TopicArn": "arn:aws:sns:us-east-1:1:t",
        "Message": json.dumps({"a": 1}),
        "Timestamp": "2026-01-01T00:00:00.000Z",
        "SignatureVersion": "2",
        "Signature": "sig",
        "SigningCertURL": "https://cert",
        "UnsubscribeURL": "https://unsub",
    }
    sns = lambda_event(notification, "arn:sub")["Records"][0]["Sns"]
    assert sns["SigningCertUrl"] == "https://cert"
    assert sns["UnsubscribeUrl"] == "https://unsub"
    assert sns["MessageAttributes"] == {}
    assert sns["Subject"] is None
