"""Stream dead-letter queue → tell each prompt's client, then keep the prompt in the failed queue.

A prompt reaches the dead-letter queue when SNS could not invoke a stream function, when Lambda
dropped the event (too old, throttled), or when every retry failed. Only in the last case did
code of ours run and tell the client; this function tells the others. Consuming the queue drains
it, so every message is forwarded to StreamFailedQueue (which the alarm watches) after the
client was told. A failure to forward raises: the batch returns to the dead-letter queue.
"""

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.data_classes import SQSEvent, event_source
from llmstream.clients import aws
from llmstream.deadletter import notify_dead_letter
from llmstream.management import Connection, management_client
from llmstream.observability import logger, metrics, tracer
from llmstream.settings import get_settings

settings = get_settings()


def _connection(envelope):
    endpoint = settings.management_endpoint(envelope.domain_name, envelope.stage)
    return Connection(management_client(endpoint), envelope.connection_id)


@metrics.log_metrics
@logger.inject_lambda_context(clear_state=True, log_event=False)  # the bodies hold prompts
@tracer.capture_lambda_handler
@event_source(data_class=SQSEvent)
def lambda_handler(event: SQSEvent, context):
    for record in event.records:
        outcome = notify_dead_letter(record.body, connection_factory=_connection)
        metrics.add_metric(name=f"DeadLetter_{outcome}", unit=MetricUnit.Count, value=1)
        aws("sqs").send_message(QueueUrl=settings.failed_queue_url, MessageBody=record.body)
