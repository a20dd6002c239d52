"""Lean load-generator clients: the gateway's protocol, and the plain baseline server.

One reader task per connection stamps every frame with `time.time_ns()` as soon as the
`websockets` client hands it over, parses it with orjson and keeps only what the figures
need (per run: the receive time and seq range of each `assistant_message`, the terminal
`run_status`). Everything waits with a timeout; nothing retries.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection, connect

TERMINAL = frozenset({"completed", "failed", "cancelled"})
_loads = orjson.loads


class RunRefused(RuntimeError):
    """The gateway answered run.start with an error frame."""

    def __init__(self, reply: dict[str, Any]) -> None:
        super().__init__(f"run.start refused: {reply}")
        self.code = str((reply.get("error") or {}).get("code", "?"))


@dataclass(slots=True)
class RunTrace:
    """What one connection saw of one run."""

    # (receive ns, seq_from, seq) of every assistant_message frame; seq_from == seq unless merged
    deltas: list[tuple[int, int, int]] = field(default_factory=list)
    frames: int = 0
    merged: int = 0
    last_seq: int = 0
    status: str | None = None
    end_ns: int = 0
    done: asyncio.Future[None] | None = None
    progress: asyncio.Event | None = None  # set on every delta and at the end, when watched

    def future(self) -> asyncio.Future[None]:
        if self.done is None:
            self.done = asyncio.get_running_loop().create_future()
            if self.status is not None:
                self.done.set_result(None)
        return self.done

    @property
    def delta_count(self) -> int:
        return sum(b - a + 1 for _, a, b in self.deltas)

    async def until_deltas(self, n: int) -> None:
        """Return once n deltas arrived or the run ended (wrap in a timeout)."""
        self.progress = asyncio.Event()
        while self.delta_count < n and self.status is None:
            self.progress.clear()
            await self.progress.wait()


class GatewayClient:
    """One websocket connection speaking agentgw.v1."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.ids = itertools.count(1)
        self.pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self.runs: dict[str, RunTrace] = {}
        self.reply_ns: dict[str, int] = {}  # receive time of the replies to watched commands
        self.frames = 0
        self.bytes = 0
        self.reader: asyncio.Task[None] | None = None

    @classmethod
    async def open(cls, url: str, *, hello: bool = True, timeout: float = 30.0) -> GatewayClient:
        ws = await asyncio.wait_for(
            connect(url, subprotocols=["agentgw.v1"], max_size=2**24, compression=None, open_timeout=timeout),  # type: ignore[list-item]
            timeout,
        )
        client = cls(ws)
        client.reader = asyncio.ensure_future(client._read())
        if hello:
            reply = await client.request("hello", timeout=timeout, client={"name": "bench", "version": "1"})
            if reply["type"] != "ack":
                raise RuntimeError(f"hello refused: {reply}")
        return client

    def trace(self, run_id: str) -> RunTrace:
        trace = self.runs.get(run_id)
        if trace is None:
            trace = self.runs[run_id] = RunTrace()
        return trace

    async def _read(self) -> None:
        runs = self.runs
        try:
            async for message in self.ws:
                now = time.time_ns()
                self.frames += 1
                self.bytes += len(message)
                frame = _loads(message)
                kind = frame["type"]
                if kind == "event":
                    run_id = frame["run_id"]
                    trace = runs.get(run_id)
                    if trace is None:
                        trace = runs[run_id] = RunTrace()
                    trace.frames += 1
                    seq = frame["seq"]
                    trace.last_seq = seq
                    event = frame["event"]
                    mtype = event["message_type"]
                    if mtype == "assistant_message":
                        first = frame.get("seq_from") or seq
                        if first != seq:
                            trace.merged += 1
                        trace.deltas.append((now, first, seq))
                        if trace.progress is not None:
                            trace.progress.set()
                    elif mtype == "run_status" and event["status"] in TERMINAL:
                        trace.status = event["status"]
                        trace.end_ns = now
                        if trace.done is not None and not trace.done.done():
                            trace.done.set_result(None)
                        if trace.progress is not None:
                            trace.progress.set()
                elif kind in ("ack", "error"):
                    ident = frame.get("id") or ""
                    if ident in self.reply_ns:
                        self.reply_ns[ident] = now
                    waiter = self.pending.pop(ident, None)
                    if waiter is not None and not waiter.done():
                        waiter.set_result(frame)
        except Exception:  # connection closed: waiters time out or see it below
            pass
        finally:
            for waiter in self.pending.values():
                if not waiter.done():
                    waiter.set_exception(ConnectionError("connection closed"))

    async def send(
        self, type_: str, *, watch: bool = False, **fields: Any
    ) -> tuple[str, asyncio.Future[dict[str, Any]]]:
        """Send a command; with `watch`, its reply's receive time goes to `reply_ns[id]`."""
        ident = f"c{next(self.ids)}"
        if watch:
            self.reply_ns[ident] = 0
        waiter: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.pending[ident] = waiter
        await self.ws.send(orjson.dumps({"type": type_, "id": ident, **fields}).decode())
        return ident, waiter

    async def request(self, type_: str, timeout: float = 30.0, **fields: Any) -> dict[str, Any]:
        _, waiter = await self.send(type_, **fields)
        return await asyncio.wait_for(waiter, timeout)

    async def start_run(self, agent_id: str, text: str, timeout: float = 60.0) -> str:
        reply = await self.request(
            "run.start", timeout=timeout, agent_id=agent_id, messages=[{"role": "user", "content": text}]
        )
        if reply["type"] != "ack":
            raise RunRefused(reply)
        run_id = str(reply["result"]["run_id"])
        self.trace(run_id)
        return run_id

    async def wait_run(self, run_id: str, timeout: float) -> RunTrace:
        trace = self.trace(run_id)
        await asyncio.wait_for(asyncio.shield(trace.future()), timeout)
        return trace

    async def close(self) -> None:
        try:
            await asyncio.wait_for(self.ws.close(), 5)
        except Exception:
            pass
        if self.reader is not None:
            self.reader.cancel()


class PlainClient:
    """One connection to `bench.plainws`; records the frames of the current stream."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.frames = 0
        self.stamps: list[tuple[int, int]] = []  # (receive ns, send ns) of stamped frames
        self.end_ns = 0
        self.done: asyncio.Future[None] | None = None
        self.echo: asyncio.Future[int] | None = None
        self.reader: asyncio.Task[None] | None = None
        self.keep_stamps = False

    @classmethod
    async def open(cls, url: str, *, hello: bool = True, timeout: float = 30.0) -> PlainClient:
        ws = await asyncio.wait_for(
            connect(url, subprotocols=["agentgw.v1"], max_size=2**24, compression=None, open_timeout=timeout),  # type: ignore[list-item]
            timeout,
        )
        client = cls(ws)
        if hello:
            await ws.send('{"op":"hello"}')
            await asyncio.wait_for(ws.recv(), timeout)
        client.reader = asyncio.ensure_future(client._read())
        return client

    def arm(self, *, stamps: bool = False) -> asyncio.Future[None]:
        self.frames = 0
        self.stamps = []
        self.end_ns = 0
        self.keep_stamps = stamps
        self.done = asyncio.get_running_loop().create_future()
        return self.done

    async def _read(self) -> None:
        try:
            async for message in self.ws:
                now = time.time_ns()
                if self.echo is not None and message.startswith('{"op":"echo"'):
                    if not self.echo.done():
                        self.echo.set_result(now)
                    continue
                self.frames += 1
                if self.keep_stamps or '"end"' in message[:64]:
                    frame = _loads(message)
                    if self.keep_stamps and "t" in frame:
                        self.stamps.append((now, frame["t"]))
                    if frame.get("end") and self.done is not None and not self.done.done():
                        self.end_ns = now
                        self.done.set_result(None)
        except Exception:
            pass

    async def send(self, payload: dict[str, Any]) -> None:
        await self.ws.send(orjson.dumps(payload).decode())

    async def round_trip(self, timeout: float = 10.0) -> int:
        """Send an echo; the round trip in ns."""
        self.echo = asyncio.get_running_loop().create_future()
        start = time.time_ns()
        await self.ws.send('{"op":"echo"}')
        end = await asyncio.wait_for(self.echo, timeout)
        self.echo = None
        return end - start

    async def close(self) -> None:
        try:
            await asyncio.wait_for(self.ws.close(), 5)
        except Exception:
            pass
        if self.reader is not None:
            self.reader.cancel()


async def open_many(
    factory: Any, url: str, n: int, *, parallel: int = 64, timeout: float = 120.0
) -> list[Any]:
    """Open n connections, `parallel` at a time; all or an exception (the opened are closed)."""
    sem = asyncio.Semaphore(parallel)
    opened: list[Any] = []

    async def one() -> Any:
        async with sem:
            client = await factory.open(url)
            opened.append(client)
            return client

    try:
        return list(await asyncio.wait_for(asyncio.gather(*(one() for _ in range(n))), timeout))
    except BaseException:
        await close_many(opened)
        raise


async def close_many(clients: list[Any], parallel: int = 256) -> None:
    sem = asyncio.Semaphore(parallel)

    async def one(c: Any) -> None:
        async with sem:
            await c.close()

    await asyncio.gather(*(one(c) for c in clients), return_exceptions=True)
