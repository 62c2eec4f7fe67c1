"""The chat page's HTTP app: devstack/static, and ``/config.json`` telling the page where the
WebSocket API is, its auth mode and the models it may ask for."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web

STATIC = Path(__file__).resolve().parent / "static"
AI_SDK_PAGE = Path(__file__).resolve().parents[1] / "examples" / "ai-sdk-chat" / "dist"
"""The AI SDK example's build (examples/ai-sdk-chat), served at /ai-sdk/ once it is built."""


def page_app(static_dir: Path | None, settings: Callable[[], dict[str, Any]]) -> web.Application:
    """The app serving ``static_dir`` (None: devstack/static); ``settings()`` is the JSON of
    ``/config.json``, read on each request, its ``wsUrl`` named when there is no page."""
    static = static_dir or STATIC
    app = web.Application()

    async def config_json(request: web.Request) -> web.Response:
        return web.json_response(settings())

    async def index(request: web.Request) -> web.StreamResponse:
        page = static / "index.html"
        if page.exists():
            return web.FileResponse(page)
        return web.Response(
            text=f"No chat page here yet; connect a WebSocket client to {settings()['wsUrl']}\n"
        )

    async def ai_sdk(request: web.Request) -> web.StreamResponse:
        if request.path == "/ai-sdk":  # the build's asset paths are relative to /ai-sdk/
            raise web.HTTPFound("/ai-sdk/")
        page = AI_SDK_PAGE / "index.html"
        if page.exists():
            return web.FileResponse(page)
        return web.Response(
            text="The AI SDK example is not built: run `npm ci && npm run build` in "
            "examples/ai-sdk-chat (make local does, when npm is installed)\n"
        )

    app.router.add_get("/config.json", config_json)
    app.router.add_get("/ai-sdk", ai_sdk)
    app.router.add_get("/ai-sdk/", ai_sdk)
    if AI_SDK_PAGE.is_dir():
        app.router.add_static("/ai-sdk/", AI_SDK_PAGE)
    app.router.add_get("/", index)
    if static.is_dir():
        app.router.add_static("/", static)
    return app
