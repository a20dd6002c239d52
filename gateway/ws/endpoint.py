"""`GET /v1/ws`: the websocket endpoint as a bare ASGI app (no per-frame wrapper cost).

Handshake: the `agentgw.v1` subprotocol is selected when offered (offering others but not
it is refused with HTTP 400); browser Origins are checked against the allowlist (HTTP 403).
Then `hello` must come first, within `hello_timeout_s` (else 4400; a bad token 4401). Each
text frame is one command, handled in arrival order, so a command's reply always precedes
the events it causes. Binary frames close with 1003; oversized frames are closed by the
server with 1009 (uvicorn's `ws_max_size`).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import MutableMapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from gateway.ws.connection import Connection
from gateway.ws.dispatch import Dispatcher
from protocol.codes import CloseCode

if TYPE_CHECKING:
    from gateway.app import Gateway

log = logging.getLogger("gateway.ws")

SUBPROTOCOL = "agentgw.v1"
MAX_CONSECUTIVE_BAD_FRAMES = 20


def origin_allowed(origin: str, host: str, allowlist: tuple[str, ...]) -> bool:
    if "*" in allowlist or origin in allowlist:
        return True
    parts = urlsplit(origin)
    if parts.scheme not in ("http", "https"):
        return False
    if parts.netloc == host:  # the server's own origin
        return True
    return parts.scheme == "http" and parts.hostname in ("localhost", "127.0.0.1", "::1")


def _header(scope: MutableMapping[str, Any], name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return str(value.decode("latin-1"))
    return None


class WebSocketEndpoint:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        message = await receive()
        if message["type"] != "websocket.connect":
            return
        settings = self.gateway.settings
        if self.gateway.drained:  # shutting down: send the client elsewhere at once
            await self._deny(scope, send, 503, "server shutting down")
            return
        origin = _header(scope, b"origin")
        if origin is not None and not origin_allowed(
            origin, _header(scope, b"host") or "", settings.allowed_origins
        ):
            await self._deny(scope, send, 403, "origin not allowed")
            return
        offered = [p.strip() for p in scope.get("subprotocols", ())]
        if offered and SUBPROTOCOL not in offered:
            await self._deny(scope, send, 400, f"unsupported subprotocol; offer {SUBPROTOCOL}")
            return
        await send({"type": "websocket.accept", "subprotocol": SUBPROTOCOL if offered else None})
        conn = Connection(
            uuid.uuid4().hex, send, limit=settings.outbox_limit, max_bytes=settings.outbox_max_bytes
        )
        conn.writer = asyncio.ensure_future(conn.run_writer())
        self.gateway.connections.add(conn)
        dispatcher = Dispatcher(self.gateway, conn)
        try:
            await self._serve(conn, dispatcher, receive)
        finally:
            self.gateway.connections.discard(conn)
            dispatcher.detach_all()
            if conn.writer is not None and not conn.writer.done():
                if conn.close_code is not None:
                    try:
                        await asyncio.wait_for(conn.writer, 2.0)
                    except (TimeoutError, asyncio.CancelledError, Exception):
                        pass
                conn.writer.cancel()

    async def _serve(self, conn: Connection, dispatcher: Dispatcher, receive: Any) -> None:
        settings = self.gateway.settings
        try:
            message = await asyncio.wait_for(receive(), settings.hello_timeout_s)
        except TimeoutError:
            conn.close(CloseCode.PROTOCOL_VIOLATION, "hello must be the first frame, within 10 s")
            await self._drain(conn, receive)
            return
        bad_streak = 0
        while True:
            kind = message["type"]
            if kind == "websocket.disconnect":
                return
            if kind == "websocket.receive":
                text = message.get("text")
                if text is None:
                    conn.close(CloseCode.UNSUPPORTED_DATA, "binary frames are not supported; send JSON text")
                    await self._drain(conn, receive)
                    return
                ok = await dispatcher.handle(text)
                bad_streak = 0 if ok else bad_streak + 1
                if bad_streak >= MAX_CONSECUTIVE_BAD_FRAMES:
                    conn.close(CloseCode.PROTOCOL_VIOLATION, "too many bad frames")
                if conn.close_code is not None:
                    await self._drain(conn, receive)
                    return
            message = await receive()

    async def _drain(self, conn: Connection, receive: Any) -> None:
        """After deciding to close: let the writer send goodbye + close, read until the peer goes."""
        writer = conn.writer
        if writer is not None:
            try:
                await asyncio.wait_for(asyncio.shield(writer), 5.0)
            except (TimeoutError, Exception):
                return
        try:
            while (await asyncio.wait_for(receive(), 5.0))["type"] != "websocket.disconnect":
                pass
        except (TimeoutError, Exception):
            return

    async def _deny(self, scope: MutableMapping[str, Any], send: Any, status: int, reason: str) -> None:
        if "websocket.http.response" in scope.get("extensions", {}):
            body = reason.encode()
            await send(
                {
                    "type": "websocket.http.response.start",
                    "status": status,
                    "headers": [
                        (b"content-type", b"text/plain"),
                        (b"content-length", str(len(body)).encode()),
                    ],
                }
            )
            await send({"type": "websocket.http.response.body", "body": body})
        elif status == 403:
            await send({"type": "websocket.close", "code": 1008})
        else:
            code = CloseCode.GOING_AWAY if status == 503 else CloseCode.PROTOCOL_VIOLATION
            await send({"type": "websocket.accept"})
            await send({"type": "websocket.close", "code": int(code), "reason": reason})
