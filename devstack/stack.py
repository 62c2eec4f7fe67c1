"""The whole service on this machine: moto (DynamoDB, SNS, SQS, Secrets Manager), the mock LLM,
the functions in their containers, the WebSocket gateway with its Management API, the chat page.

``with LocalStack(StackConfig(ws_port=0, http_port=0)) as stack: ...`` runs it on a background
event loop; ``python -m devstack`` runs it in the foreground. This module is the lifecycle;
what it deploys is devstack.deployment's, what runs on its loop devstack.servers'.
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
from collections.abc import Callable
from typing import Any

from .config import PREFIX, ROOT, StackConfig
from .dead_letters import DeadLetters, sqs_record
from .deployment import BEDROCK_MODEL_ID
from .resources import MotoServer, Resources, create_resources, create_secrets
from .runtime import ACCOUNT_ID, REGION, Invocation
from .servers import StackServers, serve
from .sns import patch_moto

__all__ = [
    "BEDROCK_MODEL_ID",
    "PREFIX",
    "ROOT",
    "LocalStack",
    "Resources",
    "StackConfig",
    "create_resources",
    "serve",
    "sqs_record",
]


class LocalStack(StackServers):
    """Starts and stops everything; a context manager. Its URLs are known once started."""

    def __init__(self, config: StackConfig | None = None) -> None:
        super().__init__(config or StackConfig())
        self.topic_arn = self.dead_letter_queue_url = self.failed_queue_url = ""
        self.hmac_secret = ""
        self.tables: dict[str, str] = {}  # by the variable naming it, e.g. FRAMES_TABLE
        self.resources = Resources()
        self._moto: MotoServer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> LocalStack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> LocalStack:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        cfg = self.config
        patch_moto()
        self._moto = MotoServer(cfg.host)
        self._moto.start()
        self.moto_url = self._moto.url

        base_url = (
            cfg.llm_base_url if cfg.llm_base_url is not None else os.environ.get("LLM_BASE_URL", "")
        )
        if not base_url:
            from .mock_llm import MockLLM

            self.mock_llm = MockLLM(cfg.host, 0, log=cfg.mock_llm_log).start()
            base_url = self.mock_llm.base_url
        self.llm_base_url = base_url
        if self.bedrock_fanout:
            from .mock_bedrock import MockBedrock

            self.mock_bedrock = MockBedrock(cfg.host).start()
        self._create_resources()
        dead_letters = DeadLetters(
            self.template(), self.client, self.resources.queues, self.dead_letter_queue_url
        )

        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="devstack", daemon=True)
        self._thread.start()
        self.call(self._astart(dead_letters))
        assert self.fanout is not None
        sns = self.client("sns")
        for sub in self.subscriptions():
            self.fanout.subscribe(sns, self.topic_arn, sub, self._internal_url)

    def stop(self) -> None:
        """Close sockets (their $disconnect runs), stop the functions, then the servers."""
        try:
            if self._loop is not None and self._loop.is_running():
                try:
                    self.call(self._astop(), timeout=30)
                finally:
                    self._loop.call_soon_threadsafe(self._loop.stop)
                    assert self._thread is not None
                    self._thread.join(timeout=10)
            if self._loop is not None and not self._loop.is_running():
                self._loop.close()
            self._loop = None
            if self.mock_llm is not None:
                self.mock_llm.stop()
            if self.mock_bedrock is not None:
                self.mock_bedrock.stop()
            if self._moto is not None:
                self._moto.stop()
                self._moto = None
        finally:  # even on a second Ctrl-C: never leave containers behind
            if self.runtime is not None:
                self.runtime.kill()

    def _create_resources(self) -> None:
        template = self.template()
        mappings = {queue for _, queue, _ in template.event_source_mappings()}
        self.resources = create_resources(
            template, self.client, dict.fromkeys(mappings, self.config.dead_letter_visibility)
        )
        self.tables = {
            variable: self.resources.tables[table]
            for variable, table in template.variables_naming("AWS::DynamoDB::Table").items()
        }
        (subscribed,) = {s.topic for s in template.subscriptions()}
        self.topic_arn = self.resources.topics[subscribed]
        (dead_letters,) = mappings
        self.dead_letter_queue_url = self.resources.queues[dead_letters]
        self.failed_queue_url = self.resources.queues[template.redrive_target(dead_letters) or ""]
        self.hmac_secret = create_secrets(template, self.client, self.config.llm_api_key)

    def mint_token(self, sub: str = "local-user", ttl: int = 3600) -> str:
        """A token the authorizer accepts in hmac mode (what `llmstream.auth mint` prints)."""
        layer = str(self.config.root / "layers" / "stream")
        if layer not in sys.path:
            sys.path.insert(0, layer)
        from llmstream.auth import mint_hmac_token

        if not self.hmac_secret:
            raise RuntimeError("the stack is not running with auth mode 'hmac'")
        return mint_hmac_token(self.hmac_secret, sub, ttl=ttl)

    # ------------------------------------------------------------------ for tests and tools

    def call(self, coro: Any, timeout: float | None = None) -> Any:
        """Run a coroutine on the stack's loop from another thread and return its result."""
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def invocations(self, function: str | None = None) -> list[Invocation]:
        assert self.runtime is not None
        return [i for i in list(self.runtime.invocations) if function in (None, i.function)]

    def wait_for_invocations(
        self, predicate: Callable[[list[Invocation]], Any], timeout: float = 10.0
    ) -> Any:
        """Block until ``predicate(all invocations so far)`` holds (TimeoutError otherwise)."""
        assert self.runtime is not None
        return self.call(self.runtime.wait_for(predicate, timeout))

    def published(self) -> list[dict[str, Any]]:
        """Every message published to the prompt topic so far (read from moto's backend)."""
        from moto.sns.models import sns_backends

        topic = sns_backends[ACCOUNT_ID][REGION].topics[self.topic_arn]
        return [
            {"MessageId": m[0], "Message": m[1], "MessageAttributes": m[3]}
            for m in list(topic.sent_notifications)
        ]
