"""SNS → Lambda fan-out: moto's topic delivers to an HTTP endpoint of ours, which invokes functions.

moto (server mode) already delivers to ``http`` subscriptions and applies their FilterPolicy, but
it leaves MessageAttributes out of HTTP notifications, which real SNS includes; ``patch_moto``
adds them. Each notification becomes the standard Lambda SNS event and an asynchronous invocation.
"""

from __future__ import annotations

import functools
import json
import logging
import secrets
import urllib.request
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from aiohttp import web

    from .runtime import Runtime

log = logging.getLogger("devstack.sns")

_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass(frozen=True)
class Subscription:
    """A function subscribed to the topic, like a SAM ``Events: {Type: SNS}`` entry."""

    function: str
    filter_policy: dict[str, Any] | None = None
    filter_policy_scope: str = "MessageAttributes"
    token: str = field(default_factory=lambda: secrets.token_hex(8))


def lambda_event(notification: dict[str, Any], subscription_arn: str) -> dict[str, Any]:
    """The event Lambda receives for one SNS notification (note ``...Url``, not ``...URL``)."""
    return {
        "Records": [
            {
                "EventVersion": "1.0",
                "EventSubscriptionArn": subscription_arn,
                "EventSource": "aws:sns",
                "Sns": {
                    "SignatureVersion": notification.get("SignatureVersion", "1"),
                    "Timestamp": notification.get("Timestamp"),
                    "Signature": notification.get("Signature", ""),
                    "SigningCertUrl": notification.get("SigningCertURL", ""),
                    "MessageId": notification["MessageId"],
                    "Message": notification["Message"],
                    "MessageAttributes": {
                        name: {"Type": attr["Type"], "Value": attr["Value"]}
                        for name, attr in (notification.get("MessageAttributes") or {}).items()
                    },
                    "Type": notification.get("Type", "Notification"),
                    "UnsubscribeUrl": notification.get("UnsubscribeURL", ""),
                    "TopicArn": notification["TopicArn"],
                    "Subject": notification.get("Subject"),
                },
            }
        ]
    }


class Fanout:
    """Subscribes functions to a topic and turns each delivery into ``runtime.invoke_async``."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.deliveries = 0
        self._arns: dict[str, tuple[Subscription, str]] = {}  # token -> (subscription, arn)

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/sns/{token}", self._receive)

    def subscribe(self, sns: Any, topic_arn: str, sub: Subscription, base_url: str) -> str:
        """Subscribe ``sub`` (a blocking boto3 call against moto); returns the subscription ARN."""
        attributes = {}
        if sub.filter_policy is not None:
            attributes = {
                "FilterPolicy": json.dumps(sub.filter_policy),
                "FilterPolicyScope": sub.filter_policy_scope,
            }
        arn = sns.subscribe(
            TopicArn=topic_arn,
            Protocol="http",
            Endpoint=f"{base_url.rstrip('/')}/sns/{sub.token}",
            Attributes=attributes,
            ReturnSubscriptionArn=True,
        )["SubscriptionArn"]
        self._arns[sub.token] = (sub, arn)
        return arn

    async def _receive(self, request: web.Request) -> web.StreamResponse:
        from aiohttp import web

        found = self._arns.get(request.match_info["token"])
        if found is None:
            raise web.HTTPNotFound()
        sub, arn = found
        notification = json.loads(await request.read())
        if notification.get("Type") == "SubscriptionConfirmation":  # moto confirms by itself
            return web.Response(status=200)
        self.deliveries += 1
        # Like SNS → Lambda: accepted at once, run later; the publisher never waits for it.
        self.runtime.invoke_async(sub.function, lambda_event(notification, arn))
        return web.Response(status=200)


def _post(endpoint: str, body: dict[str, Any]) -> None:
    request = urllib.request.Request(
        endpoint,
        data=json.dumps(body).encode(),
        headers={
            "Content-Type": "text/plain; charset=UTF-8",
            "x-amz-sns-message-type": "Notification",
        },
        method="POST",
    )
    try:
        with _NO_PROXY.open(request, timeout=15) as response:
            response.read()
    except OSError as exc:  # SNS would retry per its delivery policy; we only say so
        log.warning("SNS delivery to %s failed: %s", endpoint, exc)


def patch_moto() -> None:
    """Make moto's HTTP deliveries carry MessageAttributes, as real SNS notifications do."""
    from moto.sns.models import Subscription as MotoSubscription

    original = MotoSubscription.publish
    if getattr(original, "_devstack", False):
        return

    @functools.wraps(original)
    def publish(
        self: Any,
        message: str,
        message_id: str,
        subject: str | None = None,
        message_attributes: dict[str, Any] | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> None:
        if self.protocol not in ("http", "https"):
            return original(self, message, message_id, subject, message_attributes, *args, **kwargs)
        matcher = self._filter_policy_matcher
        if matcher is not None and not matcher.matches(message_attributes, message):
            return None
        structure = kwargs.get("message_structure") or (args[2] if len(args) > 2 else None)
        if structure == "json":
            message = self._parse_message_structure(message, self.protocol)
        body = self.get_post_data(
            message, message_id, subject, message_attributes=message_attributes
        )
        _post(self.endpoint, body)
        return None

    publish._devstack = True  # type: ignore[attr-defined]
    MotoSubscription.publish = publish  # type: ignore[method-assign]
