"""Settings from the environment: bad values stop `gateway serve` with a readable message
(exit 2, no traceback), and `GATEWAY_LLM_HTTP` picks the SDK's HTTP backend for model requests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.config import Settings, SettingsError
from tests.harness import REST, GatewayThread, WSClient, free_port, text_of

GREETING = "This is an automated test message. Reply with the message 'Teamwork makes the dream work'."


def serve_with(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """`gateway serve` as a real process, with a clean GATEWAY_*/ANTHROPIC_* environment plus `env`."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "ANTHROPIC_"))}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway.cli",
            "serve",
            "--port",
            str(free_port()),
            "--data-dir",
            str(tmp_path / "data"),
        ],
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("GATEWAY_LLM_HTTP", "bogus"),
        ("GATEWAY_OUTBOX_LIMIT", "abc"),
        ("GATEWAY_HEARTBEAT_S", "soon"),
        ("GATEWAY_LOG_MEMORY_MB", "0"),
        ("GATEWAY_LLM_READ_TIMEOUT_S", "-1"),
    ],
)
def test_serve_rejects_a_bad_setting(tmp_path: Path, name: str, value: str) -> None:
    done = serve_with(tmp_path, **{name: value})
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
    assert done.stderr.startswith("gateway: "), done.stderr
    assert name in done.stderr and repr(value) in done.stderr, done.stderr
    assert "Traceback" not in done.stderr, done.stderr


def test_llm_http_defaults_to_aiohttp(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GATEWAY_LLM_HTTP", raising=False)
    assert Settings().llm_http == "aiohttp"


def test_llm_http_is_case_insensitive(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_LLM_HTTP", "HTTPX")
    assert Settings().llm_http == "httpx"


def test_settings_errors_name_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_LLM_HTTP", "curl")
    with pytest.raises(SettingsError, match=r"GATEWAY_LLM_HTTP .*'curl'"):
        Settings()
    monkeypatch.delenv("GATEWAY_LLM_HTTP")
    monkeypatch.setenv("GATEWAY_MAX_SUBSCRIPTIONS", "1.5")
    with pytest.raises(SettingsError, match=r"GATEWAY_MAX_SUBSCRIPTIONS .*'1.5'"):
        Settings()


def is_aiohttp(client: object) -> bool:
    """Whether an `AsyncAnthropic` client sends through the SDK's aiohttp backend."""
    http = client._client  # type: ignore[attr-defined]
    return "aiohttp" in type(http).__name__.lower() and type(http._transport).__name__ == "AiohttpTransport"


async def greet(server: GatewayThread) -> str:
    rest = REST(server.url)
    ws = await WSClient.open(server.ws_url)
    try:
        agent = await rest.agent(name="greeter")
        frames = await ws.run(agent["id"], GREETING)
        assert frames[-1]["event"]["status"] == "completed", frames[-1]
        return text_of(frames)
    finally:
        await ws.close()
        await rest.close()


@pytest.mark.parametrize("backend", ["httpx", "aiohttp"])
async def test_a_run_completes_on_either_backend(tmp_path: Path, backend: str) -> None:
    server = GatewayThread(tmp_path / "data", llm_http=backend).start()
    try:
        router = server.gateway.router
        assert is_aiohttp(router.offline) == (backend == "aiohttp")
        assert await greet(server) == "Teamwork makes the dream work"
    finally:
        server.stop()


async def test_the_default_backend_is_aiohttp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GATEWAY_LLM_HTTP", raising=False)
    server = GatewayThread(tmp_path / "data").start()
    try:
        assert server.settings.llm_http == "aiohttp"
        assert is_aiohttp(server.gateway.router.offline)
        assert await greet(server) == "Teamwork makes the dream work"
    finally:
        server.stop()
