"""template.yaml is valid, least-privilege and wired the way the code expects; events/ match it.

The tests marked ``sam`` need the AWS SAM CLI on PATH (and python3.13 for ``sam build``); they
are skipped, with the reason shown, only when ``sam`` cannot be found.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cfnlint.decode import decode
from llmstream.core.envelope import parse_envelope
from llmstream.core.protocol import Action
from llmstream.core.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "template.yaml"
EVENTS = ROOT / "events"

# Actions that IAM cannot scope to a resource; only these may be granted on "*".
UNSCOPABLE_ACTIONS = {
    "xray:PutTraceSegments",
    "xray:PutTelemetryRecords",
    "xray:GetSamplingRules",
    "xray:GetSamplingTargets",
    "cloudwatch:PutMetricData",
}
# AWS managed policies SAM attaches by itself (logging; X-Ray for Tracing: Active).
ALLOWED_MANAGED_POLICIES = {
    "arn:aws:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole",
    "arn:aws:iam::aws:policy/AWSXrayWriteOnlyAccess",
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
# Functions that post to connections: the stream functions, and the one that tells the clients
# of dead-lettered prompts (it only posts and closes).
CONNECTION_MANAGERS = {
    **dict.fromkeys(STREAM_FUNCTIONS, ("POST", "DELETE", "GET")),
    "DeadLetterFunction": ("POST", "DELETE"),
}
# Settings that the code reads but the template leaves at the code's default on purpose.
SETTINGS_WITH_CODE_DEFAULTS = {"MAX_MESSAGES", "MANAGEMENT_ENDPOINT_TEMPLATE", "MAX_FRAME_BYTES"}
# Variables the template sets that Settings does not read (handlers and Powertools do).
ENV_READ_ELSEWHERE = {
    "RATE_LIMIT_PER_MINUTE",
    "MAX_CONCURRENT_STREAMS",
    "PRINCIPAL_RATE_LIMIT_PER_MINUTE",
    "AUTH_MODE",
    "AUTH_JWT_ISSUER",
    "AUTH_JWT_AUDIENCE",
    "AUTH_JWKS_URL",
    "AUTH_HMAC_SECRET_NAME",
    "POWERTOOLS_SERVICE_NAME",
    "POWERTOOLS_METRICS_NAMESPACE",
    "POWERTOOLS_LOG_LEVEL",
    "POWERTOOLS_LOGGER_LOG_EVENT",
}
EXECUTE_API = "arn:${AWS::Partition}:execute-api:${AWS::Region}:${AWS::AccountId}:${WebSocketApi}"


# --------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    tpl, matches = decode(str(TEMPLATE))
    assert not matches, [str(m) for m in matches]
    assert tpl is not None
    return tpl


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


def grants(props: dict[str, Any]) -> list[tuple[set[str], list[Any]]]:
    """(actions, resources) of every Allow a SAM function's Policies may grant.

    Policy templates are expanded to their actions and their one scoping parameter.
    """
    out: list[tuple[set[str], list[Any]]] = []
    for item in as_list(props.get("Policies", [])):
        for policy in branches(item):
            assert isinstance(policy, dict), f"managed policy {policy!r}: use a scoped template"
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
    return set().union(*(actions for actions, _ in grants(props)))


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


def cfn_lint_cli() -> str:
    beside = Path(sys.executable).parent / "cfn-lint"
    found = str(beside) if beside.exists() else shutil.which("cfn-lint")
    assert found, "cfn-lint is a dev dependency; install requirements-dev.txt"
    return found


# --------------------------------------------------------------------------- validity


def test_template_passes_cfn_lint_with_no_findings() -> None:
    run = subprocess.run(
        [cfn_lint_cli(), str(TEMPLATE)], capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0 and not run.stdout.strip(), run.stdout + run.stderr


@pytest.mark.sam
def test_sam_validate_lint_passes() -> None:
    run = subprocess.run(
        [sam_cli(), "validate", "--lint", "--template-file", str(TEMPLATE)],
        cwd=ROOT,
        env=sam_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout + run.stderr


_TRANSLATE = """
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


@pytest.fixture(scope="module")
def synthesized() -> dict[str, Any]:
    """The CloudFormation that the SAM transform makes of template.yaml."""
    python = samtranslator_python()
    if python is None:
        sam_cli()  # skips when sam is missing
        pytest.skip("samtranslator is importable neither here nor from the SAM CLI's interpreter")
    run = subprocess.run(
        [python, "-c", _TRANSLATE, str(TEMPLATE)],
        env=sam_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)


@pytest.mark.sam
def test_sam_transform_accepts_the_template_and_its_output_lints_clean(
    synthesized: dict[str, Any], tmp_path: Path
) -> None:
    # cfn-lint and `sam validate --lint` check SAM resources against a schema; only the real
    # transform catches what it refuses (e.g. two policy types in one Fn::If).
    out = tmp_path / "synthesized.json"
    out.write_text(json.dumps(synthesized))
    run = subprocess.run(
        # W2001: SAM inlines the defaults of the EventInvokeConfig parameters.
        [cfn_lint_cli(), "--ignore-checks", "W2001", "--", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout + run.stderr


@pytest.mark.sam
def test_synthesized_roles_grant_no_scopable_action_on_every_resource(
    synthesized: dict[str, Any],
) -> None:
    problems = []
    roles = resources(synthesized, "AWS::IAM::Role")
    assert roles
    for name, role in roles.items():
        props = role["Properties"]
        extra = set(props.get("ManagedPolicyArns", [])) - ALLOWED_MANAGED_POLICIES
        problems += [f"{name}: managed policy {arn}" for arn in extra]
        for item in props.get("Policies", []):
            for policy in branches(item):
                for statement in as_list(policy["PolicyDocument"]["Statement"]):
                    problems += check_statement(f"{name}/{policy['PolicyName']}", statement)
    assert not problems, problems


@pytest.mark.sam
def test_sam_build_succeeds_and_the_layer_holds_llmstream_for_the_target_architecture(
    tmp_path: Path, template: dict[str, Any], record_property: Any
) -> None:
    sam = sam_cli()
    assert shutil.which("python3.13"), "sam build needs python3.13 on PATH (see the Makefile)"
    build = tmp_path / "build"
    started = time.monotonic()
    run = subprocess.run(
        [
            sam,
            "build",
            "--template-file",
            str(TEMPLATE),
            "--build-dir",
            str(build),
            # samconfig.toml turns caching on; cached builds keep dependencies in ./.aws-sam.
            "--no-cached",
        ],
        cwd=ROOT,
        env=sam_env(),
        capture_output=True,
        text=True,
        timeout=1200,
    )
    elapsed = time.monotonic() - started
    record_property("sam_build_seconds", round(elapsed, 1))
    print(f"sam build took {elapsed:.1f}s")
    assert run.returncode == 0, run.stdout + run.stderr

    for name in functions(template):
        assert (build / name).is_dir(), f"{name} was not built"
    layer = build / "StreamLayer" / "python"
    for module in ("core/protocol", "core/envelope", "core/settings", "stream/worker"):
        assert (layer / "llmstream" / f"{module}.py").is_file()

    # Native wheels must match the architecture the functions run on, and Python 3.13.
    arch = {"arm64": "aarch64", "x86_64": "x86_64"}[
        template["Parameters"]["Architecture"]["Default"]
    ]
    native = [so.name for so in layer.rglob("*.so") if "-linux-gnu" in so.name]
    assert native, "expected compiled extensions (pydantic-core, jiter) in the layer"
    wrong = [so for so in native if arch not in so or "cpython-313" not in so]
    assert not wrong, wrong
    for wheel in layer.glob("*.dist-info/WHEEL"):
        for tag in re.findall(r"^Tag: (\S+)$", wheel.read_text(), re.M):
            python_tag, abi, platform = tag.split("-", 2)
            if platform != "any":
                assert arch in platform, f"{wheel.parent.name}: {tag}"
            if abi.startswith("cp"):
                assert abi == "cp313", f"{wheel.parent.name}: {tag}"


# --------------------------------------------------------------------------- least privilege


def test_no_policy_statement_grants_a_scopable_action_on_every_resource(
    template: dict[str, Any],
) -> None:
    problems = []
    for name, fn in functions(template).items():
        for actions, scope in grants(fn["Properties"]):
            problems += check_statement(
                name, {"Effect": "Allow", "Action": sorted(actions), "Resource": scope}
            )
    for kind in (
        "AWS::IAM::Role",
        "AWS::IAM::Policy",
        "AWS::IAM::ManagedPolicy",
        "AWS::SNS::TopicPolicy",
        "AWS::SQS::QueuePolicy",
    ):
        for name, res in resources(template, kind).items():
            props = res["Properties"]
            documents = [props.get("PolicyDocument")] + [
                p["PolicyDocument"] for p in props.get("Policies", [])
            ]
            for document in filter(None, documents):
                for statement in as_list(document["Statement"]):
                    problems += check_statement(name, statement)
    for name, res in resources(template, "AWS::XRay::ResourcePolicy").items():
        text = sub_text(res["Properties"]["PolicyDocument"]) or res["Properties"]["PolicyDocument"]
        document = json.loads(re.sub(r"\$\{[^}]+\}", "x", text))
        for statement in as_list(document["Statement"]):
            problems += check_statement(name, statement)
    assert not problems, problems


def test_manage_connections_is_scoped_to_this_api_stage(template: dict[str, Any]) -> None:
    for name, methods in CONNECTION_MANAGERS.items():
        scopes = [
            sub_text(r)
            for actions, rs in grants(template["Resources"][name]["Properties"])
            if "execute-api:ManageConnections" in actions
            for r in rs
        ]
        assert sorted(scopes) == sorted(
            f"{EXECUTE_API}/${{StageName}}/{method}/@connections/*" for method in methods
        ), (name, scopes)


def test_only_the_stream_and_dead_letter_functions_may_manage_connections(
    template: dict[str, Any],
) -> None:
    managers = {
        name
        for name in functions(template)
        if any(a.startswith("execute-api:") for a in actions_of(template, name))
    }
    assert managers == set(CONNECTION_MANAGERS)


def test_message_function_cannot_manage_connections_or_read_secrets(
    template: dict[str, Any],
) -> None:
    actions = actions_of(template, "MessageFunction")
    assert not [a for a in actions if a.startswith(("execute-api:", "secretsmanager:", "bedrock:"))]


def test_message_function_publishes_only_to_the_prompt_topic_and_uses_only_connections(
    template: dict[str, Any],
) -> None:
    granted = grants(template["Resources"]["MessageFunction"]["Properties"])
    scopes: dict[str, list[Any]] = {}
    for actions, scope in granted:
        for service in sorted({action.split(":")[0] for action in actions}):
            scopes.setdefault(service, []).extend(scope)
    assert scopes == {
        "dynamodb": [{"Ref": "ConnectionsTable"}, {"Fn::GetAtt": ["FramesTable", "Arn"]}],
        "sns": [{"Fn::GetAtt": ["PromptTopic", "TopicName"]}],
    }
    # Control items only (create, cancel, resume): no Query, so never the stored frames.
    (frames,) = [a for a, scope in granted if scope == [{"Fn::GetAtt": ["FramesTable", "Arn"]}]]
    assert frames == {
        "dynamodb:GetItem",
        "dynamodb:PutItem",
        "dynamodb:UpdateItem",
        "dynamodb:DeleteItem",
    }


def test_stream_function_reads_only_the_llm_api_key_secret_and_one_bedrock_model(
    template: dict[str, Any],
) -> None:
    props = template["Resources"]["StreamFunction"]["Properties"]
    secrets = [
        s
        for actions, scope in grants(props)
        if any("secretsmanager" in a for a in actions)
        for s in scope
    ]
    assert [sub_text(s) for s in secrets] == [
        "arn:${AWS::Partition}:secretsmanager:${AWS::Region}:${AWS::AccountId}"
        ":secret:${LlmApiKeySecretName}-??????"
    ]
    for name in STREAM_FUNCTIONS:
        models = [
            sub_text(s)
            for actions, scope in grants(template["Resources"][name]["Properties"])
            if any(a.startswith("bedrock:") for a in actions)
            for s in scope
        ]
        assert models == [
            "arn:${AWS::Partition}:bedrock:${AWS::Region}::foundation-model/${BedrockModelId}"
        ], name
        assert {a for a in actions_of(template, name) if a.startswith("bedrock:")} == {
            "bedrock:InvokeModelWithResponseStream"
        }


def test_only_the_message_function_role_may_publish_to_the_prompt_topic(
    template: dict[str, Any],
) -> None:
    (policy,) = resources(template, "AWS::SNS::TopicPolicy").values()
    props = policy["Properties"]
    assert props["Topics"] == [{"Ref": "PromptTopic"}]
    role = {"Fn::GetAtt": ["MessageFunctionRole", "Arn"]}
    allows = [s for s in props["PolicyDocument"]["Statement"] if s["Effect"] == "Allow"]
    denies = [s for s in props["PolicyDocument"]["Statement"] if s["Effect"] == "Deny"]
    assert [(s["Principal"], s["Action"]) for s in allows] == [({"AWS": role}, "sns:Publish")]
    # Everyone else is denied Publish, and nothing but Publish (SNS still delivers to Lambda).
    assert [(s["Action"], s["Condition"]) for s in denies] == [
        ("sns:Publish", {"ArnNotEquals": {"aws:PrincipalArn": role}})
    ]


def test_dead_letter_queue_accepts_messages_only_from_the_prompt_topic(
    template: dict[str, Any],
) -> None:
    (policy,) = resources(template, "AWS::SQS::QueuePolicy").values()
    (statement,) = policy["Properties"]["PolicyDocument"]["Statement"]
    assert statement["Principal"] == {"Service": "sns.amazonaws.com"}
    assert statement["Action"] == "sqs:SendMessage"
    assert statement["Condition"] == {"ArnEquals": {"aws:SourceArn": {"Ref": "PromptTopic"}}}


def test_no_environment_variable_holds_a_secret(template: dict[str, Any]) -> None:
    params = template["Parameters"]
    variables = dict(template["Globals"]["Function"]["Environment"]["Variables"])
    for fn in functions(template).values():
        variables |= fn["Properties"].get("Environment", {}).get("Variables", {})
    secretish = {"KEY", "SECRET", "TOKEN", "PASSWORD", "PASSWD", "CREDENTIALS"}
    for name, value in variables.items():
        if not secretish & set(name.split("_")):
            continue
        # Only the NAME of a Secrets Manager secret, taken from a parameter.
        assert isinstance(value, dict) and set(value) == {"Ref"}, (name, value)
        param = value["Ref"]
        assert param.endswith(("SecretName", "SecretArn")), (name, param)
        assert re.fullmatch(r"[A-Za-z0-9/_+=.@-]+", str(params[param].get("Default", "x")))


def test_template_text_holds_no_credentials() -> None:
    text = TEMPLATE.read_text()
    for pattern in (
        r"sk-[A-Za-z0-9_-]{20,}",  # OpenAI-style keys
        r"AKIA[0-9A-Z]{16}",  # AWS access key IDs
        r"-----BEGIN [A-Z ]*PRIVATE KEY-----",
        r"eyJ[A-Za-z0-9_-]{10,}\.eyJ",  # JWTs
    ):
        assert not re.search(pattern, text), pattern


# --------------------------------------------------------------------------- wiring


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
    secrets = [s for _, scope in grants(res["AuthorizerFunction"]["Properties"]) for s in scope]
    assert [sub_text(s) for s in secrets] == [
        "arn:${AWS::Partition}:secretsmanager:${AWS::Region}:${AWS::AccountId}"
        ":secret:${AuthHmacSecretName}-??????"
    ]


def test_stream_function_runs_for_up_to_fifteen_minutes(template: dict[str, Any]) -> None:
    for name in STREAM_FUNCTIONS:
        props = template["Resources"][name]["Properties"]
        assert props["Timeout"] == 900, name
        assert props["MemorySize"] == {"Ref": "StreamMemorySize"}, name
        reserved = list(branches(props["ReservedConcurrentExecutions"]))
        assert reserved == [{"Ref": "StreamReservedConcurrency"}], name


def test_failed_prompts_end_in_the_alarmed_dead_letter_queue(template: dict[str, Any]) -> None:
    dlq = {"Fn::GetAtt": ["StreamDeadLetterQueue", "Arn"]}
    for name in STREAM_FUNCTIONS:
        props = template["Resources"][name]["Properties"]
        config = props["EventInvokeConfig"]
        assert config["MaximumRetryAttempts"] == {"Ref": "StreamMaxRetryAttempts"}
        assert config["MaximumEventAgeInSeconds"] == {"Ref": "StreamMaxEventAgeSeconds"}
        assert config["DestinationConfig"]["OnFailure"] == {"Type": "SQS", "Destination": dlq}
        (event,) = props["Events"].values()
        assert event["Type"] == "SNS"
        assert event["Properties"]["RedrivePolicy"] == {"deadLetterTargetArn": dlq}
    alarm = template["Resources"]["StreamDeadLetterAlarm"]["Properties"]
    assert alarm["MetricName"] == "ApproximateNumberOfMessagesVisible"
    assert alarm["Dimensions"] == [
        {"Name": "QueueName", "Value": {"Fn::GetAtt": ["StreamFailedQueue", "QueueName"]}}
    ]
    assert alarm["ComparisonOperator"] == "GreaterThanThreshold" and alarm["Threshold"] == 0


def test_dead_letters_are_told_then_kept_in_the_alarmed_failed_queue(
    template: dict[str, Any],
) -> None:
    res = template["Resources"]
    props = res["DeadLetterFunction"]["Properties"]
    assert "Events" not in props  # a SAM SQS event would attach a policy on every queue
    (mapping,) = resources(template, "AWS::Lambda::EventSourceMapping").values()
    assert mapping["Properties"]["FunctionName"] == {"Ref": "DeadLetterFunction"}
    assert mapping["Properties"]["EventSourceArn"] == {
        "Fn::GetAtt": ["StreamDeadLetterQueue", "Arn"]
    }
    assert props["Environment"]["Variables"]["FAILED_QUEUE_URL"] == {"Ref": "StreamFailedQueue"}
    sqs = [
        (actions, scopes) for actions, scopes in grants(props) if any("sqs:" in a for a in actions)
    ]
    assert sorted(sqs, key=str) == sorted(
        [
            (
                {
                    "sqs:ReceiveMessage",
                    "sqs:DeleteMessage",
                    "sqs:ChangeMessageVisibility",
                    "sqs:GetQueueAttributes",
                },
                [{"Fn::GetAtt": ["StreamDeadLetterQueue", "Arn"]}],
            ),
            ({"sqs:SendMessage*"}, [{"Fn::GetAtt": ["StreamFailedQueue", "QueueName"]}]),
        ],
        key=str,
    )
    others = actions_of(template, "DeadLetterFunction") - set().union(*(a for a, _ in sqs))
    assert others == {
        "execute-api:ManageConnections",
        "dynamodb:GetItem",
        "dynamodb:PutItem",
        "dynamodb:UpdateItem",
    }
    tables = {
        table: actions
        for actions, scopes in grants(props)
        for scope in scopes
        if isinstance(scope, dict) and "Fn::GetAtt" in scope
        for table in [scope["Fn::GetAtt"][0]]
        if table.endswith("Table")
    }
    assert tables == {
        "IdempotencyTable": {"dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem"},
        "FramesTable": {"dynamodb:GetItem", "dynamodb:UpdateItem"},
        "ConnectionsTable": {"dynamodb:UpdateItem"},
    }
    # One message whose request is still held goes back to the queue alone.
    assert mapping["Properties"]["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    failed = res["StreamFailedQueue"]["Properties"]
    assert failed["SqsManagedSseEnabled"] is True and failed["MessageRetentionPeriod"] == 1209600
    dlq = res["StreamDeadLetterQueue"]["Properties"]
    # A message the function keeps failing on moves to the failed queue by itself, untold.
    assert dlq["RedrivePolicy"]["deadLetterTargetArn"] == {
        "Fn::GetAtt": ["StreamFailedQueue", "Arn"]
    }
    assert dlq["VisibilityTimeout"] >= 6 * props["Timeout"]


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
    stream_event = json.loads((EVENTS / "stream-sns.json").read_text())
    assert "provider" in stream_event["Records"][0]["Sns"]["MessageAttributes"]


def test_prompt_topic_is_encrypted_and_traced(template: dict[str, Any]) -> None:
    topic = template["Resources"]["PromptTopic"]["Properties"]
    assert topic["KmsMasterKeyId"] == "alias/aws/sns"
    assert topic["TracingConfig"] == "Active"


@pytest.mark.parametrize(
    ("table", "keys", "ttl"),
    [
        ("ConnectionsTable", [("connectionId", "S", "HASH")], "expiresAt"),
        ("IdempotencyTable", [("id", "S", "HASH")], "expiration"),
        (
            "ConversationsTable",
            [("conversationId", "S", "HASH"), ("turn", "N", "RANGE")],
            "expiresAt",
        ),
        ("FramesTable", [("requestId", "S", "HASH"), ("seq", "N", "RANGE")], "expiresAt"),
    ],
)
def test_tables_have_the_keys_and_ttl_the_code_expects(
    template: dict[str, Any], table: str, keys: list[tuple[str, str, str]], ttl: str
) -> None:
    props = template["Resources"][table]["Properties"]
    types = {a["AttributeName"]: a["AttributeType"] for a in props["AttributeDefinitions"]}
    assert [
        (k["AttributeName"], types[k["AttributeName"]], k["KeyType"]) for k in props["KeySchema"]
    ] == keys
    assert props["TimeToLiveSpecification"] == {"AttributeName": ttl, "Enabled": True}
    assert props["BillingMode"] == "PAY_PER_REQUEST"
    assert props["SSESpecification"] == {"SSEEnabled": True}


def test_connections_table_expires_items_through_ttl(template: dict[str, Any]) -> None:
    props = template["Resources"]["ConnectionsTable"]["Properties"]
    assert props["TimeToLiveSpecification"] == {"AttributeName": "expiresAt", "Enabled": True}
    env = template["Globals"]["Function"]["Environment"]["Variables"]
    assert env["CONNECTION_TTL_SECONDS"] == "7200"


def test_functions_share_runtime_tracing_json_logs_and_the_layer(template: dict[str, Any]) -> None:
    fn = template["Globals"]["Function"]
    assert fn["Runtime"] == "python3.13"
    assert fn["Architectures"] == [{"Ref": "Architecture"}]
    assert fn["Tracing"] == "Active"
    assert fn["LoggingConfig"] == {"LogFormat": "JSON"}
    assert fn["Layers"] == [{"Ref": "StreamLayer"}]
    layer = template["Resources"]["StreamLayer"]
    assert layer["Metadata"] == {
        "BuildMethod": "python3.13",
        "BuildArchitecture": {"Ref": "Architecture"},
    }
    assert layer["Properties"]["ContentUri"] == "layers/stream/"
    assert layer["Properties"]["CompatibleRuntimes"] == ["python3.13"]
    assert layer["Properties"]["CompatibleArchitectures"] == [{"Ref": "Architecture"}]
    for name, res in functions(template).items():
        props = res["Properties"]
        folder = props["CodeUri"]
        assert re.fullmatch(r"functions/\w+/", folder) and (ROOT / folder).is_dir(), name
        assert "Handler" not in props and "Runtime" not in props, name
        log_group = template["Resources"][props["LoggingConfig"]["LogGroup"]["Ref"]]
        assert log_group["Type"] == "AWS::Logs::LogGroup"
        assert log_group["Properties"]["RetentionInDays"] == {"Ref": "LogRetentionDays"}
        assert log_group.get("Condition") == res.get("Condition"), name


def test_template_sets_every_setting_the_code_reads(template: dict[str, Any]) -> None:
    class Recording(dict):
        asked: set[str] = set()

        def get(self, key: str, default: Any = None) -> Any:
            self.asked.add(key)
            return default

    env = Recording()
    Settings.from_env(env)
    variables = set(template["Globals"]["Function"]["Environment"]["Variables"])
    per_function = {
        name
        for fn in functions(template).values()
        for name in fn["Properties"].get("Environment", {}).get("Variables", {})
    }
    missing = env.asked - variables - per_function - SETTINGS_WITH_CODE_DEFAULTS
    assert not missing, (
        f"set these in template.yaml (Globals or a function; or list them as code defaults): "
        f"{missing}"
    )
    unknown = variables - env.asked - ENV_READ_ELSEWHERE
    assert not unknown, f"template sets variables nothing reads: {unknown}"
    for fn in functions(template).values():
        local = set(fn["Properties"].get("Environment", {}).get("Variables", {}))
        assert local <= env.asked | ENV_READ_ELSEWHERE, local


def test_outputs_name_the_url_topic_table_and_dead_letter_queue(template: dict[str, Any]) -> None:
    assert {
        "WebSocketURL",
        "PromptTopicArn",
        "ConnectionsTableName",
        "StreamDeadLetterQueueUrl",
    } <= set(template["Outputs"])


# --------------------------------------------------------------------------- events

# file -> (event source, route key)
EVENT_FILES = {
    "connect.json": ("CONNECT", "$connect"),
    "connect-authorized.json": ("CONNECT", "$connect"),
    "disconnect.json": ("DISCONNECT", "$disconnect"),
    "send-message.json": ("MESSAGE", "sendMessage"),
    "send-message-history.json": ("MESSAGE", "sendMessage"),
    "bad-message-empty-prompt.json": ("MESSAGE", "sendMessage"),
    "bad-message-not-json.json": ("MESSAGE", "$default"),
    "unknown-action.json": ("MESSAGE", "$default"),
    "cancel.json": ("MESSAGE", "cancel"),
    "resume.json": ("MESSAGE", "resume"),
    "stream-sns.json": ("SNS", None),
    "deadletter-sqs.json": ("SQS", None),
    "authorizer-request.json": ("AUTHORIZER", "$connect"),
}
REQUEST_CONTEXT_KEYS = {
    "routeKey",
    "eventType",
    "extendedRequestId",
    "requestTime",
    "messageDirection",
    "stage",
    "connectedAt",
    "requestTimeEpoch",
    "identity",
    "requestId",
    "domainName",
    "connectionId",
    "apiId",
}


def load_event(name: str) -> dict[str, Any]:
    return json.loads((EVENTS / name).read_text())


def test_every_event_file_is_known_and_documented() -> None:
    files = {p.name for p in EVENTS.glob("*.json")}
    assert files == set(EVENT_FILES)
    readme = (EVENTS / "README.md").read_text()
    for name in files:
        assert f"`{name}`" in readme, f"{name} is missing from events/README.md"


@pytest.mark.parametrize("name", sorted(EVENT_FILES))
def test_event_file_has_the_shape_of_its_source(name: str, template: dict[str, Any]) -> None:
    event = load_event(name)
    kind, route = EVENT_FILES[name]
    if kind == "SNS":
        (record,) = event["Records"]
        assert record["EventSource"] == "aws:sns"
        assert isinstance(record["Sns"]["Message"], str)
        return
    if kind == "SQS":
        (record,) = event["Records"]
        assert record["eventSource"] == "aws:sqs"
        assert hashlib.md5(record["body"].encode()).hexdigest() == record["md5OfBody"]
        return
    ctx = event["requestContext"]
    assert set(ctx) >= REQUEST_CONTEXT_KEYS, REQUEST_CONTEXT_KEYS - set(ctx)
    assert ctx["routeKey"] == route
    assert route in route_targets(template)
    assert ctx["messageDirection"] == "IN"
    assert ctx["domainName"] == f"{ctx['apiId']}.execute-api.us-east-1.amazonaws.com"
    if kind == "AUTHORIZER":
        assert event["type"] == "REQUEST"
        assert event["methodArn"].endswith(f":{ctx['apiId']}/{ctx['stage']}/$connect")
        assert event["queryStringParameters"]["token"]
        assert ctx["eventType"] == "CONNECT"
        return
    assert ctx["eventType"] == kind
    assert event["isBase64Encoded"] is False
    if kind == "CONNECT":
        assert {"headers", "multiValueHeaders", "queryStringParameters"} <= set(event)
    if kind == "MESSAGE":
        assert isinstance(event["body"], str) and "messageId" in ctx


@pytest.mark.parametrize(
    "name", sorted(n for n, (kind, _) in EVENT_FILES.items() if kind == "MESSAGE")
)
def test_message_event_is_on_the_route_its_body_selects(
    name: str, template: dict[str, Any]
) -> None:
    # API Gateway evaluates $request.body.action; no JSON or no matching route means $default.
    event = load_event(name)
    try:
        action = json.loads(event["body"]).get("action")
    except ValueError:
        action = None
    routes = set(route_targets(template))
    expected = action if action in routes else "$default"
    assert event["requestContext"]["routeKey"] == expected


def test_stream_event_carries_the_envelope_of_send_message() -> None:
    send = load_event("send-message.json")
    (record,) = load_event("stream-sns.json")["Records"]
    envelope = parse_envelope(record["Sns"]["Message"])
    ctx = send["requestContext"]
    body = json.loads(send["body"])
    assert envelope.connection_id == ctx["connectionId"]
    assert envelope.domain_name == ctx["domainName"]
    assert envelope.stage == ctx["stage"]
    assert envelope.request_id == body["requestId"]
    assert envelope.messages == ({"role": "user", "content": body["prompt"]},)
    attributes = record["Sns"]["MessageAttributes"]
    assert attributes == {
        key: {"Type": value["DataType"], "Value": value["StringValue"]}
        for key, value in envelope.message_attributes().items()
    }
