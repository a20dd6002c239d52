"""gateway.llm.body: a streamed body read through the real SDK, on both HTTP backends.

The upstream here is a raw asyncio TCP server writing hand-made HTTP/1.1 responses, so that
each test controls exactly what reaches the socket and when: the headers and the first events
in one write, pauses between chunks, a connection cut inside the chunked body, a gzip body.
The aiohttp backend must push (the chunk reaches `on_chunk` from aiohttp's protocol
callback); httpx pulls. Both must hand over the same bytes and fail the same way.
"""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx2
import pytest

from gateway.llm import body
from gateway.llm.body import UpstreamConnectionError, pump, pushable
from gateway.llm.client import make_client, open_stream

BACKENDS = ("aiohttp", "httpx")
REQUEST = {"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}
EVENTS = [
    f'event: content_block_delta\ndata: {{"type":"content_block_delta","index":0,"n":{i}}}\n\n'.encode()
    for i in range(6)
]


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
    b"transfer-encoding: chunked\r\nrequest-id: req_test\r\n"
)

Script = Callable[[asyncio.StreamWriter, "Upstream"], Any]


@dataclass
class Upstream:
    """One response script per request; counts connections and notices closed ones."""

    script: Script
    connections: int = 0
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    port: int = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                await reader.readexactly(length)
                if await self.script(writer, self) is False:
                    break
            await reader.read()  # until the client closes
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.closed.set()
            writer.close()


@pytest.fixture
async def upstream() -> AsyncIterator[Callable[[Script], Any]]:
    servers: list[asyncio.Server] = []

    async def start(script: Script) -> Upstream:
        up = Upstream(script)
        server = await asyncio.start_server(up.handle, "127.0.0.1", 0)
        up.port = server.sockets[0].getsockname()[1]
        servers.append(server)
        return up

    yield start
    for server in servers:
        server.close()


async def read_all(
    up: Upstream,
    backend: str,
    on_chunk: Callable[[bytes], None] | None = None,
    read_timeout: float | None = None,
) -> bytes:
    client = make_client("k", f"http://127.0.0.1:{up.port}", 0, backend)
    if read_timeout is not None:
        client = client.with_options(timeout=httpx2.Timeout(5.0, read=read_timeout))
    got: list[bytes] = []
    try:
        async with open_stream(client, REQUEST) as response:
            assert pushable(response) is (backend == "aiohttp")
            await pump(response, on_chunk or got.append)
    finally:
        await client.close()
    return b"".join(got)


async def paced(writer: asyncio.StreamWriter, up: Upstream) -> None:
    writer.write(HEAD + b"\r\n" + chunk(EVENTS[0]))  # headers and the first event together
    await writer.drain()
    for event in EVENTS[1:]:
        await asyncio.sleep(0.01)
        writer.write(chunk(event))
        await writer.drain()
    writer.write(b"0\r\n\r\n")
    await writer.drain()


@pytest.mark.parametrize("backend", BACKENDS)
async def test_paced_chunks_arrive_whole_and_in_order(upstream: Any, backend: str) -> None:
    up = await upstream(paced)
    assert await read_all(up, backend) == b"".join(EVENTS)


async def test_a_pushed_chunk_is_handed_over_from_the_protocol_callback(upstream: Any) -> None:
    """No task wakes up per chunk: on_chunk runs outside any task after the first one."""
    up = await upstream(paced)
    in_task: list[bool] = []

    def on_chunk(data: bytes) -> None:
        in_task.append(asyncio.current_task() is not None)

    await read_all(up, "aiohttp", on_chunk)
    assert len(in_task) == len(EVENTS)
    assert in_task[1:] == [False] * (len(EVENTS) - 1)


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_body_already_complete_before_the_pump_is_read(upstream: Any, backend: str) -> None:
    async def whole(writer: asyncio.StreamWriter, up: Upstream) -> None:
        writer.write(HEAD + b"\r\n" + b"".join(chunk(e) for e in EVENTS) + b"0\r\n\r\n")
        await writer.drain()

    up = await upstream(whole)
    client = make_client("k", f"http://127.0.0.1:{up.port}", 0, backend)
    got: list[bytes] = []
    try:
        async with open_stream(client, REQUEST) as response:
            await asyncio.sleep(0.1)  # everything, end included, is buffered by now
            await pump(response, got.append)
    finally:
        await client.close()
    assert b"".join(got) == b"".join(EVENTS)


async def test_a_pushed_body_returns_its_connection_to_the_pool(upstream: Any) -> None:
    up = await upstream(paced)
    client = make_client("k", f"http://127.0.0.1:{up.port}", 0, "aiohttp")
    try:
        for _ in range(3):
            got: list[bytes] = []
            async with open_stream(client, REQUEST) as response:
                await pump(response, got.append)
            assert b"".join(got) == b"".join(EVENTS)
    finally:
        await client.close()
    assert up.connections == 1
    assert not body._SINKS


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_connection_cut_mid_body_is_an_upstream_connection_error(upstream: Any, backend: str) -> None:
    async def cut(writer: asyncio.StreamWriter, up: Upstream) -> bool:
        writer.write(HEAD + b"\r\n" + chunk(EVENTS[0]) + b"40\r\npartial")
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.transport.abort()
        return False

    up = await upstream(cut)
    got: list[bytes] = []
    with pytest.raises(UpstreamConnectionError, match="connection failed mid-response"):
        await read_all(up, backend, got.append)
    assert b"".join(got).startswith(EVENTS[0])
    assert not body._SINKS


@pytest.mark.parametrize("backend", BACKENDS)
async def test_an_error_in_on_chunk_ends_the_pump_and_feeds_no_more(upstream: Any, backend: str) -> None:
    up = await upstream(paced)
    calls: list[bytes] = []

    def on_chunk(data: bytes) -> None:
        calls.append(data)
        if len(calls) == 2:
            raise ValueError("bad event")

    with pytest.raises(ValueError, match="bad event"):
        await read_all(up, backend, on_chunk)
    assert len(calls) == 2
    await asyncio.wait_for(up.closed.wait(), 5)  # leaving the block closed the connection


@pytest.mark.parametrize("backend", BACKENDS)
async def test_cancelling_the_pump_stops_the_feed_at_once(upstream: Any, backend: str) -> None:
    async def endless(writer: asyncio.StreamWriter, up: Upstream) -> bool:
        writer.write(HEAD + b"\r\n")
        while True:
            writer.write(chunk(EVENTS[0]))
            await writer.drain()
            await asyncio.sleep(0.002)

    up = await upstream(endless)
    calls: list[bytes] = []
    three = asyncio.Event()

    def on_chunk(data: bytes) -> None:
        calls.append(data)
        if len(calls) == 3:
            three.set()

    task = asyncio.ensure_future(read_all(up, backend, on_chunk))
    await asyncio.wait_for(three.wait(), 5)
    task.cancel()
    seen = len(calls)
    await asyncio.sleep(0.05)  # chunks keep arriving; none may reach on_chunk
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(calls) == seen
    await asyncio.wait_for(up.closed.wait(), 5)
    assert not body._SINKS


def slow(pause: float, silent_after: int | None = None) -> Script:
    """Events `pause` apart; after `silent_after` of them, nothing more (the socket stays open,
    and the server notices when the client closes it)."""

    async def script(writer: asyncio.StreamWriter, up: Upstream) -> None:
        writer.write(HEAD + b"\r\n")
        for i, event in enumerate(EVENTS):
            if i == silent_after:
                return
            writer.write(chunk(event))
            await writer.drain()
            await asyncio.sleep(pause)
        writer.write(b"0\r\n\r\n")
        await writer.drain()

    return script


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_body_silent_for_the_read_timeout_fails_as_timed_out(upstream: Any, backend: str) -> None:
    """Pushed, the read timeout is kept by one watch per body instead of aiohttp's per-chunk
    timer; both backends fail the same way, soon after the timeout."""
    up = await upstream(slow(0.01, silent_after=2))
    got: list[bytes] = []
    started = asyncio.get_running_loop().time()
    with pytest.raises(UpstreamConnectionError, match="timed out reading the model's response"):
        await read_all(up, backend, got.append, read_timeout=0.4)
    waited = asyncio.get_running_loop().time() - started
    assert 0.4 <= waited < 0.4 * 1.25 + 1.0  # the watch looks every quarter of the timeout
    assert b"".join(got) == b"".join(EVENTS[:2])
    await asyncio.wait_for(up.closed.wait(), 5)  # the silent connection was closed
    assert not body._SINKS


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_body_slower_in_all_than_the_read_timeout_is_not_cut(upstream: Any, backend: str) -> None:
    """The timeout is on the wait for the next bytes, not on the whole body: six events
    0.15 s apart (0.9 s in all) pass a 0.4 s read timeout."""
    up = await upstream(slow(0.15))
    assert await read_all(up, backend, read_timeout=0.4) == b"".join(EVENTS)


async def test_a_pushed_body_arms_no_timer_per_chunk(upstream: Any) -> None:
    """While a body is pushed, aiohttp's read timer is off (no timer cancelled and re-armed per
    chunk); the connection gets its timeout back afterwards."""
    up = await upstream(paced)
    client = make_client("k", f"http://127.0.0.1:{up.port}", 0, "aiohttp")
    client = client.with_options(timeout=httpx2.Timeout(5.0, read=7.0))
    protocols: list[Any] = []
    states: list[tuple[Any, Any]] = []

    def on_chunk(data: bytes) -> None:
        (reader,) = body._SINKS
        protocols.append(reader._protocol)
        states.append((reader._protocol.read_timeout, reader._protocol._read_timeout_handle))

    try:
        async with open_stream(client, REQUEST) as response:
            await pump(response, on_chunk)
    finally:
        await client.close()
    assert len(states) == len(EVENTS)
    assert states == [(None, None)] * len(EVENTS)
    assert protocols[0].read_timeout == 7.0


async def test_a_compressed_body_is_pulled_and_decompressed(upstream: Any) -> None:
    packed = gzip.compress(b"".join(EVENTS))

    async def gzipped(writer: asyncio.StreamWriter, up: Upstream) -> None:
        writer.write(HEAD + b"content-encoding: gzip\r\n\r\n" + chunk(packed) + b"0\r\n\r\n")
        await writer.drain()

    up = await upstream(gzipped)
    client = make_client("k", f"http://127.0.0.1:{up.port}", 0, "aiohttp")
    got: list[bytes] = []
    try:
        async with open_stream(client, REQUEST) as response:
            assert not pushable(response)
            await pump(response, got.append)
    finally:
        await client.close()
    assert b"".join(got) == b"".join(EVENTS)


async def test_bytes_that_reached_the_buffer_are_handed_on_at_the_end() -> None:
    """Should an aiohttp release feed the body through another method than feed_data, what
    it buffered still reaches on_chunk when the body ends, instead of being lost."""
    from aiohttp.streams import StreamReader

    class FlowControl:  # the part of aiohttp's protocol a StreamReader calls
        def pause_reading(self) -> None:
            pass

        def resume_reading(self, resume_parser: bool = True) -> None:
            pass

    loop = asyncio.get_running_loop()
    reader = StreamReader(FlowControl(), 1 << 16, loop=loop)  # type: ignore[arg-type]
    reader.__class__ = body._PushReader
    got: list[bytes] = []
    done: asyncio.Future[None] = loop.create_future()
    body._SINKS[reader] = body._Sink(got.append, done)
    try:
        reader.feed_data(b"pushed ")
        StreamReader.feed_data(reader, b"buffered")
        reader.feed_eof()
        await asyncio.wait_for(done, 1)
    finally:
        del body._SINKS[reader]
    assert got == [b"pushed ", b"buffered"]
