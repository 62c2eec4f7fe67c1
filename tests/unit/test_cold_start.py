"""Cold starts: the stream handler builds openai on its first invocation, once, not at init; the
route handlers and the authorizer never load the X-Ray SDK, and the message handler's trace still
reaches SNS (botocore forwards Lambda's trace header)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT

# Runs in a fresh interpreter: this test process may have imported openai already.
PROBE = """
import json, sys
sys.path[:0] = ['layers/stream', '.']
from tests.conftest import load_handler

def llm_modules():
    return sorted(m for m in sys.modules if m.split('.')[0] in ('openai', 'httpx', 'httpx2'))

app = load_handler('stream')
at_import = llm_modules()

from aws_lambda_powertools.utilities import parameters
parameters.get_secret = lambda *args, **kwargs: 'sk-test'  # no Secrets Manager here
first = app._provider()
after_first = llm_modules()
same = app._provider() is first
print(json.dumps({'at_import': at_import, 'after_first': after_first, 'same': same}))
"""


def probe() -> dict:
    done = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_importing_the_stream_handler_does_not_import_openai_until_the_first_invocation(aws):
    """(``aws`` sets the environment the handler requires; the probe runs in a subprocess.)"""
    seen = probe()
    assert seen["at_import"] == [], "the LLM client must not be imported during init"
    assert "openai" in seen["after_first"], "the first invocation builds the client"
    assert seen["same"], "the client is built once per container and reused"


# ---------------------------------------------------------------------------- the X-Ray SDK

# Imports a handler as Lambda does (its folder, then the layer, on sys.path) and reports which of
# these packages it loaded.
IMPORT_PROBE = """
import json, sys
sys.path[:0] = ['functions/' + sys.argv[1], 'layers/stream']
import app
print(json.dumps(sorted({m.split('.')[0] for m in sys.modules} & {'aws_xray_sdk', 'openai'})))
"""
LOGICAL_IDS = {
    "connect": "ConnectFunction",
    "disconnect": "DisconnectFunction",
    "message": "MessageFunction",
    "authorizer": "AuthorizerFunction",
    "stream": "StreamFunction",
    "deadletter": "DeadLetterFunction",
}


def lambda_environment(function: str) -> dict[str, str]:
    """What Lambda gives the function: its template environment and a function name, which
    makes Powertools' Tracer live (load and patch the X-Ray SDK); tracing is not turned off."""
    from devstack.template import Template

    env = {k: v for k, v in os.environ.items() if not k.startswith("POWERTOOLS_")}
    env.pop("PYTHONPATH", None)
    env.update(Template(parameters={"AuthMode": "hmac"}).environment(LOGICAL_IDS[function]))
    env.update(
        AWS_LAMBDA_FUNCTION_NAME=f"llm-stream-{function}", AWS_EXECUTION_ENV="AWS_Lambda_python3.13"
    )
    return env


def loaded_at_import(function: str) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-c", IMPORT_PROBE, function],
        cwd=ROOT,
        env=lambda_environment(function),
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("function", ["message", "connect", "disconnect", "authorizer"])
def test_the_route_handlers_and_the_authorizer_start_without_the_xray_sdk(function):
    assert "aws_xray_sdk" not in loaded_at_import(function), (
        f"{function}: Powertools' Tracer (aws_xray_sdk) is most of a cold start; "
        "botocore forwards the trace header without it"
    )


@pytest.mark.parametrize("function", ["stream", "deadletter"])
def test_the_stream_and_dead_letter_handlers_keep_powertools_tracer(function):
    # Also proves the probe sees the SDK when a handler does import it.
    assert loaded_at_import(function) == ["aws_xray_sdk"]


# The message handler in a Lambda-like process where importing the X-Ray SDK fails, against moto,
# with the trace header Lambda sets for an invocation: what the SNS Publish request carries.
TRACE_PROBE = """
import json, os, sys
sys.path[:0] = ['functions/message', 'layers/stream', '.']

class NoXraySdk:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] == 'aws_xray_sdk':
            raise ImportError('the message path must not need the X-Ray SDK')

sys.meta_path.insert(0, NoXraySdk())
from moto import mock_aws
from tests.conftest import LambdaContext, load_event
from tests.unit.conftest import create_tables

with mock_aws():
    import boto3
    create_tables(boto3.client('dynamodb'))
    os.environ['PROMPT_TOPIC_ARN'] = boto3.client('sns').create_topic(Name='prompts')['TopicArn']
    import app
    from llmstream.core.clients import aws

    headers = []
    def on_publish(request, **kwargs):
        value = request.headers.get('X-Amzn-Trace-Id')
        headers.append(value.decode() if isinstance(value, bytes) else value)

    aws('sns').meta.events.register_first('before-send.sns.Publish', on_publish)
    response = app.lambda_handler(load_event('send-message.json'), LambdaContext())
    print(json.dumps({'response': response, 'trace_headers': headers}))
"""
TRACE_ID = "Root=1-6748a3c2-5f1e2d3c4b5a69788796a5b4;Parent=53995c3f42cd8ad8;Sampled=1"


def test_the_message_handler_forwards_lambdas_trace_header_to_sns_without_the_xray_sdk():
    env = lambda_environment("message")
    env.update(
        _X_AMZN_TRACE_ID=TRACE_ID,  # set by the runtime for each invocation, under active tracing
        CONNECTIONS_TABLE="connections",
        FRAMES_TABLE="frames",
        POWERTOOLS_METRICS_NAMESPACE="LlmStreamTest",
    )
    done = subprocess.run(
        [sys.executable, "-c", TRACE_PROBE], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert json.loads(seen["response"]["body"])["type"] == "accepted"
    # botocore's own handler (add_recursion_detection_header) sets it: SNS, traced actively,
    # carries the trace on to the stream function.
    assert seen["trace_headers"] == [TRACE_ID]
