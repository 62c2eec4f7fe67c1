"""The local stack's extra SAM apps (``--function``, StackConfig.extra_templates): their functions
and routes beside template.yaml's, their ``!ImportValue`` resolved from its exports."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from devstack.__main__ import _parser
from devstack.config import PREFIX, ROOT, StackConfig
from devstack.deployment import LocalDeployment
from devstack.template import Template

EXAMPLE = ROOT / "examples" / "custom-handler"


def deployment(*templates: Path, **config: Any) -> LocalDeployment:
    deployed = LocalDeployment(StackConfig(extra_templates=list(templates), **config))
    deployed.moto_url = "http://127.0.0.1:5000"
    return deployed


def test_python_m_devstack_function_names_an_extra_app() -> None:
    args = _parser().parse_args(["--function", "examples/custom-handler", "--function", "b"])
    assert args.function == [Path("examples/custom-handler"), Path("b")]


def test_the_examples_route_goes_to_its_function_beside_the_stacks_own() -> None:
    routes = deployment(EXAMPLE).routes()
    assert routes["askAboutOrder"].function == "ask-about-order"
    assert routes["askAboutOrder"].two_way
    assert routes["sendMessage"].function == "message"  # template.yaml's, untouched


def test_the_examples_function_runs_its_own_code_with_the_stacks_resources() -> None:
    deployed = deployment(
        EXAMPLE / "template.yaml", stage="local", env={"LOG_CONTENT": "true", "LLM_MODEL": "gpt-4o"}
    )
    [spec] = [s for s in deployed.function_specs() if s.name == "ask-about-order"]
    assert spec.code_dir == EXAMPLE / "src" and spec.handler == "app.lambda_handler"
    assert spec.layers == (ROOT / "layers" / "stream",)
    assert spec.function_name == f"{PREFIX}-custom-handler-AskAboutOrderFunction"
    main = deployed.template()
    # !ImportValue of the main stack's exports: the local topic and tables the stack creates.
    assert spec.env["PROMPT_TOPIC_ARN"] == main.ref("PromptTopic")
    assert spec.env["FRAMES_TABLE"] == main.ref("FramesTable")
    assert spec.env["CONNECTIONS_TABLE"] == main.ref("ConnectionsTable")
    # A parameter both templates have takes the stack's value (--set LLM_MODEL sets LlmModel).
    assert spec.env["LLM_MODEL"] == main.parameters["LlmModel"] == "gpt-4o"
    assert spec.env["AWS_ENDPOINT_URL"] == deployed.moto_url  # the local wiring
    assert spec.env["LOG_CONTENT"] == "true"  # and --set, as for every function


def test_an_extra_app_may_not_take_a_route_the_api_has(tmp_path: Path) -> None:
    text = (
        (EXAMPLE / "template.yaml")
        .read_text()
        .replace("RouteKey: askAboutOrder", "RouteKey: cancel")
    )
    (tmp_path / "template.yaml").write_text(text)
    with pytest.raises(ValueError, match="a route 'cancel' already"):
        deployment(tmp_path).routes()


def test_an_import_no_stack_exports_is_an_error_that_names_the_exports() -> None:
    template = Template(EXAMPLE / "template.yaml", imports={"other-PromptTopicArn": "x"})
    with pytest.raises(KeyError, match="llm-stream-PromptTopicArn.*other-PromptTopicArn"):
        template.environment("AskAboutOrderFunction")


def test_a_comma_delimited_list_parameter_is_a_list_as_in_cloudformation() -> None:
    assert Template().ref("PromptPublisherRoleArns") == [""]
    arns = Template(parameters={"PromptPublisherRoleArns": "a,b"}).ref("PromptPublisherRoleArns")
    assert arns == ["a", "b"]
    assert not Template().condition("HasPromptPublishers")
