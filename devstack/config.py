"""The local stack's knobs: ports, the LLM, auth, limits, extra functions and subscribers."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .runtime import FunctionSpec
from .sns import Subscription

ROOT = Path(__file__).resolve().parent.parent
PREFIX = "llm-stream-local"
"""The local stack's name: its resources are ``llm-stream-local-<logical id>``."""


@dataclass
class StackConfig:
    """Knobs of the local stack. Ports 0 pick free ones (tests); None means "from the env"."""

    host: str = "127.0.0.1"
    ws_port: int = 3001
    http_port: int = 3000
    stage: str = "local"
    root: Path = ROOT
    llm_base_url: str | None = None  # None: $LLM_BASE_URL, or else the mock LLM
    llm_api_key: str | None = None  # None: $LLM_API_KEY or $OPENAI_API_KEY, or else a dummy
    llm_model: str | None = None  # None: $LLM_MODEL, or else the template's default
    auth_mode: str | None = None  # None: $AUTH_MODE, or else "none"
    idle_timeout: float = 10 * 60.0
    max_connection_life: float = 2 * 60 * 60.0
    post_latency: float = 0.0
    throttle_every: int = 0
    isolation: str = "process"  # or "thread" (handlers in this process; for debugging)
    prewarm: bool = True  # one warm container per function at start, like provisioned concurrency
    retry_delays: tuple[float, ...] = (1.0, 2.0)  # Lambda waits ~1 and ~2 minutes
    max_concurrency: dict[str, int] = field(default_factory=dict)
    async_retries: dict[str, int] = field(default_factory=dict)  # e.g. StreamMaxRetryAttempts
    # template.yaml's parameters, like `sam deploy --parameter-overrides`
    parameters: dict[str, str] = field(default_factory=dict)
    # Function environment on top of the template's. A variable the template sets from a
    # parameter (MIN_FRAME_INTERVAL_MS from MinFrameIntervalMs) overrides that parameter.
    env: dict[str, str] = field(default_factory=dict)
    extra_functions: list[FunctionSpec] = field(default_factory=list)
    # SAM apps (a template.yaml, or its folder) whose functions run beside template.yaml's, on
    # the WebSocket routes they add to its API: examples/custom-handler (devstack.deployment).
    extra_templates: list[Path] = field(default_factory=list)
    subscriptions: list[Subscription] = field(default_factory=list)  # besides StreamFunction's
    static_dir: Path | None = None  # None: devstack/static
    bedrock_fanout: bool = False  # EnableBedrockFanout=true, with the mock Bedrock endpoint
    # How long a dead letter the dead-letter function hands back waits before it comes round
    # again (the template's StreamDeadLetterQueue says 360 s; shorter here, so one sees it).
    dead_letter_visibility: int = 30
    mock_llm_log: bool = False
