"""Reaching a model: the official `anthropic` SDK builds, authenticates and retries each
request; the response body is read raw and its SSE events decoded with orjson straight into
the interpreter (the SDK's own per-event model building is the hot path's largest cost);
`gateway.llm.body` feeds the body, pushed from aiohttp's protocol callback where it can.

An agent's `model` handle is Letta's `provider/name`: `anthropic/<model>` goes to Anthropic
(or `ANTHROPIC_BASE_URL`) when an API key is set, otherwise to the built-in offline model;
`offline/<name>` always goes to the offline model. Both are plain HTTP through the SDK.

The SDK's HTTP backend is its official aiohttp one (`anthropic[aiohttp]`,
`DefaultAioHttpClient`) unless `GATEWAY_LLM_HTTP=httpx`: aiohttp's C parser reads a streamed
body for about half the CPU per chunk of httpx2's pure-Python stack (httpcore, h11, anyio),
which is most of what a paced token costs the gateway (bench: `make bench`).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anthropic
import httpx2

from gateway.config import Settings

PROVIDERS = ("anthropic", "offline")


class UnknownModel(ValueError):
    pass


def parse_handle(handle: str) -> tuple[str, str]:
    """`provider/name` -> (provider, name); ValueError with a readable message otherwise."""
    provider, sep, name = handle.partition("/")
    if not sep or not name or provider not in PROVIDERS:
        raise UnknownModel(f"model must look like 'anthropic/<model>' or 'offline/<name>', got {handle!r}")
    return provider, name


#: The SDK's default timeouts (connect 5 s, the rest 600 s).
DEFAULT_READ_TIMEOUT_S = 600.0
CONNECT_TIMEOUT_S = 5.0


def make_client(
    api_key: str,
    base_url: str | None,
    retries: int,
    backend: str,
    read_timeout_s: float = DEFAULT_READ_TIMEOUT_S,
) -> anthropic.AsyncAnthropic:
    """An SDK client on the chosen HTTP backend. `read_timeout_s` bounds every wait for the
    model's next bytes (kept per body by `gateway.llm.body` while a body is pushed)."""
    http_client = anthropic.DefaultAioHttpClient() if backend == "aiohttp" else None
    others = max(DEFAULT_READ_TIMEOUT_S, read_timeout_s)  # write and pool
    timeout = httpx2.Timeout(others, connect=CONNECT_TIMEOUT_S, read=read_timeout_s)
    return anthropic.AsyncAnthropic(
        api_key=api_key,
        base_url=base_url,
        max_retries=retries,
        http_client=http_client,
        timeout=timeout,
    )


class ModelRouter:
    def __init__(self, settings: Settings) -> None:
        retries = int(os.environ.get("GATEWAY_LLM_MAX_RETRIES", "2"))
        http, read = settings.llm_http, settings.llm_read_timeout_s
        self.offline = make_client("offline", settings.resolved_offline_url(), retries, http, read)
        self.real: anthropic.AsyncAnthropic | None = None
        if settings.anthropic_api_key:
            self.real = make_client(
                settings.anthropic_api_key, settings.anthropic_base_url, retries, http, read
            )

    @staticmethod
    def describe_settings(settings: Settings) -> str:
        offline = settings.resolved_offline_url()
        if settings.anthropic_api_key:
            real = settings.anthropic_base_url or "https://api.anthropic.com"
            return f"anthropic/* -> {real}; offline/* -> {offline}"
        return f"anthropic/* and offline/* -> offline model at {offline}"

    def resolve(self, handle: str) -> tuple[anthropic.AsyncAnthropic, str]:
        provider, name = parse_handle(handle)
        if provider == "anthropic" and self.real is not None:
            return self.real, name
        return self.offline, name

    def warm_up(self) -> None:
        """Load what the SDK imports lazily on the first request (its resources and request
        types), so that a start-up `gc.freeze()` covers it."""
        for client in (self.offline, self.real):
            if client is not None:
                _ = client.messages.with_streaming_response.create
        import anthropic.types  # noqa: F401

    async def close(self) -> None:
        await self.offline.close()
        if self.real is not None:
            await self.real.close()


@asynccontextmanager
async def open_stream(
    client: anthropic.AsyncAnthropic, request: dict[str, Any]
) -> AsyncIterator[httpx2.Response]:
    """Open a streaming Messages request; yields the HTTP response, whose body `body.pump`
    reads. Leaving the block closes the upstream connection (which is how a cancel stops
    the model)."""
    async with client.messages.with_streaming_response.create(**request, stream=True) as response:
        yield response.http_response
