"""Which provider serves a model. The message handler routes each prompt with this (the name
travels as an SNS message attribute that the stream subscriptions filter on).
"""

from __future__ import annotations

from ..core.settings import Settings


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
