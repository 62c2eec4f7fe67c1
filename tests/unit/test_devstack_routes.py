"""The local stack's route table, function limits and environment match template.yaml."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from devstack.routes import (
    AUTHORIZER_IDENTITY_SOURCE,
    FUNCTIONS,
    ROUTE_SELECTION_EXPRESSION,
    ROUTES,
    STREAM_FILTER_ATTRIBUTE,
    select_route,
)
from devstack.stack import TABLES, TEMPLATE_DEFAULTS

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
    for folder, defaults in FUNCTIONS.items():
        props = template["Resources"][defaults.logical_id]["Properties"]
        assert _function_folder(template, defaults.logical_id) == folder
        assert props.get("Timeout", globals_["Timeout"]) == defaults.timeout
        assert (
            int(_resolve(template, props.get("MemorySize", globals_["MemorySize"])))
            == defaults.memory_mb
        )
        retries = props.get("EventInvokeConfig", {}).get("MaximumRetryAttempts")
        expected = 2 if retries is None else int(_resolve(template, retries))  # Lambda's default
        assert defaults.async_retries == expected, folder


def test_stream_subscription_filters_on_the_attribute_the_local_fanout_uses(
    template: dict[str, Any],
) -> None:
    event = template["Resources"]["StreamFunction"]["Properties"]["Events"]["Prompt"]["Properties"]
    assert set(event["FilterPolicy"]) == {STREAM_FILTER_ATTRIBUTE}
    assert event["FilterPolicyScope"] == "MessageAttributes"


def test_authorizer_identity_source_matches_the_template(template: dict[str, Any]) -> None:
    (authorizer,) = _resources(template, "AWS::ApiGatewayV2::Authorizer").values()
    sources = authorizer["Properties"].get("IdentitySource")
    if AUTHORIZER_IDENTITY_SOURCE is None:
        assert sources is None
    else:
        kind, name = AUTHORIZER_IDENTITY_SOURCE
        assert sources == [f"route.request.{kind}.{name}"]


def test_local_function_environment_has_every_global_variable_with_its_default(
    template: dict[str, Any],
) -> None:
    variables = template["Globals"]["Function"]["Environment"]["Variables"]
    wired_locally = {"PROMPT_TOPIC_ARN", "LLM_BASE_URL", *TABLES}
    assert set(variables) == set(TEMPLATE_DEFAULTS) | wired_locally
    for name, value in variables.items():
        value = _resolve(template, value)
        if name in TEMPLATE_DEFAULTS and isinstance(value, (str, int)):
            assert TEMPLATE_DEFAULTS[name] == str(value), name


def test_local_tables_have_the_templates_key_schemas_and_ttl(template: dict[str, Any]) -> None:
    variables = template["Globals"]["Function"]["Environment"]["Variables"]
    for env_name, table in TABLES.items():
        props = template["Resources"][variables[env_name]["Ref"]]["Properties"]
        types = {a["AttributeName"]: a["AttributeType"] for a in props["AttributeDefinitions"]}
        keys = [
            (k["AttributeName"], types[k["AttributeName"]], k["KeyType"])
            for k in props["KeySchema"]
        ]
        assert keys == table["keys"], env_name
        assert props["TimeToLiveSpecification"]["AttributeName"] == table["ttl"], env_name


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
