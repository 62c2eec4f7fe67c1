"""The dead-letter function: every prompt in the stream dead-letter queue has its client told
(unless the stream function told it already), and is kept in the failed queue afterwards.

moto fakes SQS and the Management API; botocore's Stubber fakes a gone client."""

from __future__ import annotations

import copy
import json

import pytest
from botocore.stub import Stubber

from tests.conftest import load_event, load_handler
from tests.unit.streams import frames_posted

PROMPT = "Write a haiku about streaming."
CONNECTION = "Kx3vYdqgoAMCJyQ="
ENDPOINT = "https://x7k2m9q4pd.execute-api.us-east-1.amazonaws.com/prod"


@pytest.fixture
def failed_queue(aws, monkeypatch) -> str:
    url = aws.sqs.create_queue(QueueName="failed")["QueueUrl"]
    monkeypatch.setenv("FAILED_QUEUE_URL", url)
    return url


def kept(aws, url: str) -> list[str]:
    messages = aws.sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", [])
    return [m["Body"] for m in messages]


def destination_record(condition: str = "EventAgeExceeded", **extra) -> dict:
    """Lambda's on-failure destination record, as in events/deadletter-sqs.json."""
    record = json.loads(load_event("deadletter-sqs.json")["Records"][0]["body"])
    record["requestContext"]["condition"] = condition
    record.update(extra)
    return record


def sns_notification() -> dict:
    """What an SNS subscription redrive puts in the queue: the notification SNS could not
    deliver, its Message our envelope."""
    sns = load_event("stream-sns.json")["Records"][0]["Sns"]
    return {k: v for k, v in sns.items() if k != "MessageAttributes"}


def sqs_event(*bodies: str) -> dict:
    event = load_event("deadletter-sqs.json")
    template = event["Records"][0]
    event["Records"] = []
    for i, body in enumerate(bodies):
        record = copy.deepcopy(template)
        record.update(messageId=f"m-{i}", body=body)
        event["Records"].append(record)
    return event


def run(event, context):
    return load_handler("deadletter").lambda_handler(event, context)


def assert_told_and_closed(closed: list[str]) -> None:
    (frame,) = frames_posted(CONNECTION)
    assert frame == {
        "type": "error",
        "requestId": "req-123",
        "code": "internal",
        "message": "the answer could not be started; send the prompt again",
    }
    assert closed == [CONNECTION]


def test_an_event_lambda_dropped_unrun_tells_the_client_closes_and_is_kept(
    aws, failed_queue, closed, lambda_context
):
    event = load_event("deadletter-sqs.json")
    run(event, lambda_context)
    assert_told_and_closed(closed)
    assert kept(aws, failed_queue) == [event["Records"][0]["body"]]


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(json.dumps(sns_notification()), id="sns-notification"),
        pytest.param(sns_notification()["Message"], id="bare-envelope"),
        pytest.param(json.dumps(destination_record("EventAgeExceeded")), id="event-age-exceeded"),
        pytest.param(
            # No response in the record: our function never ran, whatever the condition.
            json.dumps(destination_record("RetriesExhausted")),
            id="retries-exhausted-unrun",
        ),
    ],
)
def test_each_dead_letter_shape_tells_the_client_closes_and_is_kept(
    body, aws, failed_queue, closed, lambda_context
):
    run(sqs_event(body), lambda_context)
    assert_told_and_closed(closed)
    assert kept(aws, failed_queue) == [body]


def test_after_our_function_failed_every_retry_the_client_is_not_told_twice(
    aws, failed_queue, closed, lambda_context
):
    body = json.dumps(
        destination_record(
            "RetriesExhausted",
            responseContext={
                "statusCode": 200,
                "executedVersion": "$LATEST",
                "functionError": "Unhandled",
            },
            responsePayload={
                "errorMessage": "the stream failed on our side",
                "errorType": "RequestFailed",
            },
        )
    )
    run(sqs_event(body), lambda_context)
    assert frames_posted(CONNECTION) == [] and closed == []
    assert kept(aws, failed_queue) == [body]


def test_a_gone_connection_does_not_fail_the_batch_and_the_prompt_is_kept(
    aws, failed_queue, lambda_context
):
    handler = load_handler("deadletter")
    from llmstream.management import management_client

    body = load_event("deadletter-sqs.json")["Records"][0]["body"]
    with Stubber(management_client(ENDPOINT)) as stub:
        for _ in range(2):
            stub.add_client_error("post_to_connection", "GoneException", http_status_code=410)
        handler.lambda_handler(sqs_event(body, body), lambda_context)
        stub.assert_no_pending_responses()  # both were tried, neither closed
    assert kept(aws, failed_queue) == [body, body]


def test_notify_reports_gone_without_raising():
    from llmstream.deadletter import notify_dead_letter
    from llmstream.management import Connection, management_client

    client = management_client(ENDPOINT)
    with Stubber(client) as stub:
        stub.add_client_error("post_to_connection", "GoneException", http_status_code=410)
        outcome = notify_dead_letter(
            json.dumps(sns_notification()),
            connection_factory=lambda envelope: Connection(client, envelope.connection_id),
        )
        stub.assert_no_pending_responses()  # no close was attempted
    assert outcome == "gone"


@pytest.mark.parametrize(
    "body",
    [
        "SECRET PROMPT, not JSON",
        json.dumps(
            {
                "Type": "Notification",
                "Message": json.dumps(
                    {"version": 99, "messages": [{"role": "user", "content": "SECRET PROMPT"}]}
                ),
            }
        ),
        json.dumps(
            {
                "requestContext": {"condition": "EventAgeExceeded"},
                "requestPayload": {"SECRET PROMPT": 1},
            }
        ),
    ],
    ids=["not-json", "bad-envelope", "payload-not-sns"],
)
def test_an_unreadable_dead_letter_is_kept_and_logged_without_its_content(
    body, aws, failed_queue, closed, lambda_context, logs
):
    run(sqs_event(body), lambda_context)
    assert kept(aws, failed_queue) == [body]
    assert closed == []
    out = logs.getvalue()
    assert "a dead letter holds no readable prompt" in out and "SECRET PROMPT" not in out


def test_the_prompt_never_reaches_the_logs(aws, failed_queue, closed, lambda_context, logs):
    run(load_event("deadletter-sqs.json"), lambda_context)
    out = logs.getvalue()
    assert "told the client" in out and PROMPT not in out


def test_a_prompt_that_cannot_be_kept_fails_the_batch_so_it_stays_in_the_dead_letter_queue(
    aws, closed, lambda_context, monkeypatch
):
    monkeypatch.setenv(
        "FAILED_QUEUE_URL", "https://sqs.us-east-1.amazonaws.com/123456789012/missing"
    )
    with pytest.raises(Exception, match="NonExistentQueue|does not exist"):
        run(load_event("deadletter-sqs.json"), lambda_context)


def test_a_dead_lettered_resume_tells_its_client_to_resume_again(
    aws, failed_queue, closed, lambda_context
):
    from llmstream.envelope import ResumeEnvelope

    resume = ResumeEnvelope(
        request_id="req-123",
        connection_id=CONNECTION,
        domain_name="x7k2m9q4pd.execute-api.us-east-1.amazonaws.com",
        stage="prod",
        after_seq=4,
        attach=1,
        provider="openai",
    ).to_json()
    run(sqs_event(resume), lambda_context)
    (frame,) = frames_posted(CONNECTION)
    assert frame["code"] == "internal"
    assert frame["message"] == "the answer could not be resumed; send resume again"
    assert closed == [CONNECTION]
    assert kept(aws, failed_queue) == [resume]
