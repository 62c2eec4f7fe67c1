"""Which provider serves a model, and how to build one.

The message handler routes each prompt with ``provider_for_model`` (the name travels as an SNS
message attribute that the stream subscriptions filter on); a stream function builds the
provider named there with ``build_provider``, once per container.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .settings import LLM_PROVIDERS, Settings

if TYPE_CHECKING:  # the message handler imports this module and must not load the LLM code
    from .llm import Provider


def provider_for_model(model: str, settings: Settings) -> str:
    """The provider configured for ``model`` in MODEL_PROVIDERS, else the deployment's own.

    An exact entry wins over a prefix entry (``anthropic.*``), and a longer prefix over a
    shorter one, so the order of the entries does not matter.
    """
    best, best_length = settings.llm_provider, -1
    for pattern, provider in settings.model_providers:
        if pattern == model:
            return provider
        if pattern.endswith("*") and model.startswith(pattern[:-1]) and len(pattern) > best_length:
            best, best_length = provider, len(pattern)
    return best


def build_provider(name: str, settings: Settings) -> Provider:
    """A ready provider. OpenAI-compatible APIs need the key from Secrets Manager; Bedrock
    uses the function's IAM role. Only the chosen vendor's library is imported."""
    if name == "openai":
        from aws_lambda_powertools.utilities.parameters import get_secret

        from .llm import OpenAIProvider, openai_client

        api_key = get_secret(settings.llm_api_key_secret, max_age=3600)
        return OpenAIProvider(openai_client(str(api_key), settings.llm_base_url))
    if name == "bedrock":
        from .bedrock import BedrockProvider

        return BedrockProvider()
    raise ValueError(f"unknown LLM provider {name[:32]!r}; expected one of {LLM_PROVIDERS}")
