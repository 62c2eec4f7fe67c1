"""template.yaml as the local stack and the tests see it: its tables, queues, topic, routes and
each function's environment, with the intrinsics resolved as a deployment would resolve them.

Parameters take their defaults, or the overrides given (like ``--parameter-overrides``); a
resource without a name of its own is called ``<stack name>-<logical id>``, as CloudFormation
would (less its random suffix), and ``!Ref``/``!GetAtt`` give its local name, URL or ARN.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

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


@dataclass(frozen=True)
class Table:
    logical_id: str
    name: str
    keys: tuple[tuple[str, str, str], ...]  # (attribute, type, HASH or RANGE)
    ttl_attribute: str | None
    properties: Mapping[str, Any] = field(repr=False)

    def create_table_args(self) -> dict[str, Any]:
        """``create_table``'s arguments: the key schema, attributes and indexes as declared."""
        args = {
            "TableName": self.name,
            "BillingMode": self.properties.get("BillingMode", "PAY_PER_REQUEST"),
            "AttributeDefinitions": list(self.properties["AttributeDefinitions"]),
            "KeySchema": list(self.properties["KeySchema"]),
        }
        for indexes in ("GlobalSecondaryIndexes", "LocalSecondaryIndexes"):
            if indexes in self.properties:
                args[indexes] = list(self.properties[indexes])
        return args


@dataclass(frozen=True)
class Route:
    key: str
    function: str  # the logical ID of the function its integration invokes
    two_way: bool  # a route response sends the function's return value back to the client


@dataclass(frozen=True)
class Subscription:
    """A function's SNS event on a topic of the template."""

    function: str
    topic: str
    filter_policy: dict[str, Any] | None
    filter_policy_scope: str


@dataclass(frozen=True)
class Function:
    logical_id: str
    folder: str  # under functions/
    timeout: int
    memory_mb: int
    environment: dict[str, str]  # Globals' and its own, resolved
    async_retries: int  # EventInvokeConfig's, else Lambda's default of 2
    on_failure: str | None  # the logical ID of its asynchronous on-failure destination

    @property
    def name(self) -> str:
        """A short name: the folder (``stream``), or the logical ID in kebab case when another
        function has that folder (``bedrock-stream``)."""
        kebab = re.sub(r"(?<!^)(?=[A-Z])", "-", self.logical_id.removesuffix("Function")).lower()
        return self.folder if kebab.replace("-", "") == self.folder else kebab


class Template:
    """template.yaml with its parameters set and its resources given local names.

    ``endpoint_url`` is where SQS queue URLs point (a moto server); without it they have
    AWS's own form, which moto's in-process mock uses too.
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
    ) -> None:
        self.raw = load(path)
        unknown = set(parameters or {}) - set(self.raw["Parameters"])
        if unknown:
            raise KeyError(f"template.yaml has no parameters {sorted(unknown)}")
        self.overrides = dict(parameters or {})
        self.stack_name, self.region, self.account_id = stack_name, region, account_id
        self.endpoint_url = endpoint_url

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

    # ------------------------------------------------------------------ intrinsics

    def resolve(self, value: Any) -> Any:
        """The value with every intrinsic function evaluated; NO_VALUE items are dropped."""
        if isinstance(value, list):
            return [v for v in (self.resolve(item) for item in value) if v is not NO_VALUE]
        if not isinstance(value, dict):
            return value
        if len(value) != 1 or not next(iter(value)).startswith(("Fn::", "Ref", "Condition")):
            resolved = {k: self.resolve(v) for k, v in value.items()}
            return {k: v for k, v in resolved.items() if v is not NO_VALUE}
        ((function, args),) = value.items()
        if function == "Ref":
            return self.ref(args)
        if function == "Condition":
            return self.condition(args)
        if function == "Fn::GetAtt":
            return self.get_att(*args)
        if function == "Fn::If":
            condition, when_true, when_false = args
            return self.resolve(when_true if self.condition(condition) else when_false)
        if function == "Fn::Equals":
            left, right = (text(self.resolve(a)) for a in args)
            return left == right
        if function == "Fn::Not":
            return not self.resolve(args[0])
        if function == "Fn::And":
            return all(self.resolve(a) for a in args)
        if function == "Fn::Or":
            return any(self.resolve(a) for a in args)
        if function == "Fn::Join":
            delimiter, items = args
            return delimiter.join(text(v) for v in self.resolve(items))
        if function == "Fn::Select":
            index, items = args
            return self.resolve(items)[int(self.resolve(index))]
        if function == "Fn::Split":
            delimiter, source = args
            return text(self.resolve(source)).split(delimiter)
        if function == "Fn::Sub":
            return self._sub(args)
        raise ValueError(f"cannot resolve {function} locally")

    def _sub(self, args: str | list[Any]) -> str:
        template, names = (args, {}) if isinstance(args, str) else (args[0], args[1])
        variables = {k: self.resolve(v) for k, v in names.items()}

        def one(match: re.Match[str]) -> str:
            name = match[1]
            if name in variables:
                return text(variables[name])
            if "." in name:
                return self.get_att(*name.split(".", 1))
            return text(self.ref(name))

        return re.sub(r"\$\{([^}!]+)\}", one, template)

    # ------------------------------------------------------------------ what the stack needs

    def properties(self, logical_id: str) -> dict[str, Any]:
        """A resource's properties, resolved."""
        return self.resolve(self.raw["Resources"][logical_id].get("Properties", {}))

    def tables(self) -> list[Table]:
        out = []
        for logical_id in self.resources("AWS::DynamoDB::Table"):
            props = self.properties(logical_id)
            types = {a["AttributeName"]: a["AttributeType"] for a in props["AttributeDefinitions"]}
            ttl = props.get("TimeToLiveSpecification") or {}
            out.append(
                Table(
                    logical_id=logical_id,
                    name=self.name(logical_id),
                    keys=tuple(
                        (k["AttributeName"], types[k["AttributeName"]], k["KeyType"])
                        for k in props["KeySchema"]
                    ),
                    ttl_attribute=ttl.get("AttributeName") if ttl.get("Enabled") else None,
                    properties=props,
                )
            )
        return out

    def queues(self) -> list[str]:
        """The queues' logical IDs, each after the queue its redrive policy names."""

        def depth(logical_id: str) -> int:
            target = self.redrive_target(logical_id)
            return 1 + depth(target) if target else 0

        return sorted(self.resources("AWS::SQS::Queue"), key=depth)

    def redrive_target(self, queue: str) -> str | None:
        """The queue that ``queue``'s redrive policy moves messages to, if any."""
        policy = self.raw["Resources"][queue]["Properties"].get("RedrivePolicy", {})
        target = policy.get("deadLetterTargetArn", {})
        return target["Fn::GetAtt"][0] if "Fn::GetAtt" in target else None

    def functions(self) -> dict[str, Function]:
        """The functions this deployment creates, by logical ID."""
        glob = self.raw.get("Globals", {}).get("Function", {})
        out = {}
        for logical_id, resource in self.resources("AWS::Serverless::Function").items():
            props = resource["Properties"]
            config = props.get("EventInvokeConfig", {})
            failure = config.get("DestinationConfig", {}).get("OnFailure", {}).get("Destination")
            out[logical_id] = Function(
                logical_id=logical_id,
                folder=props["CodeUri"].strip("/").split("/")[-1],
                timeout=int(self.resolve(props.get("Timeout", glob.get("Timeout", 3)))),
                memory_mb=int(self.resolve(props.get("MemorySize", glob.get("MemorySize", 128)))),
                environment=self.environment(logical_id),
                async_retries=int(self.resolve(config.get("MaximumRetryAttempts", 2))),
                on_failure=failure["Fn::GetAtt"][0] if failure else None,
            )
        return out

    def environment(self, logical_id: str) -> dict[str, str]:
        """A function's environment as Lambda gives it: Globals' variables, then its own."""
        variables = self.variables()[logical_id]
        resolved = {name: self.resolve(value) for name, value in variables.items()}
        return {name: text(value) for name, value in resolved.items() if value is not NO_VALUE}

    def variables(self) -> dict[str, dict[str, Any]]:
        """Every function's environment as written (Globals' included), by logical ID."""
        glob = self.raw.get("Globals", {}).get("Function", {}).get("Environment", {})
        return {
            logical_id: {
                **glob.get("Variables", {}),
                **resource["Properties"].get("Environment", {}).get("Variables", {}),
            }
            for logical_id, resource in self.raw["Resources"].items()
            if resource["Type"] == "AWS::Serverless::Function"
        }

    def variable_parameters(self) -> dict[str, str]:
        """Variable -> the parameter it carries: the one a function sets it to, ``!If``
        branches taken as the conditions stand (``LLM_MODEL`` -> ``LlmModel``)."""
        out = {}
        for variables in self.variables().values():
            for name, value in variables.items():
                while isinstance(value, dict) and "Fn::If" in value:
                    condition, when_true, when_false = value["Fn::If"]
                    value = when_true if self.condition(condition) else when_false
                if isinstance(value, dict) and value.get("Ref") in self.raw["Parameters"]:
                    out[name] = value["Ref"]
        return out

    def variables_naming(self, kind: str) -> dict[str, str]:
        """Variable -> the resource of type ``kind`` it names (``FRAMES_TABLE`` -> FramesTable)."""
        return {
            name: value["Ref"]
            for variables in self.variables().values()
            for name, value in variables.items()
            if isinstance(value, dict)
            and self.raw["Resources"].get(value.get("Ref", ""), {}).get("Type") == kind
        }

    def subscriptions(self) -> list[Subscription]:
        out = []
        for logical_id, resource in self.resources("AWS::Serverless::Function").items():
            for event in resource["Properties"].get("Events", {}).values():
                if event["Type"] == "SNS":
                    props = self.resolve(event["Properties"])
                    out.append(
                        Subscription(
                            function=logical_id,
                            topic=event["Properties"]["Topic"]["Ref"],
                            filter_policy=props.get("FilterPolicy"),
                            filter_policy_scope=props.get("FilterPolicyScope", "MessageAttributes"),
                        )
                    )
        return out

    def event_source_mappings(self) -> Iterator[tuple[str, str, dict[str, Any]]]:
        """(function, queue, properties) of each SQS event source mapping."""
        for resource in self.resources("AWS::Lambda::EventSourceMapping").values():
            props = resource["Properties"]
            yield props["FunctionName"]["Ref"], props["EventSourceArn"]["Fn::GetAtt"][0], props

    def routes(self) -> dict[str, Route]:
        """Route key -> the function its integration invokes, and whether it answers."""
        answered = {
            r["Properties"]["RouteId"]["Ref"]
            for r in self.resources("AWS::ApiGatewayV2::RouteResponse").values()
        }
        out = {}
        for logical_id, route in self.resources("AWS::ApiGatewayV2::Route").items():
            props = route["Properties"]
            (integration,) = _sub_names(props["Target"])
            uri = self.raw["Resources"][integration]["Properties"]["IntegrationUri"]
            (function,) = (n.split(".")[0] for n in _sub_names(uri) if n.endswith(".Arn"))
            two_way = "RouteResponseSelectionExpression" in props and logical_id in answered
            out[props["RouteKey"]] = Route(props["RouteKey"], function, two_way)
        return out


def _sub_names(value: Any) -> list[str]:
    """The names an ``!Sub`` interpolates, pseudo parameters left out."""
    sub = value["Fn::Sub"]
    template = sub if isinstance(sub, str) else sub[0]
    return [n for n in re.findall(r"\$\{([^}!]+)\}", template) if not n.startswith("AWS::")]
