"""Stream dead-letter queue → tell each request's client, then keep it in the failed queue.

A prompt reaches the dead-letter queue when SNS could not invoke a stream function, when Lambda
dropped the event (too old, throttled), or when every attempt failed. Its idempotency record
says whether its client was told: our code tells it whenever it fails, a killed invocation
does not. This function tells the others. Consuming the queue drains it, so every message is
forwarded to StreamFailedQueue (which the alarm watches) once its client was told.

Each message stands alone (partial batch responses): one that cannot be settled yet (a live
invocation holds its request) or forwarded goes back to the queue and comes round again.
"""

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.batch import (
    BatchProcessor,
    EventType,
    process_partial_response,
)
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from llmstream.apigw.connection import Connection, management_client
from llmstream.core.clients import aws
from llmstream.core.observability import logger, metrics, tracer
from llmstream.core.settings import get_settings
from llmstream.deadletter.notify import TryLater, notify_dead_letter

settings = get_settings().require("connections_table", "frames_table", "failed_queue_url")
# A held message is no error of the function: it goes back to the queue, even when alone.
processor = BatchProcessor(event_type=EventType.SQS, raise_on_entire_batch_failure=False)


def _connection(address):
    endpoint = settings.management_endpoint(address.domain_name, address.stage)
    return Connection(management_client(endpoint), address.connection_id)


def settle_one(record: SQSRecord) -> str:
    try:
        outcome = notify_dead_letter(
            record.body,
            connection_factory=_connection,
            settings=settings,
            dynamodb=aws("dynamodb"),
        )
    except TryLater:
        metrics.add_metric(name="DeadLetter_held", unit=MetricUnit.Count, value=1)
        raise
    metrics.add_metric(name=f"DeadLetter_{outcome}", unit=MetricUnit.Count, value=1)
    aws("sqs").send_message(QueueUrl=settings.failed_queue_url, MessageBody=record.body)
    return outcome


@metrics.log_metrics
@logger.inject_lambda_context(clear_state=True, log_event=False)  # the bodies hold prompts
@tracer.capture_lambda_handler
def lambda_handler(event, context):
    return process_partial_response(
        event=event, record_handler=settle_one, processor=processor, context=context
    )
