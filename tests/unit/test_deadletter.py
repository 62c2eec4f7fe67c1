"""The dead-letter function: every prompt in the stream dead-letter queue has its client told
(unless the stream function told it already), and is kept in the failed queue afterwards.

moto fakes SQS and the Management API; botocore's Stubber fakes a gone client."""

from __future__ import annotations

import copy
import json
import uuid

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
    from llmstream.apigw.connection import management_client

    body = load_event("deadletter-sqs.json")["Records"][0]["body"]
    other = body.replace("req-123", "req-456")  # two requests: each has its own record
    assert other != body
    with Stubber(management_client(ENDPOINT)) as stub:
        for _ in range(2):
            stub.add_client_error("post_to_connection", "GoneException", http_status_code=410)
        handler.lambda_handler(sqs_event(body, other), lambda_context)
        stub.assert_no_pending_responses()  # both were tried, neither closed
    assert kept(aws, failed_queue) == [body, other]


def test_notify_reports_gone_without_raising(aws):
    from llmstream.apigw.connection import Connection, management_client
    from llmstream.core.settings import Settings
    from llmstream.deadletter.notify import notify_dead_letter

    client = management_client(ENDPOINT)
    with Stubber(client) as stub:
        stub.add_client_error("post_to_connection", "GoneException", http_status_code=410)
        outcome = notify_dead_letter(
            json.dumps(sns_notification()),
            connection_factory=lambda address: Connection(client, address.connection_id),
            settings=Settings.from_env(),
            dynamodb=aws.dynamodb,
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


def test_a_prompt_that_cannot_be_kept_goes_back_to_the_dead_letter_queue(
    aws, closed, lambda_context, monkeypatch
):
    monkeypatch.setenv(
        "FAILED_QUEUE_URL", "https://sqs.us-east-1.amazonaws.com/123456789012/missing"
    )
    event = load_event("deadletter-sqs.json")
    assert run(event, lambda_context) == {
        "batchItemFailures": [{"itemIdentifier": event["Records"][0]["messageId"]}]
    }
    assert_told_and_closed(closed)


def test_a_dead_lettered_resume_tells_its_client_to_resume_again(
    aws, failed_queue, closed, lambda_context
):
    from llmstream.core.envelope import ResumeEnvelope

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


# --------------------------------------------------------------------------- with the tables
#
# The request's own record says whether its client was told. The case only the record can
# answer: an invocation killed mid-stream with no retry left.


@pytest.fixture
def deployed(aws, mock_llm, failed_queue, closed, lambda_context, monkeypatch):
    """The tables of a deployed stack, a connected client, and its one prompt published."""
    for key, value in {
        "MAX_CONCURRENT_STREAMS": "1",
        "LLM_BASE_URL": mock_llm.base_url,
        "MIN_FRAME_INTERVAL_MS": "0",
    }.items():
        monkeypatch.setenv(key, value)
    mock_llm.reset()
    load_handler("connect").lambda_handler(load_event("connect.json"), lambda_context)
    assert ask("#mock tokens=50 rate=0", lambda_context)["type"] == "accepted"
    [notification] = aws.published()
    sns = load_event("stream-sns.json")
    sns["Records"][0]["Sns"]["Message"] = notification["Message"]
    return sns


def ask(prompt: str, context) -> dict:
    event = load_event("send-message.json")
    body = {"action": "sendMessage", "prompt": prompt, "requestId": uuid.uuid4().hex}
    event["body"] = json.dumps(body)
    return json.loads(load_handler("message").lambda_handler(event, context)["body"])


def killed_mid_stream(sns: dict, context, monkeypatch) -> None:
    """The stream function dies after a start and a delta, as the runtime kills an invocation
    that runs out of memory or time: no frame, no settling, no retry left."""
    from llmstream.core.protocol import start_frame
    from llmstream.stream import answer

    class Killed(BaseException):
        pass

    def die(envelope, provider, sender, **kwargs):
        sender.send(start_frame(envelope.request_id, envelope.model))
        sender.delta("half an ans")
        sender.close()
        raise Killed

    with monkeypatch.context() as m:
        m.setattr(answer, "stream_answer", die)
        with pytest.raises(Killed):
            load_handler("stream").lambda_handler(sns, context)


def lapse_lease(aws, sns: dict) -> None:
    doc = json.loads(sns["Records"][0]["Sns"]["Message"])
    aws.dynamodb.update_item(
        TableName="frames",
        Key={"requestId": {"S": f"anon#{doc['requestId']}"}, "seq": {"N": "-1"}},
        UpdateExpression="SET leaseUntil = :past",
        ExpressionAttributeValues={":past": {"N": "1"}},
    )


def killed_record(sns: dict) -> str:
    """Lambda's on-failure record of an invocation the runtime killed (no retries left)."""
    return json.dumps(
        destination_record(
            "RetriesExhausted",
            requestPayload=sns,
            responseContext={"statusCode": 200, "functionError": "Unhandled"},
            responsePayload={
                "errorType": "Runtime.ExitError",
                "errorMessage": "RequestId: c0a2d6e4 Error: Runtime exited with error: "
                "signal: killed",
            },
        )
    )


def request_id(sns: dict) -> str:
    return json.loads(sns["Records"][0]["Sns"]["Message"])["requestId"]


def test_a_stream_killed_with_no_retry_left_has_its_client_told_by_the_dead_letter_function(
    aws, deployed, failed_queue, closed, lambda_context, monkeypatch
):
    killed_mid_stream(deployed, lambda_context, monkeypatch)
    assert [f["type"] for f in frames_posted(CONNECTION)] == ["start", "delta"]
    lapse_lease(aws, deployed)
    body = killed_record(deployed)

    assert run(sqs_event(body), lambda_context) == {"batchItemFailures": []}
    frames = frames_posted(CONNECTION)
    assert [f["type"] for f in frames] == ["start", "delta", "error"]
    assert frames[-1] == {
        "type": "error",
        "requestId": request_id(deployed),
        "code": "internal",
        "message": "the answer was interrupted; send the prompt again",
    }
    assert closed == [CONNECTION]
    assert kept(aws, failed_queue) == [body]
    # A client that resumes the request is told the same, from its record.
    control = aws.dynamodb.get_item(
        TableName="frames",
        Key={"requestId": {"S": f"anon#{request_id(deployed)}"}, "seq": {"N": "-1"}},
    )["Item"]
    assert control["status"]["S"] == "failed"
    assert json.loads(control["final"]["S"]) == frames[-1]
    # The stream slot the prompt held is free again: the next prompt is accepted.
    assert ask("again", lambda_context)["type"] == "accepted"


def test_a_dead_letter_seen_twice_tells_its_client_once(
    aws, deployed, failed_queue, closed, lambda_context, monkeypatch
):
    killed_mid_stream(deployed, lambda_context, monkeypatch)
    lapse_lease(aws, deployed)
    body = killed_record(deployed)
    run(sqs_event(body), lambda_context)
    run(sqs_event(body), lambda_context)  # SQS delivers at least once
    assert [f["type"] for f in frames_posted(CONNECTION)] == ["start", "delta", "error"]
    assert closed == [CONNECTION]


def test_a_request_still_held_by_a_live_invocation_goes_back_to_the_queue_untold(
    aws, deployed, failed_queue, closed, lambda_context, monkeypatch
):
    killed_mid_stream(deployed, lambda_context, monkeypatch)  # its lease has not run out yet
    other = json.dumps(destination_record("EventAgeExceeded"))
    event = sqs_event(killed_record(deployed), other)
    assert run(event, lambda_context) == {"batchItemFailures": [{"itemIdentifier": "m-0"}]}
    # Only the other message was settled: its client (the same connection here) was told
    # that its prompt never started, and it alone was kept.
    assert [f["message"] for f in frames_posted(CONNECTION) if f["type"] == "error"] == [
        "the answer could not be started; send the prompt again"
    ]
    assert kept(aws, failed_queue) == [other]
    # Once the lease has lapsed, the message coming round again is settled.
    lapse_lease(aws, deployed)
    assert run(sqs_event(killed_record(deployed)), lambda_context) == {"batchItemFailures": []}
    assert "interrupted" in frames_posted(CONNECTION)[-1]["message"]


def test_a_request_that_failed_on_our_side_is_not_told_twice(
    aws, deployed, failed_queue, closed, lambda_context, monkeypatch
):
    from llmstream.stream import streaming
    from llmstream.stream.worker import RequestFailed

    def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    with monkeypatch.context() as m:
        m.setattr(streaming, "build_messages", broken)
        with pytest.raises(RequestFailed):
            load_handler("stream").lambda_handler(deployed, lambda_context)
    told = frames_posted(CONNECTION)
    assert told[-1]["code"] == "internal"
    # Whatever Lambda's record says (here: that the function never answered).
    body = json.dumps(destination_record("RetriesExhausted", requestPayload=deployed))
    assert run(sqs_event(body), lambda_context) == {"batchItemFailures": []}
    assert frames_posted(CONNECTION) == told
    assert kept(aws, failed_queue) == [body]


def test_a_prompt_dead_lettered_unrun_is_settled_so_a_late_delivery_never_streams_it(
    aws, deployed, failed_queue, closed, mock_llm, lambda_context
):
    from llmstream.stream.worker import RequestFailed

    body = json.dumps(destination_record("EventAgeExceeded", requestPayload=deployed))
    run(sqs_event(body), lambda_context)
    assert frames_posted(CONNECTION)[-1]["message"] == (
        "the answer could not be started; send the prompt again"
    )
    with pytest.raises(RequestFailed):  # a duplicate SNS delivery, after the client was told
        load_handler("stream").lambda_handler(deployed, lambda_context)
    assert mock_llm.requests == []
    assert ask("again", lambda_context)["type"] == "accepted"  # the slot was given back


def test_an_unreachable_frames_table_sends_the_message_round_again(
    aws, deployed, failed_queue, closed, lambda_context, monkeypatch
):
    monkeypatch.setenv("FRAMES_TABLE", "missing")
    body = json.dumps(destination_record("EventAgeExceeded", requestPayload=deployed))
    unreadable = "not a prompt"  # needs no table: kept at once
    assert run(sqs_event(body, unreadable), lambda_context) == {
        "batchItemFailures": [{"itemIdentifier": "m-0"}]
    }
    # Every message failed: each goes back, and the function itself does not fail.
    assert run(sqs_event(body, body), lambda_context) == {
        "batchItemFailures": [{"itemIdentifier": "m-0"}, {"itemIdentifier": "m-1"}]
    }
    assert frames_posted(CONNECTION) == []
    assert kept(aws, failed_queue) == [unreadable]
