"""What the template tests share: walking the template's resources, policies and intrinsics,
and finding the tools they run (cfn-lint, the SAM CLI, checkov)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devstack.template import TEMPLATE

ROOT = TEMPLATE.parent
EVENTS = ROOT / "events"
POLICIES = ROOT / "policies"

# Actions that IAM cannot scope to a resource; only these may be granted on "*".
UNSCOPABLE_ACTIONS = {
    "xray:PutTraceSegments",
    "xray:PutTelemetryRecords",
    "xray:GetSamplingRules",
    "xray:GetSamplingTargets",
    "cloudwatch:PutMetricData",
}
# SAM policy templates we use, with the actions each grants. Each one takes the single
# resource it is scoped to as its only parameter.
POLICY_TEMPLATES = {
    "DynamoDBCrudPolicy": {
        "dynamodb:GetItem",
        "dynamodb:DeleteItem",
        "dynamodb:PutItem",
        "dynamodb:Scan",
        "dynamodb:Query",
        "dynamodb:UpdateItem",
        "dynamodb:BatchWriteItem",
        "dynamodb:BatchGetItem",
        "dynamodb:DescribeTable",
        "dynamodb:ConditionCheckItem",
    },
    "SNSPublishMessagePolicy": {"sns:Publish"},
    "AWSSecretsManagerGetSecretValuePolicy": {"secretsmanager:GetSecretValue"},
    "SQSSendMessagePolicy": {"sqs:SendMessage*"},
}
MESSAGE_ROUTES = ["sendMessage", "cancel", "resume", "$default"]
STREAM_FUNCTIONS = {"StreamFunction", "BedrockStreamFunction"}
EXECUTE_API = "arn:${AWS::Partition}:execute-api:${AWS::Region}:${AWS::AccountId}:${WebSocketApi}"


def resources(tpl: dict[str, Any], kind: str) -> dict[str, dict[str, Any]]:
    return {name: r for name, r in tpl["Resources"].items() if r["Type"] == kind}


def functions(tpl: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return resources(tpl, "AWS::Serverless::Function")


def branches(value: Any) -> Iterator[Any]:
    """Every value an Fn::If may take, nested Ifs flattened and AWS::NoValue dropped."""
    if isinstance(value, dict) and "Fn::If" in value:
        _, when_true, when_false = value["Fn::If"]
        yield from branches(when_true)
        yield from branches(when_false)
    elif value != {"Ref": "AWS::NoValue"}:
        yield value


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def sub_text(value: Any) -> str | None:
    """The format string of an Fn::Sub, or None."""
    if isinstance(value, dict) and "Fn::Sub" in value:
        sub = value["Fn::Sub"]
        return sub if isinstance(sub, str) else sub[0]
    return None


def attached(tpl: dict[str, Any], props: dict[str, Any]) -> list[str]:
    """The template's own managed policies that a function's Policies attach (``!Ref``)."""
    managed = resources(tpl, "AWS::IAM::ManagedPolicy")
    refs = [p.get("Ref") for item in as_list(props.get("Policies", [])) for p in branches(item)]
    return [ref for ref in refs if ref in managed]


def grants(tpl: dict[str, Any], props: dict[str, Any]) -> list[tuple[set[str], list[Any]]]:
    """(actions, resources) of every Allow a SAM function's Policies may grant.

    Policy templates are expanded to their actions and their one scoping parameter, and the
    template's managed policies that the function attaches to their statements.
    """
    out: list[tuple[set[str], list[Any]]] = []
    managed = resources(tpl, "AWS::IAM::ManagedPolicy")
    for item in as_list(props.get("Policies", [])):
        for policy in branches(item):
            assert isinstance(policy, dict), f"managed policy {policy!r}: use a scoped template"
            if policy.get("Ref") in managed:
                policy = managed[policy["Ref"]]["Properties"]["PolicyDocument"]
            if "Statement" in policy:
                for st in as_list(policy["Statement"]):
                    for s in branches(st):
                        if s.get("Effect") == "Allow":
                            out.append((set(as_list(s["Action"])), as_list(s["Resource"])))
                continue
            ((name, params),) = policy.items()
            assert name in POLICY_TEMPLATES, f"unknown policy template {name}: check its scope"
            ((_, scope),) = params.items()
            out.append((POLICY_TEMPLATES[name], [scope]))
    return out


def actions_of(tpl: dict[str, Any], function: str) -> set[str]:
    props = tpl["Resources"][function]["Properties"]
    return set().union(*(actions for actions, _ in grants(tpl, props)))


def check_statement(where: str, statement: dict[str, Any]) -> list[str]:
    """Problems with one policy statement: broad actions or scopable actions on "*"."""
    if statement.get("Effect") != "Allow":
        return []
    problems = []
    actions = set(as_list(statement.get("Action", [])))
    for action in actions:
        if action == "*" or action.endswith(":*"):
            problems.append(f"{where}: allows every action of {action}")
    if "*" in as_list(statement.get("Resource", [])):
        for action in sorted(actions - UNSCOPABLE_ACTIONS):
            problems.append(f"{where}: {action} on Resource '*'")
    return problems


def route_targets(tpl: dict[str, Any]) -> dict[str, str]:
    """Route key -> the logical ID of the function its integration invokes."""
    integrations = resources(tpl, "AWS::ApiGatewayV2::Integration")
    out = {}
    for route in resources(tpl, "AWS::ApiGatewayV2::Route").values():
        props = route["Properties"]
        target = sub_text(props["Target"])
        assert target and target.startswith("integrations/${"), props["Target"]
        integration = integrations[target.removeprefix("integrations/${").removesuffix("}")]
        assert integration["Properties"]["IntegrationType"] == "AWS_PROXY"
        uri = sub_text(integration["Properties"]["IntegrationUri"]) or ""
        found = re.search(r"/functions/\$\{(\w+)\.Arn\}/invocations$", uri)
        assert found, uri
        out[props["RouteKey"]] = found.group(1)
    return out


def load_event(name: str) -> dict[str, Any]:
    return json.loads((EVENTS / name).read_text())


# --------------------------------------------------------------------------- tools


def sam_env() -> dict[str, str]:
    env = dict(os.environ, SAM_CLI_TELEMETRY="0")
    env.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    env.setdefault("AWS_REGION", env["AWS_DEFAULT_REGION"])
    return env


def sam_cli() -> str:
    sam = shutil.which("sam")
    if sam is None:
        pytest.skip("the AWS SAM CLI ('sam') is not on PATH")
    return sam


def dev_tool(name: str) -> str:
    """A tool of requirements-dev.txt: beside this interpreter, or else on PATH."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    assert found, f"{name} is a dev dependency; install requirements-dev.txt"
    return found


def cfn_lint_cli() -> str:
    return dev_tool("cfn-lint")


TRANSLATE = """
import json, sys
from samtranslator.translator.transform import transform
from samtranslator.yaml_helper import yaml_parse

class NoManagedPolicies:
    def load(self):
        return {}

tpl = yaml_parse(open(sys.argv[1]).read())
for resource in tpl["Resources"].values():
    props = resource.get("Properties", {})
    for key in ("CodeUri", "ContentUri"):
        if key in props:
            props[key] = "s3://bucket/" + key
print(json.dumps(transform(tpl, {}, NoManagedPolicies())))
"""


def samtranslator_python() -> str | None:
    """An interpreter that can import samtranslator: ours, or the SAM CLI's own."""
    try:
        import samtranslator  # noqa: F401

        return sys.executable
    except ImportError:
        pass
    sam = shutil.which("sam")
    if sam is None:
        return None
    first_line = Path(sam).resolve().read_bytes()[:300].split(b"\n", 1)[0].decode(errors="replace")
    if not first_line.startswith("#!"):
        return None
    interpreter = first_line[2:].strip().split()[0]
    probe = subprocess.run([interpreter, "-c", "import samtranslator"], capture_output=True)
    return interpreter if probe.returncode == 0 else None
