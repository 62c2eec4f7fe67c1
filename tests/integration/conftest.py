"""The whole local stack, started once per module on free ports with the mock LLM."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from devstack.stack import LocalStack, StackConfig


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: takes tens of seconds; still in the default run")


def running_stack(**changes: Any) -> Iterator[LocalStack]:
    """A local stack on free ports with the mock LLM, the template's model and no auth, for a
    module fixture to ``yield from``; ``changes`` are the module's own settings. The values are
    explicit, so that a developer's LLM_BASE_URL, LLM_MODEL or AUTH_MODE cannot leak in."""
    config = StackConfig(
        **{
            "ws_port": 0,
            "http_port": 0,
            "llm_base_url": "",
            "llm_model": "gpt-4o-mini",
            "auth_mode": "none",
            **changes,
        }
    )
    with LocalStack(config) as running:
        yield running


@pytest.fixture(scope="module")
def stack() -> Iterator[LocalStack]:
    yield from running_stack()


@pytest.fixture(scope="module")
def hmac_stack() -> Iterator[LocalStack]:
    """The same with HMAC-signed tokens required on $connect."""
    yield from running_stack(auth_mode="hmac")
