"""The whole local stack, started once per module on free ports with the mock LLM."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from devstack.stack import LocalStack, StackConfig


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: takes tens of seconds; still in the default run")


@pytest.fixture(scope="module")
def stack() -> Iterator[LocalStack]:
    # Explicit values, so that a developer's LLM_BASE_URL or AUTH_MODE cannot leak in.
    config = StackConfig(
        ws_port=0, http_port=0, llm_base_url="", llm_model="gpt-4o-mini", auth_mode="none"
    )
    with LocalStack(config) as running:
        yield running
