"""checkov finds nothing in template.yaml: its built-in checks, and our IAM rules as custom
policies (policies/*.yaml), on the template (every optional resource too) and on the roles the
SAM transform makes of it. Skips are in the template's Metadata (one resource) or in
policies/checkov.yaml (the whole template), each with its reason.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from devstack.template import TEMPLATE, load

from .cfn import POLICIES, ROOT, dev_tool

CUSTOM = {
    "CKV2_LLMSTREAM_1",  # execute-api:ManageConnections on this API stage's @connections only
    "CKV2_LLMSTREAM_2",  # functions get execute-api only from the template's managed policies
    "CKV2_LLMSTREAM_3",  # no action IAM can scope is allowed on Resource '*'
    "CKV2_LLMSTREAM_4",  # no '*' or 'service:*' action
}
# What the scan of the template judges already, which SAM's output would only repeat without
# the template's Metadata (SAM does not copy it to the resources it makes).
JUDGED_ON_THE_TEMPLATE = "CKV_AWS_27,CKV_AWS_28,CKV_AWS_115"


def checkov(path: Path, *extra: str) -> dict[str, Any]:
    run = subprocess.run(
        [
            dev_tool("checkov"),
            "--config-file",
            str(POLICIES / "checkov.yaml"),
            "--file",
            str(path),
            "--output",
            "json",
            *extra,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode in (0, 1), run.stderr[-3000:]
    report = json.loads(run.stdout)
    assert report["summary"]["parsing_errors"] == 0, report["summary"]
    return report


def failures(report: dict[str, Any]) -> list[str]:
    return [
        f"{f['check_id']} {f['resource']}: {f['check_name']}"
        for f in report["results"]["failed_checks"]
    ]


def ran(report: dict[str, Any]) -> set[str]:
    return {c["check_id"] for c in report["results"]["passed_checks"]}


def with_defaults(tmp_path: Path, **defaults: str) -> Path:
    """template.yaml with other parameter defaults: checkov drops a resource whose condition
    is false with the defaults, so the optional ones are scanned this way."""
    template = load()
    for name, value in defaults.items():
        template["Parameters"][name]["Default"] = value
    path = tmp_path / "template.json"
    path.write_text(json.dumps(template))
    return path


def test_checkov_finds_nothing_in_the_template() -> None:
    report = checkov(TEMPLATE)
    assert not failures(report), failures(report)
    assert ran(report) >= CUSTOM, CUSTOM - ran(report)


def test_checkov_finds_nothing_in_the_optional_resources(tmp_path: Path) -> None:
    # The authorizer (AuthMode), the Bedrock stream function (EnableBedrockFanout), and the
    # topic policy's statement for other publishers (PromptPublisherRoleArns).
    publisher = "arn:aws:iam::123456789012:role/orders-AskAboutOrderFunctionRole"
    report = checkov(
        with_defaults(
            tmp_path,
            AuthMode="hmac",
            EnableBedrockFanout="true",
            PromptPublisherRoleArns=publisher,
        )
    )
    assert not failures(report), failures(report)
    scanned = {c["resource"] for c in report["results"]["passed_checks"]}
    assert {
        "AWS::Serverless::Function.AuthorizerFunction",
        "AWS::Serverless::Function.BedrockStreamFunction",
    } <= scanned


@pytest.mark.sam
def test_checkov_finds_nothing_in_the_roles_sam_makes(
    synthesized: dict[str, Any], tmp_path: Path
) -> None:
    # The SAM policy templates expanded: what each function's role really allows.
    path = tmp_path / "synthesized.json"
    path.write_text(json.dumps(synthesized))
    # --skip-check replaces the config file's list: both go here.
    config = yaml.safe_load((POLICIES / "checkov.yaml").read_text())
    skipped = ",".join([*config["skip-check"], JUDGED_ON_THE_TEMPLATE])
    report = checkov(path, "--skip-check", skipped)
    assert not failures(report), failures(report)
    roles = {
        c["resource"]
        for c in report["results"]["passed_checks"]
        if c["check_id"] == "CKV2_LLMSTREAM_3"
    }
    assert "AWS::IAM::Role.StreamFunctionRole" in roles


def test_the_custom_policies_fail_a_template_that_breaks_their_rules(tmp_path: Path) -> None:
    # Each rule broken once: a rule that passed everything would prove nothing.
    template = load()
    res = template["Resources"]
    probe = res["ProbeConnectionsPolicy"]["Properties"]["PolicyDocument"]["Statement"][0]
    probe["Resource"] = "*"  # ManageConnections on every API
    res["DeadLetterFunction"]["Properties"]["Policies"].append(
        {"Statement": [{"Effect": "Allow", "Action": "execute-api:Invoke", "Resource": "x"}]}
    )
    control = res["MessageFunction"]["Properties"]["Policies"][2]["Statement"][0]
    control["Resource"] = "*"  # DynamoDB on every table
    queue = res["StreamDeadLetterQueuePolicy"]["Properties"]["PolicyDocument"]["Statement"][0]
    queue["Action"] = "sqs:*"
    path = tmp_path / "broken.json"
    path.write_text(json.dumps(template))
    report = checkov(path, "--check", ",".join(sorted(CUSTOM)))
    failed = {
        (f["check_id"], f["resource"].split(".")[-1]) for f in report["results"]["failed_checks"]
    }
    assert failed == {
        ("CKV2_LLMSTREAM_1", "ProbeConnectionsPolicy"),
        ("CKV2_LLMSTREAM_3", "ProbeConnectionsPolicy"),
        ("CKV2_LLMSTREAM_2", "DeadLetterFunction"),
        ("CKV2_LLMSTREAM_3", "MessageFunction"),
        ("CKV2_LLMSTREAM_4", "StreamDeadLetterQueuePolicy"),
    }
