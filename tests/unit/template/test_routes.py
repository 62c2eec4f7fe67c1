"""The WebSocket API's wiring: every protocol action has a route to the right function, with
its integration, its Lambda permission and (for client messages) a route response; $connect is
authorized when auth is on; the stream functions' subscriptions filter on the envelope."""

from __future__ import annotations

import json
from typing import Any

from llmstream.core.protocol import Action

from devstack.template import Template

from .cfn import EXECUTE_API, MESSAGE_ROUTES, load_event, resources, route_targets, sub_text


def test_every_protocol_action_has_a_route_and_extra_routes_reach_the_message_function(
    template: dict[str, Any],
) -> None:
    (api,) = resources(template, "AWS::ApiGatewayV2::Api").values()
    assert api["Properties"]["ProtocolType"] == "WEBSOCKET"
    assert api["Properties"]["RouteSelectionExpression"] == "$request.body.action"
    routes = set(route_targets(template))
    actions = {a.value for a in Action}
    assert actions <= routes, f"protocol actions without a route: {actions - routes}"
    # Any other route goes to the message function, which answers unknown_action if needed.
    assert routes - actions - {"$connect", "$disconnect"} <= set(MESSAGE_ROUTES)


def test_the_loader_finds_the_routes_the_local_gateway_serves(template: dict[str, Any]) -> None:
    # devstack's gateway takes its routes from devstack.template; they are these.
    routes = Template().routes()
    assert {key: r.function for key, r in routes.items()} == route_targets(template)
    assert {key for key, r in routes.items() if r.two_way} == set(MESSAGE_ROUTES)


def test_every_route_has_an_integration_and_a_lambda_permission(template: dict[str, Any]) -> None:
    targets = route_targets(template)
    assert targets["$connect"] == "ConnectFunction"
    assert targets["$disconnect"] == "DisconnectFunction"
    assert {targets[key] for key in MESSAGE_ROUTES} == {"MessageFunction"}
    permissions = [p["Properties"] for p in resources(template, "AWS::Lambda::Permission").values()]
    for key, function in targets.items():
        assert any(
            p["FunctionName"] == {"Ref": function}
            and p["Principal"] == "apigateway.amazonaws.com"
            and p["Action"] == "lambda:InvokeFunction"
            and sub_text(p["SourceArn"]) == f"{EXECUTE_API}/${{StageName}}/{key}"
            for p in permissions
        ), f"no permission for API Gateway to invoke {function} on route {key}"


def test_client_message_routes_answer_through_a_route_response(template: dict[str, Any]) -> None:
    routes = resources(template, "AWS::ApiGatewayV2::Route")
    by_key = {r["Properties"]["RouteKey"]: name for name, r in routes.items()}
    responses = {
        r["Properties"]["RouteId"]["Ref"]: r["Properties"]["RouteResponseKey"]
        for r in resources(template, "AWS::ApiGatewayV2::RouteResponse").values()
    }
    for key in MESSAGE_ROUTES:
        name = by_key[key]
        assert routes[name]["Properties"]["RouteResponseSelectionExpression"] == "$default", key
        assert responses.get(name) == "$default", key


def test_each_auth_mode_has_its_own_deployment_of_every_route(template: dict[str, Any]) -> None:
    # CloudFormation never redeploys a changed route; a deployment per AuthMode setting makes
    # turning auth on take effect instead of leaving the stage on an unauthenticated snapshot.
    everything = set(resources(template, "AWS::ApiGatewayV2::Route")) | set(
        resources(template, "AWS::ApiGatewayV2::RouteResponse")
    )
    deployments = resources(template, "AWS::ApiGatewayV2::Deployment")
    by_condition = {d["Condition"]: name for name, d in deployments.items()}
    assert set(by_condition) == {"AuthEnabled", "AuthDisabled"}
    for name, deployment in deployments.items():
        assert set(deployment["DependsOn"]) >= everything, name
    assert template["Conditions"]["AuthDisabled"] == {"Fn::Equals": [{"Ref": "AuthMode"}, "none"]}
    assert template["Conditions"]["AuthEnabled"] == {"Fn::Not": [{"Condition": "AuthDisabled"}]}
    (stage,) = resources(template, "AWS::ApiGatewayV2::Stage").values()
    assert stage["Properties"]["DeploymentId"] == {
        "Fn::If": [
            "AuthEnabled",
            {"Ref": by_condition["AuthEnabled"]},
            {"Ref": by_condition["AuthDisabled"]},
        ]
    }


def test_stage_is_the_parameter_and_is_throttled(template: dict[str, Any]) -> None:
    (stage,) = resources(template, "AWS::ApiGatewayV2::Stage").values()
    props = stage["Properties"]
    assert props["StageName"] == {"Ref": "StageName"}
    assert {"ThrottlingRateLimit", "ThrottlingBurstLimit"} <= set(props["DefaultRouteSettings"])
    url = sub_text(template["Outputs"]["WebSocketURL"]["Value"])
    assert url == "wss://${WebSocketApi}.execute-api.${AWS::Region}.amazonaws.com/${StageName}"


def test_authorizer_guards_only_connect_and_only_when_auth_is_on(template: dict[str, Any]) -> None:
    res = template["Resources"]
    (name,) = resources(template, "AWS::ApiGatewayV2::Authorizer")
    authorizer = res[name]
    assert authorizer["Condition"] == "AuthEnabled"
    assert authorizer["Properties"]["AuthorizerType"] == "REQUEST"
    # No identity source: API Gateway would demand it, and the token may come in a header instead.
    assert "IdentitySource" not in authorizer["Properties"]
    assert "${AuthorizerFunction.Arn}" in sub_text(authorizer["Properties"]["AuthorizerUri"])
    assert res["AuthorizerFunction"]["Condition"] == "AuthEnabled"
    assert template["Parameters"]["AuthMode"]["Default"] == "none"
    guarded = {
        r["Properties"]["RouteKey"]
        for r in resources(template, "AWS::ApiGatewayV2::Route").values()
        if "AuthorizerId" in r["Properties"]
    }
    assert guarded == {"$connect"}
    permissions = [
        p
        for p in resources(template, "AWS::Lambda::Permission").values()
        if p["Properties"]["FunctionName"] == {"Ref": "AuthorizerFunction"}
    ]
    assert [sub_text(p["Properties"]["SourceArn"]) for p in permissions] == [
        f"{EXECUTE_API}/authorizers/${{{name}}}"
    ]
    # Which secret it may read: test_iam.py's test_authorizer_reads_only_the_hmac_signing_secret.


def test_stream_subscriptions_filter_on_the_envelope_provider_attribute(
    template: dict[str, Any],
) -> None:
    expected = {"StreamFunction": [{"Ref": "LlmProvider"}], "BedrockStreamFunction": ["bedrock"]}
    for name, providers in expected.items():
        (event,) = template["Resources"][name]["Properties"]["Events"].values()
        assert event["Properties"]["Topic"] == {"Ref": "PromptTopic"}
        assert event["Properties"]["FilterPolicyScope"] == "MessageAttributes"
        assert event["Properties"]["FilterPolicy"] == {"provider": providers}
    bedrock = template["Resources"]["BedrockStreamFunction"]
    assert bedrock["Condition"] == "BedrockFanout"
    assert bedrock["Properties"]["Environment"]["Variables"]["LLM_PROVIDER"] == "bedrock"
    # The attribute the filters match is one the envelope sets.
    stream_event = load_event("stream-sns.json")
    assert "provider" in stream_event["Records"][0]["Sns"]["MessageAttributes"]
    assert json.loads(stream_event["Records"][0]["Sns"]["Message"])["provider"] == "openai"
