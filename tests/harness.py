"""Real servers and real clients for end-to-end tests.

`GatewayThread` runs `gateway serve`'s app under uvicorn in its own thread and event loop, on
a socket bound before start (so the offline model's URL, which is this same server, is known).
`WSClient` is a thin protocol client over the `websockets` library.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import socket
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import httpx2 as httpx
import orjson
import uvicorn
from websockets.asyncio.client import ClientConnection, connect

from gateway.app import create_app
from gateway.cli import GatewayServer, uvicorn_config
from gateway.config import Settings
from protocol.events import validate_server_frame

TERMINAL = {"completed", "failed", "cancelled"}

ROLL_DICE = '''
def roll_dice(num_sides: int) -> int:
    """
    Returns a random number between 1 and num_sides.

    Args:
        num_sides (int): The number of sides on the die.

    Returns:
        int: A random integer between 1 and num_sides, representing the die roll.
    """
    import random

    return random.randint(1, num_sides)
'''


def bind_socket(sndbuf: int | None = None) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if sndbuf is not None:  # accepted sockets inherit it: lets tests make sends back up
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
    sock.bind(("127.0.0.1", 0))
    sock.listen(512)
    sock.set_inheritable(True)
    return sock


class GatewayThread:
    def __init__(self, data_dir: Path, *, sndbuf: int | None = None, **overrides: Any) -> None:
        self.sock = bind_socket(sndbuf)
        self.port = self.sock.getsockname()[1]
        settings = Settings()
        settings.port = self.port
        settings.data_dir = data_dir
        settings.offline_tokens_per_second = 0.0
        settings.anthropic_api_key = None
        for key, value in overrides.items():
            setattr(settings, key, value)
        self.settings = settings
        self.app = create_app(settings)
        self.server = GatewayServer(uvicorn_config(self.app, settings))
        self.thread: threading.Thread | None = None
        self.loop: asyncio.AbstractEventLoop | None = None

    @property
    def gateway(self) -> Any:
        return self.app.state.gateway

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/ws"

    def start(self) -> GatewayThread:
        def run() -> None:
            self.loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self.loop)
            try:
                self.loop.run_until_complete(self.server.serve(sockets=[self.sock]))
            finally:
                self.loop.run_until_complete(self.loop.shutdown_asyncgens())
                self.loop.close()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("gateway did not start")
            time.sleep(0.01)
        return self

    def call(self, coro: Any, timeout: float = 10) -> Any:
        """Run a coroutine on the server's loop (to inspect or poke server state)."""
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        self.server.should_exit = True
        if self.thread is not None:
            self.thread.join(timeout=30)
        with contextlib.suppress(OSError):
            self.sock.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def spawn_gateway(data: Path, port: int, **env: str) -> subprocess.Popen[bytes]:
    """`gateway serve` as a real process (unpaced offline model, 1 s shutdown grace)."""
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gateway.cli",
            "serve",
            "--port",
            str(port),
            "--data-dir",
            str(data),
            "--offline-tokens-per-second",
            "0",
        ],
        env={**os.environ, "GATEWAY_SHUTDOWN_GRACE_S": "1", **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def wait_healthy(port: int) -> None:
    async with httpx.AsyncClient() as http:
        for _ in range(300):
            try:
                if (await http.get(f"http://127.0.0.1:{port}/v1/health/")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.05)
    raise AssertionError("gateway did not come up")


class WSClient:
    """A protocol client: `request` sends a command and returns its reply, buffering events."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.ids = itertools.count(1)
        self.events: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self.frames: list[dict[str, Any]] = []
        self.replies: dict[str, dict[str, Any]] = {}
        self.goodbye: dict[str, Any] | None = None

    @classmethod
    async def open(cls, url: str, *, hello: bool = True, **kwargs: Any) -> WSClient:
        kwargs.setdefault("subprotocols", ["agentgw.v1"])
        kwargs.setdefault("max_size", 2**24)
        ws = await connect(url, **kwargs)
        client = cls(ws)
        if hello:
            reply = await client.request("hello", client={"name": "tests", "version": "1"})
            assert reply["type"] == "ack", reply
        return client

    async def close(self) -> None:
        await self.ws.close()

    async def send_raw(self, data: str | bytes) -> None:
        await self.ws.send(data)

    async def send(self, type_: str, **fields: Any) -> str:
        ident = f"c{next(self.ids)}"
        await self.ws.send(orjson.dumps({"type": type_, "id": ident, **fields}).decode())
        return ident

    async def recv(self, timeout: float = 10) -> dict[str, Any]:
        frame = orjson.loads(await asyncio.wait_for(self.ws.recv(), timeout))
        validate_server_frame(frame)  # every frame the server sends follows the protocol models
        self.frames.append(frame)
        if frame["type"] == "event":
            self.events[frame["run_id"]].append(frame)
        elif frame["type"] in ("ack", "error") and frame.get("id") is not None:
            self.replies[frame["id"]] = frame
        elif frame["type"] == "goodbye":
            self.goodbye = frame
        return frame

    async def reply_to(self, ident: str, timeout: float = 10) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while ident not in self.replies:
            frame = await self.recv(max(0.01, deadline - time.monotonic()))
            if frame["type"] == "error" and frame.get("id") is None:
                return frame
        return self.replies[ident]

    async def request(self, type_: str, timeout: float = 10, **fields: Any) -> dict[str, Any]:
        return await self.reply_to(await self.send(type_, **fields), timeout)

    async def until(self, predicate: Any, timeout: float = 20) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        for frame in self.frames:
            if predicate(frame):
                return frame
        while True:
            frame = await self.recv(max(0.01, deadline - time.monotonic()))
            if predicate(frame):
                return frame

    async def finish(self, run_id: str, timeout: float = 20) -> list[dict[str, Any]]:
        """Read until the run's terminal run_status; returns the run's event frames."""
        await self.until(
            lambda f: (
                f["type"] == "event"
                and f["run_id"] == run_id
                and f["event"]["message_type"] == "run_status"
                and f["event"]["status"] in TERMINAL
            ),
            timeout,
        )
        return self.events[run_id]

    async def start_run(self, agent_id: str, text: str, **fields: Any) -> str:
        reply = await self.request(
            "run.start", agent_id=agent_id, messages=[{"role": "user", "content": text}], **fields
        )
        assert reply["type"] == "ack", reply
        return str(reply["result"]["run_id"])

    async def run(self, agent_id: str, text: str, **fields: Any) -> list[dict[str, Any]]:
        return await self.finish(await self.start_run(agent_id, text, **fields))


class REST:
    """Synchronous-looking helpers over an async httpx2 client."""

    def __init__(self, base: str) -> None:
        self.http = httpx.AsyncClient(base_url=base, timeout=20)

    async def close(self) -> None:
        await self.http.aclose()

    async def tool(self, source: str, **fields: Any) -> dict[str, Any]:
        r = await self.http.put("/v1/tools/", json={"source_code": source, **fields})
        assert r.status_code == 200, r.text
        return r.json()  # type: ignore[no-any-return]

    async def agent(self, **fields: Any) -> dict[str, Any]:
        fields.setdefault("model", "anthropic/claude-sonnet-4-6")
        r = await self.http.post("/v1/agents/", json=fields)
        assert r.status_code == 200, r.text
        return r.json()  # type: ignore[no-any-return]


def offline_app(server: GatewayThread) -> Any:
    """The offline model app mounted in the server (to read its stats or change its pace)."""
    for route in server.app.routes:
        if getattr(route, "path", None) == "/offline":
            return route.app  # type: ignore[attr-defined]
    raise LookupError("the offline model is not mounted")


def events_of(frames: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [f["event"] for f in frames]


def types_of(frames: list[dict[str, Any]]) -> list[str]:
    return [f["event"]["message_type"] for f in frames]


def text_of(frames: list[dict[str, Any]]) -> str:
    return "".join(e["content"] for e in events_of(frames) if e["message_type"] == "assistant_message")


def collapse(types: list[str]) -> list[str]:
    """Consecutive duplicates folded: the shape of a run regardless of token counts."""
    out: list[str] = []
    for t in types:
        if not out or out[-1] != t:
            out.append(t)
    return out


__all__ = [
    "REST",
    "ROLL_DICE",
    "TERMINAL",
    "GatewayThread",
    "WSClient",
    "collapse",
    "events_of",
    "offline_app",
    "text_of",
    "types_of",
    "uvicorn",
]
