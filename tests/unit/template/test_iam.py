"""Who may do what: each function's grants are the ones its code needs, on its own resources.

The rules a scanner can check on every policy (no scopable action on Resource '*', no
service-wide action, ManageConnections only on this API stage and only through the template's
managed policies) are checkov custom policies in policies/, run by test_scanners.py. What stays
here is the wiring no scanner knows: which function holds which grant, on which resource.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest

from devstack.template import Template, load

from .cfn import (
    EXECUTE_API,
    ROOT,
    STREAM_FUNCTIONS,
    actions_of,
    as_list,
    attached,
    branches,
    check_statement,
    functions,
    grants,
    resources,
    sub_text,
)

# AWS managed policies SAM attaches by itself (logging; X-Ray for Tracing: Active).
ALLOWED_MANAGED_POLICIES = {
    "arn:aws:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole",
    "arn:aws:iam::aws:policy/AWSXrayWriteOnlyAccess",
}
# Functions that post to connections: the stream functions, and the one that tells the clients
# of dead-lettered prompts (it only posts and closes).
CONNECTION_MANAGERS = {
    **dict.fromkeys(STREAM_FUNCTIONS, ("POST", "DELETE", "GET")),
    "DeadLetterFunction": ("POST", "DELETE"),
}


@pytest.mark.sam
def test_synthesized_roles_attach_no_managed_policy_but_sams_own_and_the_templates(
    synthesized: dict[str, Any],
) -> None:
    # The roles' statements are checkov's (test_scanners.py); this is what the roles attach.
    ours = {json.dumps({"Ref": name}) for name in resources(synthesized, "AWS::IAM::ManagedPolicy")}
    roles = resources(synthesized, "AWS::IAM::Role")
    assert roles
    problems = []
    for name, role in roles.items():
        arns = role["Properties"].get("ManagedPolicyArns", [])
        extra = {a for a in arns if isinstance(a, str)} - ALLOWED_MANAGED_POLICIES
        extra |= {json.dumps(a) for a in arns if not isinstance(a, str)} - ours
        problems += [f"{name}: managed policy {arn}" for arn in extra]
    assert not problems, problems


def test_xray_resource_policy_grants_only_unscopable_actions_on_every_resource(
    template: dict[str, Any],
) -> None:
    # A policy document written as a JSON string: no scanner reads inside it.
    problems = []
    for name, res in resources(template, "AWS::XRay::ResourcePolicy").items():
        text = sub_text(res["Properties"]["PolicyDocument"]) or res["Properties"]["PolicyDocument"]
        document = json.loads(re.sub(r"\$\{[^}]+\}", "x", text))
        for statement in as_list(document["Statement"]):
            problems += check_statement(name, statement)
    assert not problems, problems


def test_each_connection_manager_attaches_the_connection_policies_its_code_needs(
    template: dict[str, Any],
) -> None:
    # That each managed policy is scoped to this API stage is CKV2_LLMSTREAM_1's; which
    # methods each function gets from them is the code's need: the stream functions probe.
    def method(resource: Any) -> str:
        found = re.search(r"/\$\{StageName\}/(\w+)/@connections/\*$", sub_text(resource) or "")
        assert found, resource
        return found.group(1)

    methods = {
        name: {
            method(r)
            for statement in as_list(policy["Properties"]["PolicyDocument"]["Statement"])
            for r in as_list(statement["Resource"])
        }
        for name, policy in resources(template, "AWS::IAM::ManagedPolicy").items()
    }
    for name, expected in CONNECTION_MANAGERS.items():
        props = template["Resources"][name]["Properties"]
        got = set().union(*(methods[p] for p in attached(template, props)))
        assert got == set(expected), (name, got)
        scopes = [
            sub_text(r)
            for actions, rs in grants(template, props)
            if "execute-api:ManageConnections" in actions
            for r in rs
        ]
        assert sorted(scopes) == sorted(
            f"{EXECUTE_API}/${{StageName}}/{method}/@connections/*" for method in expected
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
    granted = grants(template, template["Resources"]["MessageFunction"]["Properties"])
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
        for actions, scope in grants(template, props)
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
            for actions, scope in grants(template, template["Resources"][name]["Properties"])
            if any(a.startswith("bedrock:") for a in actions)
            for s in scope
        ]
        assert models == [
            "arn:${AWS::Partition}:bedrock:${AWS::Region}::foundation-model/${BedrockModelId}"
        ], name
        assert {a for a in actions_of(template, name) if a.startswith("bedrock:")} == {
            "bedrock:InvokeModelWithResponseStream"
        }


class WithSamRoles(Template):
    """The template resolved, each role SAM makes for a function (``MessageFunctionRole``) given
    as its logical ID: what no local name stands for."""

    def get_att(self, logical_id: str, attribute: str) -> str:
        if logical_id not in self.raw["Resources"]:
            return f"{logical_id}.{attribute}"
        return super().get_att(logical_id, attribute)


def topic_policy(**parameters: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The prompt topic's Allow and Deny statements, as deployed with ``parameters``."""
    template = WithSamRoles(parameters=parameters)
    (name,) = template.resources("AWS::SNS::TopicPolicy")
    props = template.properties(name)
    assert props["Topics"] == [template.ref("PromptTopic")]
    statements = props["PolicyDocument"]["Statement"]
    assert {s["Resource"] for s in statements} == {template.ref("PromptTopic")}
    assert {s["Action"] for s in statements} == {"sns:Publish"}  # SNS still delivers to Lambda
    allows = [s for s in statements if s["Effect"] == "Allow"]
    denies = [s for s in statements if s["Effect"] == "Deny"]
    assert len(allows) + len(denies) == len(statements)
    return allows, denies


ROLE = "MessageFunctionRole.Arn"
PUBLISHERS = ["arn:aws:iam::123456789012:role/orders-AskAboutOrderRole", "arn:aws:iam::1:role/b"]


def test_only_the_message_function_role_may_publish_to_the_prompt_topic(
    template: dict[str, Any],
) -> None:
    assert template["Parameters"]["PromptPublisherRoleArns"]["Default"] == ""
    allows, denies = topic_policy()
    assert [s["Principal"] for s in allows] == [{"AWS": ROLE}]
    # Everyone else is denied Publish, whatever their own IAM policies allow.
    assert [(s["Principal"], s["Condition"]) for s in denies] == [
        ("*", {"ArnNotEquals": {"aws:PrincipalArn": ROLE}})
    ]


def test_the_roles_of_prompt_publisher_role_arns_may_publish_too_and_nobody_else() -> None:
    allows, denies = topic_policy(PromptPublisherRoleArns=",".join(PUBLISHERS))
    assert [s["Principal"] for s in allows] == [{"AWS": ROLE}, {"AWS": PUBLISHERS}]
    assert [(s["Principal"], s["Condition"]) for s in denies] == [
        ("*", {"ArnNotEquals": {"aws:PrincipalArn": [ROLE, *PUBLISHERS]}})
    ]
    one, _ = topic_policy(PromptPublisherRoleArns=PUBLISHERS[0])
    assert [s["Principal"] for s in one] == [{"AWS": ROLE}, {"AWS": PUBLISHERS[:1]}]


EXPORTS = {
    "WebSocketApiId": {"Ref": "WebSocketApi"},
    "WebSocketStageName": {"Ref": "StageName"},
    "StreamLayerArn": {"Ref": "StreamLayer"},
    "PromptTopicArn": {"Ref": "PromptTopic"},
    "FramesTableName": {"Ref": "FramesTable"},
    "ConnectionsTableName": {"Ref": "ConnectionsTable"},
}


def test_the_layer_topic_api_and_tables_are_exported_under_the_stack_name(
    template: dict[str, Any],
) -> None:
    exported = {name: output for name, output in template["Outputs"].items() if "Export" in output}
    assert {name: output["Value"] for name, output in exported.items()} == EXPORTS
    for name, output in exported.items():
        assert output["Export"] == {"Name": {"Fn::Sub": f"${{AWS::StackName}}-{name}"}}, name
        assert "Condition" not in output, name  # another stack may import it at any time


def test_the_custom_handler_example_imports_only_what_the_stack_exports() -> None:
    def imports(value: Any) -> Iterator[str]:
        if isinstance(value, dict):
            if "Fn::ImportValue" in value:
                yield sub_text(value["Fn::ImportValue"]) or ""
            for item in value.values():
                yield from imports(item)
        elif isinstance(value, list):
            for item in value:
                yield from imports(item)

    example = load(ROOT / "examples" / "custom-handler" / "template.yaml")
    names = set(imports(example))
    assert names == {f"${{MainStackName}}-{name}" for name in EXPORTS}


def test_dead_letter_queue_accepts_messages_only_from_the_prompt_topic(
    template: dict[str, Any],
) -> None:
    (policy,) = resources(template, "AWS::SQS::QueuePolicy").values()
    (statement,) = policy["Properties"]["PolicyDocument"]["Statement"]
    assert statement["Principal"] == {"Service": "sns.amazonaws.com"}
    assert statement["Action"] == "sqs:SendMessage"
    assert statement["Condition"] == {"ArnEquals": {"aws:SourceArn": {"Ref": "PromptTopic"}}}


def test_authorizer_reads_only_the_hmac_signing_secret(template: dict[str, Any]) -> None:
    props = template["Resources"]["AuthorizerFunction"]["Properties"]
    secrets = [s for _, scope in grants(template, props) for s in scope]
    assert [sub_text(s) for s in secrets] == [
        "arn:${AWS::Partition}:secretsmanager:${AWS::Region}:${AWS::AccountId}"
        ":secret:${AuthHmacSecretName}-??????"
    ]
    (policy,) = props["Policies"]
    assert policy["Fn::If"][0] == "HmacAuth"  # a JWT authorizer reads no secret


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
        (actions, scopes)
        for actions, scopes in grants(template, props)
        if any("sqs:" in a for a in actions)
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
        for actions, scopes in grants(template, props)
        for scope in scopes
        if isinstance(scope, dict) and "Fn::GetAtt" in scope
        for table in [scope["Fn::GetAtt"][0]]
        if table.endswith("Table")
    }
    assert tables == {
        "FramesTable": {"dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem"},
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


def test_every_function_policy_is_a_known_scoped_template_a_statement_or_ours(
    template: dict[str, Any],
) -> None:
    # grants() refuses anything else: an AWS managed policy, an unknown policy template.
    for name, fn in functions(template).items():
        for item in as_list(fn["Properties"].get("Policies", [])):
            for policy in branches(item):
                assert isinstance(policy, dict), name
        assert grants(template, fn["Properties"]), name
