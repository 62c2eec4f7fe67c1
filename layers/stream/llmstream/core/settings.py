"""Configuration read once from the environment that template.yaml sets.

Every tunable lives here so that no handler digs in ``os.environ`` itself.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from functools import cache
from typing import NamedTuple

from .protocol import Limits

WEBSOCKET_FRAME_LIMIT = 32 * 1024
"""API Gateway's WebSocket frame limit in bytes; a server frame never exceeds it."""

MAX_CONNECTION_SECONDS = 2 * 60 * 60
"""API Gateway closes every WebSocket connection after two hours."""


def _bool(value: str | None, default: bool) -> bool:
    if value is None or value == "":
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def _csv(value: str | None) -> tuple[str, ...]:
    return tuple(item.strip() for item in (value or "").split(",") if item.strip())


LLM_PROVIDERS = ("openai", "bedrock")


def _model_providers(value: str | None) -> tuple[tuple[str, str], ...]:
    """``model=provider`` pairs; a model ending in ``*`` is a prefix (``anthropic.*=bedrock``)."""
    pairs = []
    for item in _csv(value):
        model, _, provider = item.rpartition("=")
        if not model.strip() or provider.strip() not in LLM_PROVIDERS:
            raise ValueError(f"MODEL_PROVIDERS: {item!r} is not model=openai or model=bedrock")
        pairs.append((model.strip(), provider.strip()))
    return tuple(pairs)


REQUIRED_ENV = {
    "connections_table": "CONNECTIONS_TABLE",
    "prompt_topic_arn": "PROMPT_TOPIC_ARN",
    "conversations_table": "CONVERSATIONS_TABLE",
    "frames_table": "FRAMES_TABLE",
    "failed_queue_url": "FAILED_QUEUE_URL",
    "response_cache_table": "RESPONSE_CACHE_TABLE",
}
"""The resources a function may require, by the environment variable that names them."""


class ConfigurationError(RuntimeError):
    """The function's environment lacks a resource the template always creates."""


# A NamedTuple, not a dataclass: the message handler's cold start (docs/architecture.md).
class Settings(NamedTuple):
    """One function's configuration, read from its environment once (``from_env``)."""

    # Resources
    connections_table: str = ""
    prompt_topic_arn: str = ""
    conversations_table: str = ""
    frames_table: str = ""
    failed_queue_url: str = ""
    """Where the dead-letter function keeps the prompts it drained from the dead-letter queue."""
    stream_lease_seconds: float = 30.0
    """How long a streaming invocation's claim outlives its last renewal: a crash is known for
    one that old. Under a minute, Lambda's first retry delay (tests and the local stack set
    it lower)."""

    # LLM
    llm_provider: str = "openai"
    llm_model: str = "gpt-4o-mini"
    allowed_models: tuple[str, ...] = ()
    model_providers: tuple[tuple[str, str], ...] = ()
    """Which provider serves which model (MODEL_PROVIDERS); others go to ``llm_provider``."""
    llm_base_url: str = ""
    llm_api_key_secret: str = ""
    max_tokens: int = 1024
    system_prompt: str = ""
    llm_stall_timeout: float = 30.0
    llm_retry_budget: float = 20.0

    # Client input
    max_prompt_bytes: int = 16 * 1024
    max_messages: int = 50

    # Streaming
    management_endpoint_template: str = "https://{domainName}/{stage}"
    min_frame_interval: float = 0.05
    max_frame_bytes: int = WEBSOCKET_FRAME_LIMIT
    deadline_margin: float = 10.0

    # Connections
    connection_ttl_seconds: int = MAX_CONNECTION_SECONDS

    # Abuse limits (0 turns a limit off)
    rate_limit_per_minute: int = 20
    max_concurrent_streams: int = 1
    principal_rate_limit_per_minute: int = 60

    # Privacy
    log_content: bool = False

    # Sessions: conversation history, cancel and resume (docs/sessions.md)
    history_max_turns: int = 20
    history_max_tokens: int = 4000
    history_ttl_seconds: int = 24 * 60 * 60
    resume_ttl_seconds: int = 10 * 60
    resume_grace_seconds: float = 30.0
    control_poll_interval: float = 0.2

    # Reasoning: the model's thinking, streamed apart from its answer (FORWARD_REASONING)
    forward_reasoning: bool = True

    # The response cache (docs/cache.md): off at 0
    response_cache_table: str = ""
    response_cache_ttl_seconds: int = 0
    response_cache_shared: bool = False
    """Every caller's answers in one cache; by default each principal has its own."""

    def require(self, *fields: str) -> Settings:
        """These settings, once every named resource is set; a ConfigurationError naming the
        missing environment variables otherwise (at cold start, not at the first request)."""
        missing = [REQUIRED_ENV[f] for f in fields if not getattr(self, f)]
        if missing:
            raise ConfigurationError(
                f"{', '.join(missing)} not set: template.yaml sets it for this function; "
                "check the function's Environment"
            )
        return self

    def limits(self) -> Limits:
        """What a client may send to this deployment."""
        return Limits(
            max_prompt_bytes=self.max_prompt_bytes,
            max_messages=self.max_messages,
            default_model=self.llm_model,
            allowed_models=self.allowed_models,
        )

    def management_endpoint(self, domain_name: str, stage: str) -> str:
        return self.management_endpoint_template.format(domainName=domain_name, stage=stage)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        d = cls()
        return cls(
            connections_table=env.get("CONNECTIONS_TABLE", d.connections_table),
            prompt_topic_arn=env.get("PROMPT_TOPIC_ARN", d.prompt_topic_arn),
            conversations_table=env.get("CONVERSATIONS_TABLE", d.conversations_table),
            frames_table=env.get("FRAMES_TABLE", d.frames_table),
            failed_queue_url=env.get("FAILED_QUEUE_URL", d.failed_queue_url),
            stream_lease_seconds=float(env.get("STREAM_LEASE_SECONDS", d.stream_lease_seconds)),
            llm_provider=env.get("LLM_PROVIDER", d.llm_provider) or d.llm_provider,
            llm_model=env.get("LLM_MODEL", d.llm_model) or d.llm_model,
            allowed_models=_csv(env.get("ALLOWED_MODELS")),
            model_providers=_model_providers(env.get("MODEL_PROVIDERS")),
            llm_base_url=env.get("LLM_BASE_URL", d.llm_base_url),
            llm_api_key_secret=env.get("LLM_API_KEY_SECRET", d.llm_api_key_secret),
            max_tokens=int(env.get("MAX_TOKENS", d.max_tokens)),
            system_prompt=env.get("SYSTEM_PROMPT", d.system_prompt),
            llm_stall_timeout=float(env.get("LLM_STALL_TIMEOUT_SECONDS", d.llm_stall_timeout)),
            llm_retry_budget=float(env.get("LLM_RETRY_BUDGET_SECONDS", d.llm_retry_budget)),
            max_prompt_bytes=int(env.get("MAX_PROMPT_BYTES", d.max_prompt_bytes)),
            max_messages=int(env.get("MAX_MESSAGES", d.max_messages)),
            management_endpoint_template=env.get(
                "MANAGEMENT_ENDPOINT_TEMPLATE", d.management_endpoint_template
            )
            or d.management_endpoint_template,
            min_frame_interval=float(env.get("MIN_FRAME_INTERVAL_MS", d.min_frame_interval * 1000))
            / 1000,
            max_frame_bytes=int(env.get("MAX_FRAME_BYTES", d.max_frame_bytes)),
            deadline_margin=float(env.get("DEADLINE_MARGIN_SECONDS", d.deadline_margin)),
            connection_ttl_seconds=int(env.get("CONNECTION_TTL_SECONDS", d.connection_ttl_seconds)),
            rate_limit_per_minute=int(env.get("RATE_LIMIT_PER_MINUTE", d.rate_limit_per_minute)),
            max_concurrent_streams=int(env.get("MAX_CONCURRENT_STREAMS", d.max_concurrent_streams)),
            principal_rate_limit_per_minute=int(
                env.get("PRINCIPAL_RATE_LIMIT_PER_MINUTE", d.principal_rate_limit_per_minute)
            ),
            log_content=_bool(env.get("LOG_CONTENT"), d.log_content),
            history_max_turns=int(env.get("HISTORY_MAX_TURNS", d.history_max_turns)),
            history_max_tokens=int(env.get("HISTORY_MAX_TOKENS", d.history_max_tokens)),
            history_ttl_seconds=int(env.get("HISTORY_TTL_SECONDS", d.history_ttl_seconds)),
            resume_ttl_seconds=int(env.get("RESUME_TTL_SECONDS", d.resume_ttl_seconds)),
            resume_grace_seconds=float(env.get("RESUME_GRACE_SECONDS", d.resume_grace_seconds)),
            control_poll_interval=float(env.get("CONTROL_POLL_MS", d.control_poll_interval * 1000))
            / 1000,
            forward_reasoning=_bool(env.get("FORWARD_REASONING"), d.forward_reasoning),
            response_cache_table=env.get("RESPONSE_CACHE_TABLE", d.response_cache_table),
            response_cache_ttl_seconds=int(
                env.get("RESPONSE_CACHE_TTL_SECONDS", d.response_cache_ttl_seconds)
            ),
            response_cache_shared=_bool(env.get("RESPONSE_CACHE_SHARED"), d.response_cache_shared),
        )


@cache
def get_settings() -> Settings:
    """The container's settings, read once per cold start."""
    return Settings.from_env()
