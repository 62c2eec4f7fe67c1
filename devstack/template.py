"""template.yaml as the local stack and the tests see it: its tables, queues, topic, routes and
each function's environment, typed, on top of devstack.intrinsics' resolution.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from .intrinsics import NO_VALUE, TEMPLATE, ResolvedTemplate, load, text

__all__ = [
    "NO_VALUE",
    "TEMPLATE",
    "Function",
    "Route",
    "Subscription",
    "Table",
    "Template",
    "load",
    "text",
]


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
    code_uri: str = ""  # as written, relative to the template's folder
    handler: str = "app.lambda_handler"  # its own, else Globals'

    @property
    def name(self) -> str:
        """A short name: the folder (``stream``), or the logical ID in kebab case when another
        function has that folder (``bedrock-stream``)."""
        kebab = re.sub(r"(?<!^)(?=[A-Z])", "-", self.logical_id.removesuffix("Function")).lower()
        return self.folder if kebab.replace("-", "") == self.folder else kebab


class Template(ResolvedTemplate):
    """template.yaml with its parameters set and its resources given local names, read as the
    typed views the local stack needs (see ResolvedTemplate for the names and intrinsics)."""

    # ------------------------------------------------------------------ what the stack needs

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
                code_uri=props["CodeUri"],
                handler=props.get("Handler", glob.get("Handler", "app.lambda_handler")),
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
