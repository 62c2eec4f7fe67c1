"""SNS → stream: call the LLM with streaming and push each delta to the client's connection.

Client and model faults (gone, throttled, LLM errors, timeouts) end in a frame and never fail
the invocation. Only our own failures do, after telling the client, so that the event ends in
the dead-letter queue; a retry or a duplicate delivery never streams the answer a second time.
"""

from functools import cache

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.data_classes import SNSEvent, event_source
from llmstream.apigw.connection import Connection, management_client
from llmstream.core.clients import aws
from llmstream.core.observability import logger, metrics, record_stream_metrics, tracer
from llmstream.core.settings import get_settings
from llmstream.stream.providers import build_provider
from llmstream.stream.worker import run_prompt

settings = get_settings().require("connections_table", "frames_table", "conversations_table")
if settings.response_cache_ttl_seconds > 0:
    settings.require("response_cache_table")


def _provider(name: str | None = None):
    """The LLM client (by default this function's own), built once per container on first use."""
    return _built_provider(name or settings.llm_provider)


@cache
def _built_provider(name: str):
    return build_provider(name, settings)  # reads the secret, if the provider needs one


def _provider_for(envelope):
    """The envelope's provider. The subscription's filter policy sends this function only its
    own (LLM_PROVIDER); should another arrive all the same, serving it beats a silent drop or
    an error frame: a sibling that got it too loses the idempotency claim and stays quiet."""
    if envelope.provider != settings.llm_provider:
        logger.warning(
            "a prompt for another provider reached this function: check the filter policy",
            extra={"provider": envelope.provider, "function_provider": settings.llm_provider},
        )
        metrics.add_metric(name="MisroutedPrompts", unit=MetricUnit.Count, value=1)
    return _provider(envelope.provider)


def _connection(address):
    endpoint = settings.management_endpoint(address.domain_name, address.stage)
    return Connection(management_client(endpoint), address.connection_id)


@metrics.log_metrics
@logger.inject_lambda_context(clear_state=True, log_event=False)  # the prompt
@tracer.capture_lambda_handler
@event_source(data_class=SNSEvent)
def lambda_handler(event: SNSEvent, context):
    for record in event.records:
        try:
            result = run_prompt(
                record.sns.message,
                settings=settings,
                provider=_provider_for,
                connection=_connection,
                remaining_time=lambda: context.get_remaining_time_in_millis() / 1000,
                dynamodb=aws("dynamodb"),
            )
        except Exception:  # the client was told; Lambda retries, then the dead-letter queue
            metrics.add_metric(name="StreamsFailed", unit=MetricUnit.Count, value=1)
            raise
        record_stream_metrics(result)
