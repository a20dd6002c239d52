"""How a run ends when the model fails: an `error` event mid-stream, an HTTP error, a model
that cannot be reached, a connection cut mid-body, a model that falls silent (before its
headers or mid-body) for the read timeout, a body that is not valid SSE JSON.

Each ends the run `failed` with `stop_reason: llm_api_error` and an `error_message` saying
which failure it was and whether retrying may help (PROTOCOL.md section 4), keeps what was
streamed before the failure in the agent's history, and leaves the agent usable. The model
is the offline model over HTTP, or, for failures it cannot produce (a cut connection, a
broken body), a raw TCP server writing hand-made HTTP responses.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.harness import REST, GatewayThread, WSClient, events_of, free_port, text_of

START = [
    {
        "type": "message_start",
        "message": {
            "id": "msg_raw",
            "type": "message",
            "role": "assistant",
            "model": "raw",
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 5, "output_tokens": 1},
        },
    },
    {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hello"}},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": " there"}},
]


def sse(event: dict[str, Any]) -> bytes:
    data = b"event: %s\ndata: %s\n\n" % (event["type"].encode(), orjson.dumps(event))
    return b"%x\r\n%s\r\n" % (len(data), data)


HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"

Script = Callable[[asyncio.StreamWriter], Awaitable[None]]


@pytest.fixture
async def raw_model() -> AsyncIterator[Callable[[Script], Awaitable[int]]]:
    """A raw HTTP server answering every request with `script`; returns its port."""
    servers: list[asyncio.Server] = []

    async def start(script: Script) -> int:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                await reader.readexactly(length)
                await script(writer)
                await reader.read()  # until the gateway closes the connection
            except (asyncio.IncompleteReadError, ConnectionError):
                pass
            finally:
                writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        servers.append(server)
        return int(server.sockets[0].getsockname()[1])

    yield start
    for server in servers:
        server.close()


def gateway_on(
    tmp_path: Path,
    port: int,
    monkeypatch: pytest.MonkeyPatch,
    *,
    backend: str = "aiohttp",
    read_timeout_s: float | None = None,
) -> GatewayThread:
    """A started gateway whose model is the raw server on `port`, with no SDK retries."""
    monkeypatch.setenv("GATEWAY_LLM_MAX_RETRIES", "0")
    if read_timeout_s is not None:
        monkeypatch.setenv("GATEWAY_LLM_READ_TIMEOUT_S", str(read_timeout_s))
    url = f"http://127.0.0.1:{port}"
    return GatewayThread(tmp_path / "data", offline_base_url=url, llm_http=backend).start()


async def failed_run(gw: GatewayThread, text: str) -> tuple[list[dict[str, Any]], dict[str, Any], str]:
    """Run `text` on a new agent; returns the frames, the error_message and the agent id."""
    rest = REST(gw.url)
    ws = await WSClient.open(gw.ws_url)
    try:
        agent = await rest.agent(name="fails", model="offline/x")
        frames = await ws.run(agent["id"], text)
        end = frames[-1]["event"]
        assert end["message_type"] == "run_status" and end["status"] == "failed", end
        assert frames[-3]["event"]["stop_reason"] == "llm_api_error"
        errors = [e for e in events_of(frames) if e["message_type"] == "error_message"]
        assert len(errors) == 1
        return frames, errors[0], agent["id"]
    finally:
        await ws.close()
        await rest.close()


async def history_text(gw: GatewayThread, agent_id: str) -> list[tuple[str, str]]:
    rest = REST(gw.url)
    try:
        r = await rest.http.get(f"/v1/agents/{agent_id}/messages")
        assert r.status_code == 200, r.text
        return [(m["message_type"], m.get("content") or "") for m in r.json()]
    finally:
        await rest.close()


async def test_an_error_event_mid_stream(server: GatewayThread) -> None:
    frames, error, agent_id = await failed_run(server, "[[error:overloaded]] Write a long answer.")
    assert error["error_type"] == "overloaded_error" and error["retryable"] is True
    streamed = text_of(frames)
    assert streamed, "the tokens before the error were relayed"
    assert ("assistant_message", streamed) in await history_text(server, agent_id)


async def test_an_http_error_before_the_stream(server: GatewayThread) -> None:
    _, error, _ = await failed_run(server, "[[http:400]] Hello")
    assert error["error_type"] == "http_400" and error["retryable"] is False
    assert error["message"]


async def test_a_model_that_cannot_be_reached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_LLM_MAX_RETRIES", "0")
    gw = GatewayThread(tmp_path / "data", offline_base_url=f"http://127.0.0.1:{free_port()}").start()
    try:
        _, error, _ = await failed_run(gw, "Hello")
        assert error["error_type"] == "connection_error" and error["retryable"] is True
    finally:
        gw.stop()


@pytest.mark.parametrize("backend", ["aiohttp", "httpx"])
async def test_a_connection_cut_mid_stream(
    tmp_path: Path, raw_model: Any, backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def cut(writer: asyncio.StreamWriter) -> None:
        writer.write(HEAD + b"".join(sse(e) for e in START))
        await writer.drain()
        await asyncio.sleep(0.1)
        writer.transport.abort()  # inside the chunked body: no message_stop, no last chunk

    gw = gateway_on(tmp_path, await raw_model(cut), monkeypatch, backend=backend)
    try:
        frames, error, agent_id = await failed_run(gw, "Hello")
        assert error["error_type"] == "connection_error" and error["retryable"] is True
        assert "mid-response" in error["message"]
        assert text_of(frames) == "Hello there"
        assert ("assistant_message", "Hello there") in await history_text(gw, agent_id)
    finally:
        gw.stop()


@pytest.mark.parametrize("backend", ["aiohttp", "httpx"])
async def test_a_model_silent_mid_stream_for_the_read_timeout(
    tmp_path: Path, raw_model: Any, backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GATEWAY_LLM_READ_TIMEOUT_S bounds the wait for the model's next bytes; a pushed body
    (aiohttp) keeps it with one watch per body, a pulled one (httpx) with the SDK's timeout:
    both end the run the same way, soon after the timeout, with what streamed kept."""

    async def silent(writer: asyncio.StreamWriter) -> None:
        writer.write(HEAD + b"".join(sse(e) for e in START))
        await writer.drain()  # and nothing more, the connection left open

    gw = gateway_on(tmp_path, await raw_model(silent), monkeypatch, backend=backend, read_timeout_s=0.5)
    try:
        started = asyncio.get_running_loop().time()
        frames, error, agent_id = await failed_run(gw, "Hello")
        assert asyncio.get_running_loop().time() - started < 5.0
        assert error["error_type"] == "connection_error" and error["retryable"] is True
        assert "timed out" in error["message"], error
        assert text_of(frames) == "Hello there"
        assert ("assistant_message", "Hello there") in await history_text(gw, agent_id)
    finally:
        gw.stop()


async def test_a_model_that_never_answers_times_out(
    tmp_path: Path, raw_model: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same timeout bounds the wait for the response's headers (the SDK's own, retried
    GATEWAY_LLM_MAX_RETRIES times)."""

    async def mute(writer: asyncio.StreamWriter) -> None:
        return None  # reads the request, answers nothing

    gw = gateway_on(tmp_path, await raw_model(mute), monkeypatch, read_timeout_s=0.5)
    try:
        frames, error, _ = await failed_run(gw, "Hello")
        assert error["error_type"] == "connection_error" and error["retryable"] is True
        assert "timed out" in error["message"].lower(), error
        assert text_of(frames) == ""
    finally:
        gw.stop()


async def test_a_body_that_is_not_sse_json(tmp_path: Path, raw_model: Any) -> None:
    async def broken(writer: asyncio.StreamWriter) -> None:
        bad = b"event: content_block_delta\ndata: {not json\n\n"
        writer.write(HEAD + b"".join(sse(e) for e in START) + b"%x\r\n%s\r\n" % (len(bad), bad))
        await writer.drain()  # and the body stays open: the gateway must give up on its own

    port = await raw_model(broken)
    gw = GatewayThread(tmp_path / "data", offline_base_url=f"http://127.0.0.1:{port}").start()
    try:
        frames, error, _ = await failed_run(gw, "Hello")
        assert error["error_type"] == "stream_protocol_error" and error["retryable"] is True
        assert "not valid JSON" in error["message"]
        assert text_of(frames) == "Hello there"
    finally:
        gw.stop()
