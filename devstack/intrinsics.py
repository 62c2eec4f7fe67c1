"""template.yaml read as CloudFormation reads it: YAML with the short-form tags, parameters set,
resources named, and the intrinsic functions evaluated as a deployment would evaluate them.

Parameters take their defaults, or the overrides given (like ``--parameter-overrides``); a
resource without a name of its own is called ``<stack name>-<logical id>``, as CloudFormation
would (less its random suffix), and ``!Ref``/``!GetAtt`` give its local name, URL or ARN.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import cached_property
from pathlib import Path
from typing import Any, Protocol

import yaml

TEMPLATE = Path(__file__).resolve().parent.parent / "template.yaml"

NO_VALUE = object()
"""What ``!Ref AWS::NoValue`` resolves to: the property or list item is left out."""

# The property holding the physical name of the resource types the local stack creates.
NAME_PROPERTY = {
    "AWS::DynamoDB::Table": "TableName",
    "AWS::SNS::Topic": "TopicName",
    "AWS::SQS::Queue": "QueueName",
    "AWS::Serverless::Function": "FunctionName",
}


class _Loader(yaml.SafeLoader):
    """YAML with CloudFormation's short-form tags, read into their long form."""


def _intrinsic(loader: _Loader, suffix: str, node: yaml.Node) -> dict[str, Any]:
    value: Any
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)  # type: ignore[arg-type]
    if suffix in ("Ref", "Condition"):
        return {suffix: value}
    if suffix == "GetAtt" and isinstance(value, str):
        value = value.split(".", 1)
    return {f"Fn::{suffix}": value}


_Loader.add_multi_constructor("!", _intrinsic)


def load(path: Path = TEMPLATE) -> dict[str, Any]:
    """The template as plain data, short-form tags in their long form (``{"Ref": ...}``)."""
    with open(path, encoding="utf-8") as file:
        return yaml.load(file, Loader=_Loader)  # noqa: S506 (a SafeLoader subclass)


def text(value: Any) -> str:
    """A resolved value as an environment variable or an SQS attribute holds it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


class Scope(Protocol):
    """What the intrinsic functions look up: references, attributes and conditions."""

    def ref(self, name: str) -> Any: ...

    def get_att(self, logical_id: str, attribute: str) -> str: ...

    def condition(self, name: str) -> bool: ...

    def import_value(self, name: str) -> Any: ...


def evaluate(value: Any, scope: Scope) -> Any:
    """The value with every intrinsic function evaluated; NO_VALUE items are dropped."""
    if isinstance(value, list):
        return [v for v in (evaluate(item, scope) for item in value) if v is not NO_VALUE]
    if not isinstance(value, dict):
        return value
    if len(value) != 1 or not next(iter(value)).startswith(("Fn::", "Ref", "Condition")):
        resolved = {k: evaluate(v, scope) for k, v in value.items()}
        return {k: v for k, v in resolved.items() if v is not NO_VALUE}
    ((function, args),) = value.items()
    if function == "Ref":
        return scope.ref(args)
    if function == "Condition":
        return scope.condition(args)
    if function == "Fn::GetAtt":
        return scope.get_att(*args)
    if function == "Fn::If":
        condition, when_true, when_false = args
        return evaluate(when_true if scope.condition(condition) else when_false, scope)
    if function == "Fn::Equals":
        left, right = (text(evaluate(a, scope)) for a in args)
        return left == right
    if function == "Fn::Not":
        return not evaluate(args[0], scope)
    if function == "Fn::And":
        return all(evaluate(a, scope) for a in args)
    if function == "Fn::Or":
        return any(evaluate(a, scope) for a in args)
    if function == "Fn::Join":
        delimiter, items = args
        return delimiter.join(text(v) for v in evaluate(items, scope))
    if function == "Fn::Select":
        index, items = args
        return evaluate(items, scope)[int(evaluate(index, scope))]
    if function == "Fn::Split":
        delimiter, source = args
        return text(evaluate(source, scope)).split(delimiter)
    if function == "Fn::Sub":
        return _sub(args, scope)
    if function == "Fn::ImportValue":
        return scope.import_value(text(evaluate(args, scope)))
    raise ValueError(f"cannot resolve {function} locally")


def _sub(args: str | list[Any], scope: Scope) -> str:
    template, names = (args, {}) if isinstance(args, str) else (args[0], args[1])
    variables = {k: evaluate(v, scope) for k, v in names.items()}

    def one(match: re.Match[str]) -> str:
        name = match[1]
        if name in variables:
            return text(variables[name])
        if "." in name:
            return scope.get_att(*name.split(".", 1))
        return text(scope.ref(name))

    return re.sub(r"\$\{([^}!]+)\}", one, template)


class ResolvedTemplate:
    """template.yaml with its parameters set and its resources given local names.

    ``endpoint_url`` is where SQS queue URLs point (a moto server); without it they have
    AWS's own form, which moto's in-process mock uses too. ``imports`` are the values that
    ``!ImportValue`` finds, by export name: another template's ``exports()``.
    """

    def __init__(
        self,
        path: Path = TEMPLATE,
        *,
        parameters: Mapping[str, str] | None = None,
        stack_name: str = "llm-stream-local",
        region: str = "us-east-1",
        account_id: str = "123456789012",
        endpoint_url: str | None = None,
        imports: Mapping[str, Any] | None = None,
    ) -> None:
        self.path = path
        self.raw = load(path)
        unknown = set(parameters or {}) - set(self.raw["Parameters"])
        if unknown:
            raise KeyError(f"{path.name} has no parameters {sorted(unknown)}")
        self.overrides = dict(parameters or {})
        self.stack_name, self.region, self.account_id = stack_name, region, account_id
        self.endpoint_url = endpoint_url
        self.imports = dict(imports or {})

    # ------------------------------------------------------------------ parameters, conditions

    @cached_property
    def parameters(self) -> dict[str, str]:
        """Each parameter's value, as text like CloudFormation's: its override, else its default."""
        values = {}
        for name, parameter in self.raw["Parameters"].items():
            if name in self.overrides:
                values[name] = text(self.overrides[name])
            elif "Default" in parameter:
                values[name] = text(parameter["Default"])
        return values

    def condition(self, name: str) -> bool:
        return bool(self.resolve(self.raw.get("Conditions", {})[name]))

    def exists(self, logical_id: str) -> bool:
        """Whether the resource is created: it has no Condition, or its Condition holds."""
        condition = self.raw["Resources"][logical_id].get("Condition")
        return condition is None or self.condition(condition)

    def resources(self, kind: str) -> dict[str, dict[str, Any]]:
        """The resources of one type that this deployment creates."""
        return {
            logical_id: resource
            for logical_id, resource in self.raw["Resources"].items()
            if resource["Type"] == kind and self.exists(logical_id)
        }

    # ------------------------------------------------------------------ names and references

    def name(self, logical_id: str) -> str:
        """The physical name: the one the template gives, else ``<stack>-<logical id>``."""
        resource = self.raw["Resources"][logical_id]
        given = resource.get("Properties", {}).get(NAME_PROPERTY.get(resource["Type"], ""))
        return text(self.resolve(given)) if given is not None else f"{self.stack_name}-{logical_id}"

    def arn(self, logical_id: str) -> str:
        kind, name = self.raw["Resources"][logical_id]["Type"], self.name(logical_id)
        where = f"{self.region}:{self.account_id}"
        if kind == "AWS::DynamoDB::Table":
            return f"arn:aws:dynamodb:{where}:table/{name}"
        if kind == "AWS::SNS::Topic":
            return f"arn:aws:sns:{where}:{name}"
        if kind == "AWS::SQS::Queue":
            return f"arn:aws:sqs:{where}:{name}"
        if kind == "AWS::Serverless::Function":
            return f"arn:aws:lambda:{where}:function:{name}"
        raise KeyError(f"no local ARN for {logical_id} ({kind})")

    def queue_url(self, logical_id: str) -> str:
        base = self.endpoint_url or f"https://sqs.{self.region}.amazonaws.com"
        return f"{base}/{self.account_id}/{self.name(logical_id)}"

    def ref(self, name: str) -> Any:
        pseudo = {
            "AWS::StackName": self.stack_name,
            "AWS::Region": self.region,
            "AWS::AccountId": self.account_id,
            "AWS::Partition": "aws",
            "AWS::URLSuffix": "amazonaws.com",
            "AWS::NoValue": NO_VALUE,
        }
        if name in pseudo:
            return pseudo[name]
        if name in self.raw["Parameters"]:
            if self.raw["Parameters"][name].get("Type") == "CommaDelimitedList":
                return self.parameters[name].split(",")  # "" is [""], as in CloudFormation
            return self.parameters[name]
        kind = self.raw["Resources"][name]["Type"]
        if kind == "AWS::SNS::Topic":
            return self.arn(name)
        if kind == "AWS::SQS::Queue":
            return self.queue_url(name)
        return self.name(name)  # tables, functions: their name

    def get_att(self, logical_id: str, attribute: str) -> str:
        if attribute == "Arn":
            return self.arn(logical_id)
        if attribute in ("TopicName", "QueueName"):
            return self.name(logical_id)
        if attribute == "QueueUrl":
            return self.queue_url(logical_id)
        raise KeyError(f"cannot resolve !GetAtt {logical_id}.{attribute} locally")

    def import_value(self, name: str) -> Any:
        if name not in self.imports:
            raise KeyError(f"!ImportValue {name!r}: no such export (known: {sorted(self.imports)})")
        return self.imports[name]

    def exports(self) -> dict[str, Any]:
        """What this stack exports to others (its Outputs' ``Export``), by export name."""
        return {
            text(self.resolve(output["Export"]["Name"])): self.resolve(output["Value"])
            for output in self.raw.get("Outputs", {}).values()
            if "Export" in output
            and ("Condition" not in output or self.condition(output["Condition"]))
        }

    # ------------------------------------------------------------------ intrinsics

    def resolve(self, value: Any) -> Any:
        """The value with every intrinsic function evaluated; NO_VALUE items are dropped."""
        return evaluate(value, self)

    def properties(self, logical_id: str) -> dict[str, Any]:
        """A resource's properties, resolved."""
        return self.resolve(self.raw["Resources"][logical_id].get("Properties", {}))
