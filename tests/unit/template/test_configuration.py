"""Configuration: each function is given the settings its code reads and nothing else, runs on
that alone, and the rest of the template's configuration (timeouts, tables, topic, layer,
outputs) is what the code expects.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from llmstream.auth import AuthSettings, mint_hmac_token
from llmstream.core.settings import Settings
from moto import mock_aws

from devstack.stack import create_resources
from devstack.template import TEMPLATE, Template
from tests.conftest import load_handler
from tests.unit.streams import frames_posted, record_closes

from .cfn import STREAM_FUNCTIONS, branches, functions, load_event

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
# What every function reads: Powertools' Logger, Tracer and Metrics, built at import.
POWERTOOLS = {
    "POWERTOOLS_SERVICE_NAME",
    "POWERTOOLS_METRICS_NAMESPACE",
    "POWERTOOLS_LOG_LEVEL",
    "POWERTOOLS_LOGGER_LOG_EVENT",
}

# Settings.from_env and AuthSettings.from_env: field -> the variable it is read from
# (test_every_setting_is_read_from_the_variable_mapped_here holds these to the code).
SETTING_VARIABLES = {
    "connections_table": "CONNECTIONS_TABLE",
    "prompt_topic_arn": "PROMPT_TOPIC_ARN",
    "conversations_table": "CONVERSATIONS_TABLE",
    "frames_table": "FRAMES_TABLE",
    "failed_queue_url": "FAILED_QUEUE_URL",
    "stream_lease_seconds": "STREAM_LEASE_SECONDS",
    "llm_provider": "LLM_PROVIDER",
    "llm_model": "LLM_MODEL",
    "allowed_models": "ALLOWED_MODELS",
    "model_providers": "MODEL_PROVIDERS",
    "llm_base_url": "LLM_BASE_URL",
    "llm_api_key_secret": "LLM_API_KEY_SECRET",
    "max_tokens": "MAX_TOKENS",
    "system_prompt": "SYSTEM_PROMPT",
    "llm_stall_timeout": "LLM_STALL_TIMEOUT_SECONDS",
    "llm_retry_budget": "LLM_RETRY_BUDGET_SECONDS",
    "max_prompt_bytes": "MAX_PROMPT_BYTES",
    "max_messages": "MAX_MESSAGES",
    "management_endpoint_template": "MANAGEMENT_ENDPOINT_TEMPLATE",
    "min_frame_interval": "MIN_FRAME_INTERVAL_MS",
    "max_frame_bytes": "MAX_FRAME_BYTES",
    "deadline_margin": "DEADLINE_MARGIN_SECONDS",
    "connection_ttl_seconds": "CONNECTION_TTL_SECONDS",
    "rate_limit_per_minute": "RATE_LIMIT_PER_MINUTE",
    "max_concurrent_streams": "MAX_CONCURRENT_STREAMS",
    "principal_rate_limit_per_minute": "PRINCIPAL_RATE_LIMIT_PER_MINUTE",
    "log_content": "LOG_CONTENT",
    "history_max_turns": "HISTORY_MAX_TURNS",
    "history_max_tokens": "HISTORY_MAX_TOKENS",
    "history_ttl_seconds": "HISTORY_TTL_SECONDS",
    "resume_ttl_seconds": "RESUME_TTL_SECONDS",
    "resume_grace_seconds": "RESUME_GRACE_SECONDS",
    "control_poll_interval": "CONTROL_POLL_MS",
    "forward_reasoning": "FORWARD_REASONING",
    "response_cache_table": "RESPONSE_CACHE_TABLE",
    "response_cache_ttl_seconds": "RESPONSE_CACHE_TTL_SECONDS",
    "response_cache_shared": "RESPONSE_CACHE_SHARED",
}
AUTH_SETTING_VARIABLES = {
    "mode": "AUTH_MODE",
    "jwt_issuer": "AUTH_JWT_ISSUER",
    "jwt_audience": "AUTH_JWT_AUDIENCE",
    "jwks_url": "AUTH_JWKS_URL",
    "hmac_secret_name": "AUTH_HMAC_SECRET_NAME",
}

# The settings each function's code reads: its app.py and the layer's code it calls
# (test_each_handler_runs_with_only_its_template_environment records what a run reads, and
# holds it to these).
STREAM_READS = {
    "llm_provider",  # app.py: its own provider, and the misrouting check
    "llm_base_url",  # providers.build_provider: OpenAI-compatible APIs
    "llm_api_key_secret",
    "management_endpoint_template",  # app.py: the connection's endpoint
    "stream_lease_seconds",  # requests.lifecycle: one stream per request, its lease
    "connection_ttl_seconds",
    "connections_table",  # worker: the stream slot given back (requests.slots)
    "max_concurrent_streams",
    "conversations_table",  # worker: conversation history (requests.history)
    "history_max_turns",
    "history_max_tokens",
    "history_ttl_seconds",
    "frames_table",  # worker: cancel and resume (requests.record)
    "resume_ttl_seconds",
    "resume_grace_seconds",
    "control_poll_interval",
    "system_prompt",  # worker -> streaming: the call to the model
    "llm_stall_timeout",
    "llm_retry_budget",
    "deadline_margin",
    "min_frame_interval",  # worker -> sender: batching
    "max_frame_bytes",
    "log_content",
    "forward_reasoning",  # answer -> streaming: reasoning frames, or none
    "response_cache_table",  # answer -> stream.cache (docs/cache.md)
    "response_cache_ttl_seconds",
    "response_cache_shared",
}
READS: dict[str, set[str]] = {
    "ConnectFunction": {"connections_table", "connection_ttl_seconds"},
    "DisconnectFunction": {"connections_table"},
    "MessageFunction": {
        "prompt_topic_arn",  # app.py: publish
        "connections_table",  # app.py: intake.limits
        "rate_limit_per_minute",
        "principal_rate_limit_per_minute",
        "max_concurrent_streams",
        "connection_ttl_seconds",
        "frames_table",  # app.py: requests.lifecycle, the request's record
        "stream_lease_seconds",
        "resume_ttl_seconds",
        "max_prompt_bytes",  # Settings.limits(): what a client may send
        "max_messages",
        "llm_model",
        "allowed_models",
        "llm_provider",  # intake.routing: which stream function serves a model
        "model_providers",
        "max_tokens",  # intake.accept: the envelope's options
        "resume_grace_seconds",
    },
    "StreamFunction": STREAM_READS,
    # The Bedrock provider needs no base URL and no key.
    "BedrockStreamFunction": STREAM_READS - {"llm_base_url", "llm_api_key_secret"},
    "DeadLetterFunction": {
        "failed_queue_url",  # app.py: where the told prompts are kept
        "management_endpoint_template",
        "frames_table",  # deadletter.notify: was the client told? (requests.lifecycle)
        "stream_lease_seconds",
        "connection_ttl_seconds",
        "resume_ttl_seconds",
        "connections_table",  # the stream slot given back (requests.slots)
        "max_concurrent_streams",
    },
    "AuthorizerFunction": {"mode", "jwt_issuer", "jwt_audience", "jwks_url", "hmac_secret_name"},
}
# Every optional resource on, so that every function is there.
EVERYTHING = {"AuthMode": "hmac", "EnableBedrockFanout": "true"}


def declared(template: dict[str, Any], name: str) -> dict[str, Any]:
    """A function's environment as written: Globals' variables, then its own."""
    return {
        **template["Globals"]["Function"]["Environment"]["Variables"],
        **template["Resources"][name]["Properties"].get("Environment", {}).get("Variables", {}),
    }


def variables_of(settings: set[str]) -> set[str]:
    both = {**SETTING_VARIABLES, **AUTH_SETTING_VARIABLES}
    return {both[s] for s in settings}


# --------------------------------------------------------------------------- each function's own


def test_every_setting_is_read_from_the_variable_mapped_here() -> None:
    for cls, mapping in ((Settings, SETTING_VARIABLES), (AuthSettings, AUTH_SETTING_VARIABLES)):
        assert set(cls._fields) == set(mapping), cls.__name__
        default = cls.from_env({})
        for field, variable in mapping.items():
            value = {
                "MODEL_PROVIDERS": "m=bedrock",
                "LOG_CONTENT": "true",
                "RESPONSE_CACHE_SHARED": "true",
            }.get(variable, "7")
            changed = cls.from_env({variable: value})
            assert getattr(changed, field) != getattr(default, field), (field, variable)


def test_globals_hold_only_what_every_function_reads(template: dict[str, Any]) -> None:
    assert set(template["Globals"]["Function"]["Environment"]["Variables"]) == POWERTOOLS


def test_each_function_is_given_exactly_the_settings_its_code_reads(
    template: dict[str, Any],
) -> None:
    assert set(READS) == set(functions(template))
    for name, settings in READS.items():
        expected = variables_of(settings) - SETTINGS_WITH_CODE_DEFAULTS | POWERTOOLS
        assert set(declared(template, name)) == expected, (
            name,
            f"missing {expected - set(declared(template, name))}",
            f"unread {set(declared(template, name)) - expected}",
        )


def test_the_two_stream_functions_differ_only_in_provider_filter_and_llm_access(
    template: dict[str, Any],
) -> None:
    # SAM shares nothing between two resources but Globals, so BedrockStreamFunction repeats
    # StreamFunction; this is all that may tell them apart.
    stream, bedrock = (
        template["Resources"][n] for n in ("StreamFunction", "BedrockStreamFunction")
    )
    assert "Condition" not in stream and bedrock["Condition"] == "BedrockFanout"
    differ = {"Description", "LoggingConfig", "Environment", "Events", "Policies"}
    a, b = copy.deepcopy(stream["Properties"]), copy.deepcopy(bedrock["Properties"])
    assert set(a) == set(b)
    assert {k: v for k, v in a.items() if k not in differ} == {
        k: v for k, v in b.items() if k not in differ
    }
    # Its own log group, made the same way.
    groups = [template["Resources"][p["LoggingConfig"]["LogGroup"]["Ref"]] for p in (a, b)]
    assert groups[0]["Properties"]["RetentionInDays"] == groups[1]["Properties"]["RetentionInDays"]
    # The provider, and the settings only the OpenAI-compatible provider reads.
    env_a, env_b = (p["Environment"]["Variables"] for p in (a, b))
    assert env_a.pop("LLM_PROVIDER") == {"Ref": "LlmProvider"} and env_b.pop("LLM_PROVIDER") == (
        "bedrock"
    )
    assert {k: env_a.pop(k) for k in ("LLM_BASE_URL", "LLM_API_KEY_SECRET")} == {
        "LLM_BASE_URL": {"Ref": "LlmBaseUrl"},
        "LLM_API_KEY_SECRET": {"Ref": "LlmApiKeySecretName"},
    }
    assert env_a == env_b
    # The subscription's filter; the rest of the event is the same.
    (event_a,), (event_b,) = a["Events"].values(), b["Events"].values()
    filters = event_a["Properties"].pop("FilterPolicy"), event_b["Properties"].pop("FilterPolicy")
    assert filters == ({"provider": [{"Ref": "LlmProvider"}]}, {"provider": ["bedrock"]})
    assert event_a == event_b
    # The policies: the same, but for the Bedrock model (always) and the key (never).
    policies_a = [p for item in a["Policies"] for p in branches(item)]
    policies_b = list(b["Policies"])
    bedrock_model = next(
        p for p in policies_b if "Statement" in p and "Bedrock" in p["Statement"][0]["Sid"]
    )
    key = next(p for p in policies_a if "AWSSecretsManagerGetSecretValuePolicy" in p)
    assert [p for p in policies_a if p is not key] == policies_b
    assert [s["Action"] for s in bedrock_model["Statement"]] == [
        "bedrock:InvokeModelWithResponseStream"
    ]


@pytest.fixture
def deployed(mock_llm: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Template]:
    """template.yaml's resources in moto, every optional resource on, the mock LLM as the
    OpenAI-compatible API, and no variable of any function's in this process's environment."""
    template = Template(
        parameters={**EVERYTHING, "LlmBaseUrl": mock_llm.base_url, "MinFrameIntervalMs": "0"}
    )
    every_variable = {v for f in template.functions().values() for v in f.environment}
    for variable in every_variable | variables_of(
        set(SETTING_VARIABLES) | set(READS["AuthorizerFunction"])
    ):
        monkeypatch.delenv(variable, raising=False)
    with mock_aws():
        create_resources(template, boto3.client)
        secrets = boto3.client("secretsmanager")
        secrets.create_secret(Name=template.parameters["LlmApiKeySecretName"], SecretString="sk")
        secrets.create_secret(Name=template.parameters["AuthHmacSecretName"], SecretString="k")
        mock_llm.reset()
        yield template


class Recorded:
    """The settings fields the handlers read while it is on."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.fields: set[str] = set()
        self.on = False
        for cls in (Settings, AuthSettings):
            names = set(cls._fields)

            def getattribute(obj: Any, name: str, names: set[str] = names) -> Any:
                if self.on and name in names:
                    self.fields.add(name)
                return object.__getattribute__(obj, name)

            monkeypatch.setattr(cls, "__getattribute__", getattribute)


def run(
    template: Template, logical_id: str, monkeypatch: pytest.MonkeyPatch, recorded: Recorded
) -> Any:
    """Import the function's app.py with only its template environment, as Lambda would."""
    function = template.functions()[logical_id]
    for variable, value in function.environment.items():
        monkeypatch.setenv(variable, value)
    module = load_handler(function.folder)
    recorded.on = True
    return module


@pytest.mark.parametrize(
    "logical_id",
    sorted(set(READS) - {"BedrockStreamFunction"}),  # its code is StreamFunction's, its env less
)
def test_each_handler_runs_with_only_its_template_environment(
    logical_id: str,
    deployed: Template,
    lambda_context: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    recorded = Recorded(monkeypatch)
    handler = run(deployed, logical_id, monkeypatch, recorded).lambda_handler
    env = deployed.functions()[logical_id].environment
    dynamodb = boto3.client("dynamodb")
    if logical_id == "ConnectFunction":
        event = load_event("connect.json")
        assert handler(event, lambda_context)["statusCode"] == 200
        key = {"connectionId": {"S": event["requestContext"]["connectionId"]}}
        item = dynamodb.get_item(TableName=env["CONNECTIONS_TABLE"], Key=key)["Item"]
        assert int(item["expiresAt"]["N"]) == event["requestContext"]["connectedAt"] // 1000 + 7200
    elif logical_id == "DisconnectFunction":
        assert handler(load_event("disconnect.json"), lambda_context)["statusCode"] == 200
    elif logical_id == "MessageFunction":
        frames = [
            json.loads(handler(load_event(name), lambda_context)["body"])
            for name in ("send-message.json", "cancel.json", "resume.json")
        ]
        assert frames[0] == {"type": "accepted", "requestId": "req-123"}
    elif logical_id == "StreamFunction":
        closed = record_closes(monkeypatch)
        event = load_event("stream-sns.json")
        handler(event, lambda_context)
        envelope = json.loads(event["Records"][0]["Sns"]["Message"])
        frames = frames_posted(envelope["connectionId"])
        assert [f["type"] for f in frames][:2] == ["start", "delta"]
        assert frames[-1]["type"] == "end", frames[-1]
        assert closed == [envelope["connectionId"]]
    elif logical_id == "DeadLetterFunction":
        result = handler(load_event("deadletter-sqs.json"), lambda_context)
        assert result == {"batchItemFailures": []}
        kept = boto3.client("sqs").receive_message(QueueUrl=env["FAILED_QUEUE_URL"])
        assert len(kept["Messages"]) == 1
    elif logical_id == "AuthorizerFunction":
        event = load_event("authorizer-request.json")
        event["queryStringParameters"]["token"] = mint_hmac_token("k", "alice", ttl=60)
        event["multiValueQueryStringParameters"] = {
            "token": [event["queryStringParameters"]["token"]]
        }
        policy = handler(event, lambda_context)
        assert policy["principalId"] == "alice"
    else:
        pytest.fail(f"no run for {logical_id}")
    # What it read is among what READS says its code reads (and so among what it is given).
    assert recorded.fields <= READS[logical_id], recorded.fields - READS[logical_id]
    assert recorded.fields, "the handler read no setting"


# --------------------------------------------------------------------------- the rest


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


def test_prompt_topic_is_encrypted_and_traced(template: dict[str, Any]) -> None:
    topic = template["Resources"]["PromptTopic"]["Properties"]
    assert topic["KmsMasterKeyId"] == "alias/aws/sns"
    assert topic["TracingConfig"] == "Active"


@pytest.mark.parametrize(
    ("table", "keys", "ttl"),
    [
        ("ConnectionsTable", [("connectionId", "S", "HASH")], "expiresAt"),
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
    # The local stack and the tests make the same tables from the template.
    (loaded,) = [t for t in Template().tables() if t.logical_id == table]
    assert (list(loaded.keys), loaded.ttl_attribute) == (keys, ttl)


def test_connections_table_expires_items_through_ttl(template: dict[str, Any]) -> None:
    props = template["Resources"]["ConnectionsTable"]["Properties"]
    assert props["TimeToLiveSpecification"] == {"AttributeName": "expiresAt", "Enabled": True}
    ttls = {
        name: declared(template, name)["CONNECTION_TTL_SECONDS"]
        for name in functions(template)
        if "CONNECTION_TTL_SECONDS" in declared(template, name)
    }
    assert "ConnectFunction" in ttls and set(ttls.values()) == {"7200"}, ttls


def test_functions_share_runtime_tracing_json_logs_and_the_layer(template: dict[str, Any]) -> None:
    fn = template["Globals"]["Function"]
    assert fn["Runtime"] == "python3.13"
    assert fn["Architectures"] == [{"Ref": "Architecture"}]
    assert fn["Tracing"] == "Active"
    assert fn["LoggingConfig"] == {"LogFormat": "JSON"}
    assert fn["Layers"] == [{"Ref": "StreamLayer"}]
    layer = template["Resources"]["StreamLayer"]
    # Built by layers/stream/Makefile, through the entry for the architecture (test_layer.py).
    assert layer["Metadata"] == {
        "BuildMethod": "makefile",
        "BuildArchitecture": {"Ref": "Architecture"},
        "ContextPath": {"Fn::Sub": "layers/stream/arch/${Architecture}"},
    }
    assert layer["Properties"]["ContentUri"] == "layers/stream/"
    assert layer["Properties"]["CompatibleRuntimes"] == ["python3.13"]
    assert layer["Properties"]["CompatibleArchitectures"] == [{"Ref": "Architecture"}]
    for name, res in functions(template).items():
        props = res["Properties"]
        folder = props["CodeUri"]
        assert re.fullmatch(r"functions/\w+/", folder) and (TEMPLATE.parent / folder).is_dir(), name
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


def test_outputs_name_the_url_topic_table_and_dead_letter_queue(template: dict[str, Any]) -> None:
    assert {
        "WebSocketURL",
        "PromptTopicArn",
        "ConnectionsTableName",
        "StreamDeadLetterQueueUrl",
    } <= set(template["Outputs"])
