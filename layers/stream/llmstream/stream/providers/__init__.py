"""LLM providers, and how a stream function builds the one a prompt names, once per container.
Only the chosen vendor's library is imported.
"""

from __future__ import annotations

from ...core.settings import LLM_PROVIDERS, Settings
from .base import Provider


def build_provider(name: str, settings: Settings) -> Provider:
    """A ready provider. OpenAI-compatible APIs need the key from Secrets Manager; Bedrock
    uses the function's IAM role. Only the chosen vendor's library is imported."""
    if name == "openai":
        from aws_lambda_powertools.utilities.parameters import get_secret

        from .openai import OpenAIProvider, openai_client

        api_key = get_secret(settings.llm_api_key_secret, max_age=3600)
        return OpenAIProvider(openai_client(str(api_key), settings.llm_base_url))
    if name == "bedrock":
        from .bedrock import BedrockProvider

        return BedrockProvider()
    raise ValueError(f"unknown LLM provider {name[:32]!r}; expected one of {LLM_PROVIDERS}")
