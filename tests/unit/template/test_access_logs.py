"""The WebSocket stage writes one JSON access-log line per connect, message and disconnect: who,
which route, how it ended and why it failed; never what the client sent."""

from __future__ import annotations

import json
import re
from typing import Any

from .cfn import resources

# $context variables API Gateway offers WebSocket access logs (Configure logging for WebSocket
# APIs in API Gateway, API Gateway Developer Guide), those the format may use.
WEBSOCKET_VARIABLES = {
    "apiId",
    "authorize.error",
    "authorize.latency",
    "authorize.status",
    "authorizer.error",
    "authorizer.integrationLatency",
    "authorizer.integrationStatus",
    "authorizer.latency",
    "authorizer.principalId",
    "authorizer.requestId",
    "authorizer.status",
    "connectedAt",
    "connectionId",
    "domainName",
    "error.message",
    "error.responseType",
    "eventType",
    "extendedRequestId",
    "integration.error",
    "integration.integrationStatus",
    "integration.latency",
    "integration.requestId",
    "integration.status",
    "integrationLatency",
    "messageId",
    "requestId",
    "requestTime",
    "requestTimeEpoch",
    "routeKey",
    "stage",
    "status",
}
REQUIRED = {
    "requestId": "requestId",
    "connectionId": "connectionId",
    "routeKey": "routeKey",
    "status": "status",
    "integrationError": "integration.error",
    "authorizerError": "authorizer.error",
}


def access_log(template: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    (stage,) = resources(template, "AWS::ApiGatewayV2::Stage").values()
    settings = stage["Properties"]["AccessLogSettings"]
    return settings, json.loads(settings["Format"])


def test_the_stage_logs_access_as_json_with_request_connection_route_status_and_errors(
    template: dict[str, Any],
) -> None:
    _, fields = access_log(template)
    for key, variable in REQUIRED.items():
        assert fields.get(key) == f"$context.{variable}", key
    used = {v.removeprefix("$context.") for v in fields.values()}
    assert used <= WEBSOCKET_VARIABLES, used - WEBSOCKET_VARIABLES


def test_the_access_log_holds_no_message_content(template: dict[str, Any]) -> None:
    settings, fields = access_log(template)
    assert all(re.fullmatch(r"\$context\.[A-Za-z.]+", value) for value in fields.values())
    for text in (*fields, *fields.values()):
        assert not re.search(r"body|\$input", text, re.IGNORECASE), text
    assert "$input" not in settings["Format"] and "$context.messageBody" not in settings["Format"]


def test_access_logs_go_to_a_log_group_of_their_own_kept_log_retention_days(
    template: dict[str, Any],
) -> None:
    settings, _ = access_log(template)
    (group,) = settings["DestinationArn"]["Fn::GetAtt"][:1]
    log_group = template["Resources"][group]
    assert log_group["Type"] == "AWS::Logs::LogGroup" and "Condition" not in log_group
    assert log_group["Properties"]["RetentionInDays"] == {"Ref": "LogRetentionDays"}
    functions_groups = {
        r["Properties"]["LoggingConfig"]["LogGroup"]["Ref"]
        for r in resources(template, "AWS::Serverless::Function").values()
    }
    assert group not in functions_groups
