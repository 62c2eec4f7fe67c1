"""sendMessage, cancel, resume and $default: validate the client's message, queue it on SNS (or
flag the answer cancelled, or move it to this connection), and answer at once.

The answer goes back through the two-way route response: an `accepted` or an `error` frame.
This function never imports the LLM client.
"""

import time

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.data_classes import APIGatewayWebSocketEvent, event_source
from llmstream.core.clients import aws
from llmstream.core.envelope import Address
from llmstream.core.observability import logger, metrics
from llmstream.core.protocol import encode
from llmstream.core.settings import get_settings
from llmstream.intake.accept import Caller, accept_message, publish_prompt
from llmstream.intake.limits import ConnectionLimits
from llmstream.requests.lifecycle import Requests

settings = get_settings().require("connections_table", "frames_table", "prompt_topic_arn")


def _publish(envelope):
    return publish_prompt(aws("sns"), settings.prompt_topic_arn, envelope)


def _limits():
    return ConnectionLimits(
        aws("dynamodb"),
        settings.connections_table,
        per_connection=settings.rate_limit_per_minute,
        per_principal=settings.principal_rate_limit_per_minute,
        max_streams=settings.max_concurrent_streams,
        connection_ttl_s=settings.connection_ttl_seconds,
    )


def _requests():
    """The request records: what makes answers cancellable, resumable and delivered once."""
    return Requests.of(aws("dynamodb"), settings)


@metrics.log_metrics
@logger.inject_lambda_context(log_event=False)  # the body holds the prompt
@event_source(data_class=APIGatewayWebSocketEvent)
def lambda_handler(event: APIGatewayWebSocketEvent, context):
    ctx = event.request_context
    caller = Caller(
        address=Address(ctx.connection_id, ctx.domain_name, ctx.stage),
        request_id=ctx.request_id,
        principal_id=(ctx.raw_event.get("authorizer") or {}).get("principalId"),
    )
    logger.append_keys(connection_id=caller.connection_id, route=ctx.route_key)
    frame = accept_message(
        event.body,
        caller,
        settings,
        _publish,
        now_ms=int(time.time() * 1000),
        limits=_limits(),
        requests=_requests(),
    )
    if frame is None:  # the AI SDK transport's frames are answered with nothing when all is well
        metrics.add_metric(name="RequestsAccepted", unit=MetricUnit.Count, value=1)
        logger.info("accepted")
        return {"statusCode": 200}
    logger.append_keys(request_id=frame["requestId"])
    if frame["type"] == "accepted":
        metrics.add_metric(name="RequestsAccepted", unit=MetricUnit.Count, value=1)
        logger.info("accepted")
    else:
        metrics.add_metric(name="RequestsRejected", unit=MetricUnit.Count, value=1)
        logger.info("rejected", extra={"code": frame.get("code") or frame["type"]})
    return {"statusCode": 200, "body": encode(frame).decode("utf-8")}
