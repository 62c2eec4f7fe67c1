"""askAboutOrder: look the order up, make a prompt of it, and let the llm-stream stack's stream
function stream the answer to this connection (``llmstream.publish``, from the StreamLayer).

The client sends ``{"action": "askAboutOrder", "orderId": "A-1001", "question": "..."}`` and
gets ``accepted``, then the stream function's ``start``, ``delta``... and ``end``.
"""

import json

import llmstream
from aws_lambda_powertools import Logger
from llmstream import ErrorCode, ProtocolError
from orders import find_order, prompt_about

logger = Logger()

OPTIONS = ("keepOpen", "resumable", "conversationId")
"""What the client may pass through to the answer, as in a sendMessage (publish checks them)."""


@logger.inject_lambda_context(log_event=False)  # the body holds the customer's question
def lambda_handler(event, context):
    fallback_id = event["requestContext"]["requestId"]
    try:
        ask = read_question(event.get("body"))
        order = find_order(ask["orderId"])
        if order is None:
            raise ProtocolError(ErrorCode.NOT_FOUND, f"no order {ask['orderId'][:64]!r}")
        published = llmstream.publish(
            prompt_about(order, ask["question"]),
            connection=event,  # its connection, stage and principal
            request_id=ask.get("requestId"),
            options={k: ask[k] for k in OPTIONS if k in ask},
        )
    except ProtocolError as refused:
        logger.info("refused", extra={"code": refused.code.value})
        return respond(refused.frame(fallback_id))
    logger.info("queued", extra={"request_id": published.request_id})
    return respond(published.frame)


def read_question(body):
    """The client's message, or a ProtocolError saying what is wrong with it."""
    try:
        ask = json.loads(body or "")
    except ValueError:
        raise ProtocolError(ErrorCode.BAD_REQUEST, "the message is not valid JSON") from None
    if not isinstance(ask, dict):
        raise ProtocolError(ErrorCode.BAD_REQUEST, "the message must be a JSON object")
    for field in ("orderId", "question"):
        if not isinstance(ask.get(field), str) or not ask[field].strip():
            raise ProtocolError(ErrorCode.BAD_REQUEST, f"'{field}' must be a non-empty string")
    return ask


def respond(frame):
    """The route response: API Gateway sends the body to the client."""
    return {"statusCode": 200, "body": json.dumps(frame)}
