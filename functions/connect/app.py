"""$connect: record the new connection (with its authorized principal, if any) in DynamoDB.

A client that sent its token as the subprotocol pair ``bearer, <token>`` gets ``bearer`` back
in Sec-WebSocket-Protocol; without that echo its browser would drop the connection.
"""

from aws_lambda_powertools.utilities.data_classes import APIGatewayWebSocketEvent, event_source
from llmstream.auth import chosen_subprotocol
from llmstream.connections.table import add_connection
from llmstream.core.clients import aws
from llmstream.core.observability import logger
from llmstream.core.settings import get_settings

settings = get_settings().require("connections_table")


@logger.inject_lambda_context(log_event=False)  # the query string may hold a token
@event_source(data_class=APIGatewayWebSocketEvent)
def lambda_handler(event: APIGatewayWebSocketEvent, context):
    ctx = event.request_context
    authorizer = ctx.raw_event.get("authorizer") or {}
    logger.append_keys(connection_id=ctx.connection_id)
    add_connection(
        aws("dynamodb"),
        settings.connections_table,
        connection_id=ctx.connection_id,
        connected_at_ms=int(ctx.connected_at),
        source_ip=ctx.identity.source_ip,
        ttl_seconds=settings.connection_ttl_seconds,
        principal_id=authorizer.get("principalId"),
    )
    logger.info("connected")
    subprotocol = chosen_subprotocol(event.raw_event.get("headers"))
    if subprotocol:
        return {"statusCode": 200, "headers": {"Sec-WebSocket-Protocol": subprotocol}}
    return {"statusCode": 200}
