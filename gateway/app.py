"""The ASGI app: REST under /v1, the websocket at /v1/ws, the chat UI at /, and (unless
pointed elsewhere) the built-in offline model at /offline, reached over HTTP like any other.
"""

from __future__ import annotations

import contextlib
import gc
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from starlette.applications import Starlette
from starlette.routing import BaseRoute, Mount, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send

from gateway.api.routes import routes as api_routes
from gateway.api.sse import routes as sse_routes
from gateway.broker import Broker, MemoryBroker, RedisBroker
from gateway.config import Settings
from gateway.llm.client import ModelRouter
from gateway.runs.manager import RunManager
from gateway.store import Store
from gateway.ws.connection import Connection
from gateway.ws.endpoint import WebSocketEndpoint
from protocol.codes import CloseCode

log = logging.getLogger("gateway")

WEB_DIR = Path(__file__).resolve().parent.parent / "web"


@dataclass
class Gateway:
    """Everything one process serves with; built in the lifespan, reached as app.state.gateway."""

    settings: Settings
    store: Store = field(init=False)
    broker: Broker = field(init=False)
    router: ModelRouter = field(init=False)
    manager: RunManager = field(init=False)
    connections: set[Connection] = field(default_factory=set)
    drained: bool = False

    async def open(self) -> None:
        s = self.settings
        self.store = await Store.open(s.resolved_database_url())
        if s.redis_url:
            self.broker = RedisBroker(
                s.redis_url,
                prefix=s.redis_prefix,
                retention_s=s.log_retention_s,
                max_closed_bytes=s.log_memory_bytes(),
            )
        else:
            self.broker = MemoryBroker(retention_s=s.log_retention_s, max_closed_bytes=s.log_memory_bytes())
        await self.broker.start()
        self.router = ModelRouter(s)
        self.manager = RunManager(
            self.store,
            self.broker,
            self.router,
            tool_timeout_s=s.tool_timeout_s,
            default_max_steps=s.default_max_steps,
            shared=s.redis_url is not None,
            lease_s=s.run_lease_s,
        )
        await self.manager.recover()

    async def drain(self) -> None:
        """Graceful stop: refuse new runs, tell every client (goodbye + 1001), let steps finish."""
        if self.drained:
            return
        self.drained = True
        self.manager.accepting = False
        for conn in list(self.connections):
            conn.close(CloseCode.GOING_AWAY, "server shutting down: reconnect and resubscribe")
        await self.manager.shutdown(self.settings.shutdown_grace_s)

    async def close(self) -> None:
        await self.drain()
        await self.router.close()
        await self.broker.stop()
        await self.store.close()


class GatewayApp:
    """The ASGI entry point: websocket upgrades of /v1/ws go straight to the endpoint (no
    middleware wrapping every frame's `send`); everything else, lifespan included, to Starlette."""

    def __init__(self, app: Starlette, websocket: WebSocketEndpoint) -> None:
        self.app = app
        self.websocket = websocket
        self.state = app.state
        self.routes = app.routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket" and scope["path"] == "/v1/ws":
            await self.websocket(scope, receive, send)
        else:
            await self.app(scope, receive, send)


def create_app(settings: Settings | None = None) -> GatewayApp:
    settings = settings or Settings()
    gateway = Gateway(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await gateway.open()
        if settings.freeze_gc:
            gateway.router.warm_up()  # the SDK imports most of itself on first use
            gc.collect()
            gc.freeze()
        try:
            yield
        finally:
            await gateway.close()

    websocket = WebSocketEndpoint(gateway)
    routes: list[BaseRoute] = [*api_routes, *sse_routes, WebSocketRoute("/v1/ws", websocket)]
    if settings.offline_base_url is None:
        from gateway.llm.offline import create_app as create_offline_app

        routes.append(
            Mount("/offline", app=create_offline_app(tokens_per_second=settings.offline_tokens_per_second))
        )
    if WEB_DIR.is_dir():
        routes.append(Mount("/", app=StaticFiles(directory=WEB_DIR, html=True)))
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.gateway = gateway
    return GatewayApp(app, websocket)
