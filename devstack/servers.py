"""What runs on the local stack's event loop: the functions' runtime and the SNS fan-out behind
an internal server, the WebSocket gateway with its Management API, the chat page, and the
dead-letter pollers; started in that order and stopped the other way round."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiohttp import web

from .config import StackConfig
from .dead_letters import DeadLetters
from .deployment import LocalDeployment
from .gateway import Gateway
from .management import ManagementApi
from .page import page_app
from .runtime import Runtime
from .sns import Fanout

log = logging.getLogger("devstack")


async def serve(app: web.Application, host: str, port: int) -> tuple[web.AppRunner, int]:
    """Serve ``app`` on the running loop; port 0 picks a free one. Returns the runner and port."""
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=2)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    server = site._server
    assert isinstance(server, asyncio.base_events.Server)
    return runner, server.sockets[0].getsockname()[1]


class StackServers(LocalDeployment):
    """The deployment's servers, on the loop they are started on. Their URLs are known, and
    ``runtime``, ``gateway`` and the rest set, once ``_astart`` has run."""

    def __init__(self, config: StackConfig) -> None:
        super().__init__(config)
        self.ws_url = self.http_url = self.management_url = ""
        self.runtime: Runtime | None = None
        self.gateway: Gateway | None = None
        self.management: ManagementApi | None = None
        self.fanout: Fanout | None = None
        self.dead_letters: DeadLetters | None = None
        self._runners: list[web.AppRunner] = []
        self._internal_url = ""

    async def _serve(self, app: web.Application, port: int) -> int:
        runner, port = await serve(app, self.config.host, port)
        self._runners.append(runner)
        return port

    async def _astart(self, dead_letters: DeadLetters) -> None:
        cfg = self.config
        self.dead_letters = dead_letters
        self.runtime = Runtime(
            self.function_specs(),
            env=self.function_env(),
            retry_delays=cfg.retry_delays,
            on_async_failure=dead_letters.on_failure,
        )
        dead_letters.runtime = self.runtime
        self.fanout = Fanout(self.runtime)
        internal = web.Application()
        self.runtime.add_routes(internal)
        self.fanout.add_routes(internal)
        self._internal_url = f"http://{cfg.host}:{await self._serve(internal, 0)}"

        self.gateway = Gateway(self.gateway_config(), self.runtime.invoke)
        self.management = ManagementApi(self.gateway)
        app = web.Application()
        self.management.add_routes(app)
        self.gateway.add_routes(app)
        ws_port = await self._serve(app, cfg.ws_port)
        self.gateway.bound(ws_port)
        self.ws_url = f"ws://{cfg.host}:{ws_port}"
        self.management_url = f"http://{cfg.host}:{ws_port}/{cfg.stage}"
        page = page_app(cfg.static_dir, self._page_settings)
        self.http_url = f"http://{cfg.host}:{await self._serve(page, cfg.http_port)}/"
        await self.runtime.start(self._internal_url, prewarm=cfg.prewarm)
        dead_letters.start()

    def _page_settings(self) -> dict[str, Any]:
        """What the chat page reads from /config.json."""
        return {
            "wsUrl": self.ws_url,
            "stage": self.config.stage,
            "authMode": self.auth_mode,
            "mockLlm": self.mock_llm is not None,
            "models": self.models(),
        }

    async def _astop(self) -> None:
        if self.dead_letters is not None:
            await self.dead_letters.stop()
        if self.gateway is not None:
            for conn in list(self.gateway.connections.values()):
                conn.close_soon(1001, "Going away")
            try:
                await asyncio.wait_for(self.gateway.drain(), 10)
            except TimeoutError:
                log.warning("some $disconnect invocations did not finish")
        if self.runtime is not None:
            await self.runtime.stop()
        for runner in reversed(self._runners):
            await runner.cleanup()
        self._runners.clear()
        leftovers = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in leftovers:
            task.cancel()
        await asyncio.gather(*leftovers, return_exceptions=True)
