"""Shared test fixtures: a clean AWS-free environment, handler loading, events, moto resources."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
EVENTS = ROOT / "events"

# Never reach a real AWS account, whatever the developer's shell holds.
os.environ.update(
    AWS_ACCESS_KEY_ID="testing",
    AWS_SECRET_ACCESS_KEY="testing",
    AWS_SECURITY_TOKEN="testing",
    AWS_SESSION_TOKEN="testing",
    AWS_DEFAULT_REGION="us-east-1",
    AWS_REGION="us-east-1",
    POWERTOOLS_SERVICE_NAME="llm-stream-test",
    POWERTOOLS_METRICS_NAMESPACE="LlmStreamTest",
    POWERTOOLS_TRACE_DISABLED="true",
)
for _var in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "OPENAI_API_KEY"):
    os.environ.pop(_var, None)


class LambdaContext:
    """Enough of Lambda's context object for the handlers and Powertools."""

    def __init__(self, name: str = "test-function", remaining_ms: int = 900_000) -> None:
        self.function_name = name
        self.function_version = "$LATEST"
        self.invoked_function_arn = f"arn:aws:lambda:us-east-1:123456789012:function:{name}"
        self.memory_limit_in_mb = 512
        self.aws_request_id = "11111111-2222-3333-4444-555555555555"
        self.log_group_name = f"/aws/lambda/{name}"
        self.log_stream_name = "2026/11/25/[$LATEST]test"
        self._remaining_ms = remaining_ms

    def get_remaining_time_in_millis(self) -> int:
        return self._remaining_ms


def load_event(name: str) -> dict[str, Any]:
    return json.loads((EVENTS / name).read_text())


def load_handler(function: str, env: dict[str, str] | None = None) -> ModuleType:
    """Import functions/<function>/app.py afresh, with the given environment, as Lambda would."""
    from llmstream.apigw import connection as management
    from llmstream.core import clients, settings

    if env:
        os.environ.update(env)
    settings.get_settings.cache_clear()
    clients.aws.cache_clear()
    management.management_client.cache_clear()
    name = f"fn_{function}_app"
    sys.modules.pop(name, None)
    spec = importlib.util.spec_from_file_location(name, ROOT / "functions" / function / "app.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def lambda_context() -> LambdaContext:
    return LambdaContext()


@pytest.fixture
def logs() -> Any:
    """Everything the handlers log during the test, as Powertools formats it (JSON lines)."""
    import io
    import logging

    from llmstream.core.observability import logger

    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(logger.registered_formatter)
    logger._logger.addHandler(handler)
    try:
        yield buffer
    finally:
        logger._logger.removeHandler(handler)
