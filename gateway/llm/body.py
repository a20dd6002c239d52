"""Reading a streamed model response body, chunk by chunk, into a synchronous callback.

`pump(http_response, on_chunk)` returns once the body has ended and every chunk went through
`on_chunk`. How the chunks get there depends on the SDK's HTTP backend:

- **pushed** (aiohttp backend): `on_chunk` runs inside aiohttp's protocol callback, as the
  bytes are parsed off the socket. A paced stream sends one small chunk per token; pulling
  each through `async for` costs a task wake-up and eight generator frames (aiohttp's reader,
  the SDK's vendored transport, httpx2's byte iterators), a third of what a paced token cost
  the gateway. Pushing skips all of it: the chunk goes from the parser to the SSE decoder,
  the interpreter and the subscribers' sockets in one call.
- **pulled** (httpx backend, a compressed body, or an aiohttp version whose internals differ
  from what is checked below): `async for chunk in http_response.aiter_bytes()`.

Both give the same chunks in the same order, end at the same time and fail the same way:

- an exception raised by `on_chunk` ends the pump with that exception; nothing more is fed;
- the connection failing mid-body (reset, read timeout, truncated chunked encoding) raises
  `UpstreamConnectionError`;
- cancelling the awaiting task stops the feed at once (`on_chunk` is not called again, even
  for bytes already on their way); the caller's `async with` then closes the response.

How the push works: aiohttp's HTTP parser feeds the body to the response's `StreamReader`
(`feed_data`, `feed_eof`, `set_exception`). That class is slotted, so its instance is
switched to `_PushReader`, a subclass with the same layout whose `feed_data` hands the bytes
to the registered sink instead of buffering them and waking a reader. End of body and errors
still run aiohttp's own bookkeeping (the connection goes back to the pool as before).

The read timeout of a pushed body (the SDK's, aiohttp's `sock_read`: the longest wait for
the next bytes) is kept by `_IdleWatch`, one timer per body that looks every quarter of the
timeout at whether chunks came, instead of aiohttp's, which cancels and re-arms a loop timer
on every chunk (two more objects per paced token for the garbage collector, and 3-4% of what
a paced token costs). A body silent for the timeout fails with `UpstreamConnectionError`
("timed out"), at most a quarter of the timeout later than aiohttp would have. Waiting for
the response's headers keeps the SDK's own timeout (and its retries).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import httpx2

try:  # the aiohttp backend is an extra of the SDK; without it every body is pulled
    import aiohttp
    from aiohttp.streams import StreamReader as _StreamReader
except ImportError:  # pragma: no cover - anthropic[aiohttp] is a dependency
    aiohttp = None  # type: ignore[assignment]
    _StreamReader = None  # type: ignore[assignment,misc]

__all__ = ["UpstreamConnectionError", "pump", "pushable"]


class UpstreamConnectionError(Exception):
    """The model's connection failed while its response body was being read."""


# The sink of every reader being pushed, keyed by the reader (slotted: no room for it there).
_SINKS: dict[Any, _Sink] = {}


class _Sink:
    __slots__ = ("chunks", "done", "on_chunk")

    def __init__(self, on_chunk: Callable[[bytes], None], done: asyncio.Future[None]) -> None:
        self.on_chunk = on_chunk
        self.done = done
        self.chunks = 0  # how many arrived: what `_IdleWatch` looks at

    def data(self, chunk: bytes) -> None:
        self.chunks += 1
        if self.done.done():  # failed, or the awaiting task was cancelled: feed nothing more
            return
        try:
            self.on_chunk(chunk)
        except Exception as exc:  # reported to the awaiting task, not to aiohttp's parser
            self.done.set_exception(exc)

    def end(self, exc: BaseException | None) -> None:
        if self.done.done():
            return
        if exc is None:
            self.done.set_result(None)
        else:
            self.done.set_exception(_connection_error(exc))


if _StreamReader is not None:

    class _PushReader(_StreamReader):
        """aiohttp's StreamReader, with the body handed to a sink instead of buffered."""

        __slots__ = ()

        def feed_data(self, data: bytes, size: int = 0) -> bool:
            if data:
                self.total_bytes += len(data)
                sink = _SINKS.get(self)
                if sink is not None:
                    sink.data(data)
            return False

        # Chunk boundaries only matter to readchunk(), which nobody calls on a pushed body.
        def begin_http_chunk_receiving(self) -> None:
            pass

        def end_http_chunk_receiving(self) -> None:
            pass

        def feed_eof(self) -> None:
            sink = _SINKS.get(self)
            if sink is not None and self._buffer:
                # Bytes that reached the buffer some other way than feed_data (an aiohttp
                # whose parser calls something else): hand them on rather than lose them.
                sink.data(self.read_nowait())
            super().feed_eof()  # runs aiohttp's end-of-body callbacks (connection release)
            if sink is not None:
                sink.end(None)

        def set_exception(self, exc: BaseException, *args: Any) -> None:
            super().set_exception(exc, *args)
            sink = _SINKS.get(self)
            if sink is not None:
                sink.end(exc)


class _IdleWatch:
    """Fails `sink` once no chunk has arrived for `timeout` seconds (see the module docstring)."""

    __slots__ = ("handle", "last", "loop", "seen", "sink", "timeout")

    def __init__(self, sink: _Sink, timeout: float) -> None:
        self.loop = asyncio.get_running_loop()
        self.sink = sink
        self.timeout = timeout
        self.seen = sink.chunks
        self.last = self.loop.time()
        self.handle = self.loop.call_at(self.last + timeout, self.check)

    def check(self) -> None:
        now = self.loop.time()
        if self.sink.chunks != self.seen:  # chunks came since the last look: restart the wait
            self.seen, self.last = self.sink.chunks, now
        elif now - self.last >= self.timeout:
            self.sink.end(TimeoutError(f"no data from the model for {self.timeout:g} s"))
            return
        self.handle = self.loop.call_at(min(self.last + self.timeout, now + self.timeout / 4), self.check)

    def stop(self) -> None:
        self.handle.cancel()


def _take_read_timeout(reader: Any) -> tuple[Any, float | None]:
    """Switch off aiohttp's per-chunk read timer for this body; returns (its protocol, the
    timeout it had) so that `_IdleWatch` keeps it and it can be put back."""
    protocol = getattr(reader, "_protocol", None)
    timeout = getattr(protocol, "read_timeout", None)
    if not timeout:
        return None, None
    protocol.read_timeout = None
    drop = getattr(protocol, "_drop_timeout", None)
    if drop is not None:
        drop()  # the timer armed by the last chunk; without it, it would fire once
    return protocol, timeout


def _connection_error(exc: BaseException) -> UpstreamConnectionError:
    timeouts: tuple[type[BaseException], ...] = (asyncio.TimeoutError, httpx2.TimeoutException)
    if aiohttp is not None:
        timeouts += (aiohttp.ServerTimeoutError,)
    if isinstance(exc, timeouts):
        text = "timed out reading the model's response"
    else:
        text = str(exc) or type(exc).__name__
    err = UpstreamConnectionError(f"the model's connection failed mid-response: {text}")
    err.__cause__ = exc
    return err


def _aiohttp_reader(http_response: httpx2.Response) -> Any:
    """The aiohttp StreamReader behind an SDK response, if it can be pushed; else None."""
    if _StreamReader is None:
        return None
    encoding = http_response.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        return None  # httpx2 decompresses while pulling; a pushed body would skip that
    # httpx2 wraps the transport's stream (BoundAsyncStream._stream); the SDK's vendored
    # aiohttp transport keeps the aiohttp response on it (AiohttpResponseStream).
    stream = getattr(http_response.stream, "_stream", None)
    response = getattr(stream, "_aiohttp_response", None)
    reader = getattr(response, "content", None)
    if type(reader) is not _StreamReader or http_response.is_stream_consumed:
        return None
    return reader


def pushable(http_response: httpx2.Response) -> bool:
    """True if `pump` would push this response's body (see the module docstring)."""
    return _aiohttp_reader(http_response) is not None


async def pump(http_response: httpx2.Response, on_chunk: Callable[[bytes], None]) -> None:
    """Feed the body of `http_response` to `on_chunk` until it ends (see the module docstring)."""
    reader = _aiohttp_reader(http_response)
    if reader is None:
        await _pull(http_response, on_chunk)
        return
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    sink = _Sink(on_chunk, done)
    buffered = reader.read_nowait() if reader._buffer else b""
    reader.__class__ = _PushReader
    _SINKS[reader] = sink
    protocol, timeout = _take_read_timeout(reader)
    watch = None
    try:
        if buffered:  # what arrived with the headers, before the switch
            sink.data(buffered)
        if reader.exception() is not None:
            sink.end(reader.exception())
        elif reader.is_eof():
            sink.end(None)
        elif timeout:
            watch = _IdleWatch(sink, timeout)
        await done
    finally:
        del _SINKS[reader]
        if watch is not None:
            watch.stop()
        if protocol is not None and protocol.read_timeout is None:
            protocol.read_timeout = timeout  # as found (the next request sets its own anyway)


async def _pull(http_response: httpx2.Response, on_chunk: Callable[[bytes], None]) -> None:
    try:
        async for chunk in http_response.aiter_bytes():
            on_chunk(chunk)
    except httpx2.TransportError as exc:
        raise _connection_error(exc) from exc
