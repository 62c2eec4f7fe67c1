"""The local stack's route table, function limits and environment, as devstack reads them from
template.yaml, match the template as cfn-lint decodes it."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from devstack.mock_bedrock import MockBedrock
from devstack.routes import (
    AUTHORIZER_IDENTITY_SOURCE,
    ROUTE_SELECTION_EXPRESSION,
    ROUTES,
    STREAM_FILTER_ATTRIBUTE,
    select_route,
)
from devstack.stack import BEDROCK_MODEL_ID, LocalStack, StackConfig
from devstack.template import Template

TEMPLATE = Path(__file__).resolve().parents[2] / "template.yaml"


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    if not TEMPLATE.exists():
        pytest.skip("template.yaml is not written yet")
    from cfnlint.decode import decode

    decoded, problems = decode(str(TEMPLATE))
    assert not problems, problems
    return decoded


def _resources(template: dict[str, Any], kind: str) -> dict[str, dict[str, Any]]:
    return {k: v for k, v in template["Resources"].items() if v["Type"] == kind}


def _sub_refs(value: Any) -> list[str]:
    """Logical ids a ``!Sub`` names: ``${ConnectFunction.Arn}`` gives ConnectFunction."""
    text = value["Fn::Sub"] if isinstance(value, dict) else value
    return [m.split(".")[0] for m in re.findall(r"\$\{([^}]+)\}", text)]


def _resolve(template: dict[str, Any], value: Any) -> Any:
    """A ``!Ref`` to a parameter becomes its default; anything else stays as written."""
    if isinstance(value, dict) and set(value) == {"Ref"}:
        parameter = template["Parameters"].get(value["Ref"])
        return parameter["Default"] if parameter else value
    return value


def _evaluate(template: dict[str, Any], value: Any, conditions: set[str]) -> Any:
    """The value with parameters at their defaults and only ``conditions`` true (the
    intrinsics the functions' environments use)."""
    if not isinstance(value, dict):
        return value
    ((name, args),) = value.items()
    if name == "Ref":
        return _resolve(template, value)
    if name == "Fn::If":
        condition, then, otherwise = args
        return _evaluate(template, then if condition in conditions else otherwise, conditions)
    if name == "Fn::Join":
        return args[0].join(str(_evaluate(template, v, conditions)) for v in args[1])
    if name == "Fn::Sub":
        return re.sub(r"\$\{(\w+)\}", lambda m: _resolve(template, {"Ref": m[1]}), args)
    raise AssertionError(f"cannot evaluate {name}")


def _function_folder(template: dict[str, Any], logical_id: str) -> str:
    return template["Resources"][logical_id]["Properties"]["CodeUri"].strip("/").split("/")[-1]


def test_route_table_matches_the_templates_routes_and_integrations(
    template: dict[str, Any],
) -> None:
    (api,) = _resources(template, "AWS::ApiGatewayV2::Api").values()
    assert api["Properties"]["RouteSelectionExpression"] == ROUTE_SELECTION_EXPRESSION
    responses = {
        r["Properties"]["RouteId"]["Ref"]
        for r in _resources(template, "AWS::ApiGatewayV2::RouteResponse").values()
    }
    declared = {}
    for logical_id, route in _resources(template, "AWS::ApiGatewayV2::Route").items():
        props = route["Properties"]
        (integration,) = _sub_refs(props["Target"])
        uri = template["Resources"][integration]["Properties"]["IntegrationUri"]
        function = next(ref for ref in _sub_refs(uri) if ref.endswith("Function"))
        two_way = "RouteResponseSelectionExpression" in props and logical_id in responses
        declared[props["RouteKey"]] = (_function_folder(template, function), two_way)

    assert declared == {key: (r.function, r.two_way) for key, r in ROUTES.items()}


def test_function_timeouts_memory_and_async_retries_match_the_template(
    template: dict[str, Any],
) -> None:
    globals_ = template["Globals"]["Function"]
    # Every condition on, so every function the template declares is read.
    functions = Template(parameters={"AuthMode": "hmac", "EnableBedrockFanout": "true"}).functions()
    assert set(functions) == set(_resources(template, "AWS::Serverless::Function"))
    for logical_id, function in functions.items():
        props = template["Resources"][logical_id]["Properties"]
        assert _function_folder(template, logical_id) == function.folder
        assert props.get("Timeout", globals_["Timeout"]) == function.timeout
        assert (
            int(_resolve(template, props.get("MemorySize", globals_["MemorySize"])))
            == function.memory_mb
        )
        retries = props.get("EventInvokeConfig", {}).get("MaximumRetryAttempts")
        expected = 2 if retries is None else int(_resolve(template, retries))  # Lambda's default
        assert function.async_retries == expected, logical_id


def test_stream_subscription_filters_on_the_attribute_the_local_fanout_uses(
    template: dict[str, Any],
) -> None:
    event = template["Resources"]["StreamFunction"]["Properties"]["Events"]["Prompt"]["Properties"]
    assert set(event["FilterPolicy"]) == {STREAM_FILTER_ATTRIBUTE}
    assert event["FilterPolicyScope"] == "MessageAttributes"


def test_the_bedrock_fanout_adds_the_function_subscription_and_models_the_template_does(
    template: dict[str, Any],
) -> None:
    stack = LocalStack(StackConfig(bedrock_fanout=True, llm_model="gpt-4o-mini"))
    stack.mock_bedrock = MockBedrock()  # its endpoint is local wiring, not in the template
    resources = template["Resources"]
    bedrock, stream = resources["BedrockStreamFunction"], resources["StreamFunction"]
    assert bedrock["Condition"] == "BedrockFanout"
    assert template["Parameters"]["BedrockModelId"]["Default"] == BEDROCK_MODEL_ID
    assert _function_folder(template, "BedrockStreamFunction") == "stream"
    for key in ("Timeout", "MemorySize", "EventInvokeConfig"):
        assert bedrock["Properties"][key] == stream["Properties"][key], key

    prompt = bedrock["Properties"]["Events"]["Prompt"]["Properties"]
    (subscription,) = [s for s in stack.subscriptions() if s.function == "bedrock-stream"]
    assert subscription.filter_policy == prompt["FilterPolicy"] == {"provider": ["bedrock"]}
    assert subscription.filter_policy_scope == prompt["FilterPolicyScope"]

    def environment(logical_id: str) -> dict[str, str]:
        variables = resources[logical_id]["Properties"]["Environment"]["Variables"]
        return {k: _evaluate(template, v, {"BedrockFanout"}) for k, v in variables.items()}

    local = stack.function_env("bedrock-stream")
    assert local["AWS_ENDPOINT_URL_BEDROCK_RUNTIME"] == stack.mock_bedrock.endpoint_url
    assert local["LLM_PROVIDER"] == environment("BedrockStreamFunction")["LLM_PROVIDER"]
    message = environment("MessageFunction")
    for name in ("ALLOWED_MODELS", "MODEL_PROVIDERS"):
        assert stack.function_env("message")[name] == message[name], name
    assert stack.models() == ["gpt-4o-mini", BEDROCK_MODEL_ID]

    # Off, or when the main function is on Bedrock already, there is no fan-out.
    assert not LocalStack(StackConfig()).bedrock_fanout
    assert not LocalStack(
        StackConfig(bedrock_fanout=True, env={"LLM_PROVIDER": "bedrock"})
    ).bedrock_fanout


def test_authorizer_identity_source_matches_the_template(template: dict[str, Any]) -> None:
    (authorizer,) = _resources(template, "AWS::ApiGatewayV2::Authorizer").values()
    sources = authorizer["Properties"].get("IdentitySource")
    if AUTHORIZER_IDENTITY_SOURCE is None:
        assert sources is None
    else:
        kind, name = AUTHORIZER_IDENTITY_SOURCE
        assert sources == [f"route.request.{kind}.{name}"]


@pytest.mark.parametrize(
    ("body", "route"),
    [
        (json.dumps({"action": "sendMessage", "prompt": "hi"}), "sendMessage"),
        (json.dumps({"action": "cancel"}), "cancel"),
        (json.dumps({"action": "resume"}), "resume"),
        (json.dumps({"action": "dance"}), "$default"),
        (json.dumps({"action": "$connect"}), "$default"),
        (json.dumps({"action": 7}), "$default"),
        (json.dumps({"prompt": "no action"}), "$default"),
        (json.dumps(["sendMessage"]), "$default"),
        ("not json", "$default"),
        ("", "$default"),
    ],
)
def test_route_selection_uses_the_body_action_and_falls_back_to_default(
    body: str, route: str
) -> None:
    selected = select_route(body)
    assert selected is not None and selected.key == route


def test_without_a_default_route_an_unmatched_message_selects_nothing() -> None:
    routes = {k: v for k, v in ROUTES.items() if k != "$default"}
    assert select_route("not json", routes) is None
