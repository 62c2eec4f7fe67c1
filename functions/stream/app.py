"""SNS → stream: call the LLM with streaming and push each delta to the client's connection.

Client and model faults (gone, throttled, LLM errors, timeouts) end in a frame and never fail
the invocation. Only our own failures do, after telling the client, so that the event ends in
the dead-letter queue; a retry or a duplicate delivery never streams the answer a second time.
"""

from functools import cache

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.data_classes import SNSEvent, event_source
from llmstream.clients import aws
from llmstream.management import Connection, management_client
from llmstream.observability import logger, metrics, record_stream_metrics, tracer
from llmstream.settings import get_settings
from llmstream.worker import run_prompt

settings = get_settings()


@cache
def _provider():
    """The LLM client, built (and its secret read) once per container, on first use."""
    from aws_lambda_powertools.utilities.parameters import get_secret
    from llmstream.llm import OpenAIProvider, openai_client

    api_key = get_secret(settings.llm_api_key_secret, max_age=3600)
    return OpenAIProvider(openai_client(str(api_key), settings.llm_base_url))


def _connection(envelope):
    endpoint = settings.management_endpoint(envelope.domain_name, envelope.stage)
    return Connection(management_client(endpoint), envelope.connection_id)


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
                provider=lambda _envelope: _provider(),
                connection=_connection,
                remaining_time=lambda: context.get_remaining_time_in_millis() / 1000,
                dynamodb=aws("dynamodb"),
            )
        except Exception:  # the client was told; Lambda retries, then the dead-letter queue
            metrics.add_metric(name="StreamsFailed", unit=MetricUnit.Count, value=1)
            raise
        record_stream_metrics(result)
