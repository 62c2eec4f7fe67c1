"""$disconnect: forget the connection."""

from aws_lambda_powertools.utilities.data_classes import APIGatewayWebSocketEvent, event_source
from llmstream.connections.table import remove_connection
from llmstream.core.clients import aws
from llmstream.core.observability import logger
from llmstream.core.settings import get_settings

settings = get_settings().require("connections_table")


@logger.inject_lambda_context
@event_source(data_class=APIGatewayWebSocketEvent)
def lambda_handler(event: APIGatewayWebSocketEvent, context):
    connection_id = event.request_context.connection_id
    logger.append_keys(connection_id=connection_id)
    remove_connection(aws("dynamodb"), settings.connections_table, connection_id)
    logger.info("disconnected")
    return {"statusCode": 200}
