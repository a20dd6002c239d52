"""Settings of one gateway process, from flags and environment (flags win).

Environment variables use the `GATEWAY_` prefix; `ANTHROPIC_API_KEY` and
`ANTHROPIC_BASE_URL` keep the names the official SDK reads.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


class SettingsError(ValueError):
    """A setting that cannot be used; the message names the variable and says why."""


def _env_number(name: str, default: T, kind: Callable[[str], T], what: str) -> T:
    raw = os.environ.get(name)
    if raw in (None, ""):
        return default
    try:
        return kind(raw)
    except ValueError:
        raise SettingsError(f"{name} must be {what}, got {raw!r}") from None


def _env_float(name: str, default: float) -> float:
    return _env_number(name, default, float, "a number")


def _env_int(name: str, default: int) -> int:
    return _env_number(name, default, int, "an integer")


def _env_positive(name: str, default: float) -> float:
    value = _env_float(name, default)
    if not value > 0:
        raise SettingsError(f"{name} must be a number above 0, got {os.environ.get(name)!r}")
    return value


LLM_HTTP_BACKENDS = ("aiohttp", "httpx")


def _env_choice(name: str, choices: tuple[str, ...]) -> str:
    raw = (os.environ.get(name) or choices[0]).strip().lower()
    if raw not in choices:
        raise SettingsError(f"{name} must be one of {', '.join(choices)}, got {raw!r}")
    return raw


@dataclass(slots=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8283
    data_dir: Path = field(default_factory=lambda: Path(os.environ.get("GATEWAY_DATA_DIR", "data")))
    database_url: str | None = field(default_factory=lambda: os.environ.get("GATEWAY_DATABASE_URL") or None)
    redis_url: str | None = field(default_factory=lambda: os.environ.get("GATEWAY_REDIS_URL") or None)
    redis_prefix: str = field(default_factory=lambda: os.environ.get("GATEWAY_REDIS_PREFIX", "gw"))
    # A process owns its running runs for this long past its last heartbeat (several processes).
    run_lease_s: float = field(default_factory=lambda: _env_float("GATEWAY_RUN_LEASE_S", 15.0))
    anthropic_api_key: str | None = field(default_factory=lambda: os.environ.get("ANTHROPIC_API_KEY") or None)
    anthropic_base_url: str | None = field(
        default_factory=lambda: os.environ.get("ANTHROPIC_BASE_URL") or None
    )
    # The built-in offline model: mounted at /offline on this server unless offline_base_url points elsewhere.
    offline_base_url: str | None = field(
        default_factory=lambda: os.environ.get("GATEWAY_OFFLINE_URL") or None
    )
    offline_tokens_per_second: float = field(
        default_factory=lambda: _env_float("GATEWAY_OFFLINE_TOKENS_PER_SECOND", 30.0)
    )
    max_frame_bytes: int = field(default_factory=lambda: _env_int("GATEWAY_MAX_FRAME_BYTES", 1 << 20))
    max_subscriptions: int = field(default_factory=lambda: _env_int("GATEWAY_MAX_SUBSCRIPTIONS", 256))
    heartbeat_s: float = field(default_factory=lambda: _env_float("GATEWAY_HEARTBEAT_S", 20.0))
    hello_timeout_s: float = 10.0
    outbox_limit: int = field(default_factory=lambda: _env_int("GATEWAY_OUTBOX_LIMIT", 4096))
    outbox_max_bytes: int = field(default_factory=lambda: _env_int("GATEWAY_OUTBOX_MAX_BYTES", 8 << 20))
    allowed_origins: tuple[str, ...] = ()
    tool_timeout_s: float = field(default_factory=lambda: _env_float("GATEWAY_TOOL_TIMEOUT_S", 30.0))
    log_retention_s: float = field(default_factory=lambda: _env_float("GATEWAY_LOG_RETENTION_S", 86400.0))
    # Bound on the frames of finished runs' logs kept in this process's memory (MiB); past
    # it the oldest go first, before their retention time.
    log_memory_mb: float = field(default_factory=lambda: _env_positive("GATEWAY_LOG_MEMORY_MB", 256.0))
    shutdown_grace_s: float = field(default_factory=lambda: _env_float("GATEWAY_SHUTDOWN_GRACE_S", 10.0))
    default_max_steps: int = 50
    auth_token: str | None = field(default_factory=lambda: os.environ.get("GATEWAY_AUTH_TOKEN") or None)
    # The SDK's HTTP backend for model requests: aiohttp (default; about half the CPU per
    # streamed chunk) or httpx (the SDK's own default).
    llm_http: str = field(default_factory=lambda: _env_choice("GATEWAY_LLM_HTTP", LLM_HTTP_BACKENDS))
    # The longest wait for the model's next bytes (its response headers, then each part of the
    # stream) before the step fails as `connection_error`; the SDK's own default is 600 s.
    llm_read_timeout_s: float = field(
        default_factory=lambda: _env_positive("GATEWAY_LLM_READ_TIMEOUT_S", 600.0)
    )
    # Once started, move every object alive into the collector's permanent generation
    # (gc.freeze): full collections then scan only what was made since, not the ~10^6
    # objects of the imported libraries (100+ ms pauses of the event loop otherwise).
    # `gateway serve` turns it on; an app embedded in another process leaves it to that process.
    freeze_gc: bool = False

    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        self.data_dir.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{(self.data_dir / 'gateway.db').resolve()}"

    def log_memory_bytes(self) -> int:
        return int(self.log_memory_mb * (1 << 20))

    def public_host(self) -> str:
        return "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host

    def resolved_offline_url(self) -> str:
        return self.offline_base_url or f"http://{self.public_host()}:{self.port}/offline"
