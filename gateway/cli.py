"""`gateway serve` and `gateway offline-model`."""

from __future__ import annotations

import argparse
import logging
import resource
import socket
import sys
from pathlib import Path

import uvicorn

from gateway import __version__
from gateway.config import Settings, SettingsError


class GatewayServer(uvicorn.Server):
    """uvicorn, with the gateway's own drain (goodbye + 1001, grace for running steps)
    before uvicorn closes the connections."""

    async def shutdown(self, sockets=None):  # type: ignore[no-untyped-def]
        gateway = getattr(self.config.app, "state", None)
        gw = getattr(gateway, "gateway", None) if gateway is not None else None
        if gw is not None and getattr(gw, "manager", None) is not None:
            await gw.drain()
        await super().shutdown(sockets)


def uvicorn_config(app: object, settings: Settings, **extra: object) -> uvicorn.Config:
    return uvicorn.Config(
        app,  # type: ignore[arg-type]
        host=settings.host,
        port=settings.port,
        ws="auto",
        ws_max_size=settings.max_frame_bytes,
        ws_ping_interval=settings.heartbeat_s,
        ws_ping_timeout=settings.heartbeat_s,
        ws_per_message_deflate=False,
        loop="auto",
        http="auto",
        lifespan="on",
        log_level="warning",
        timeout_graceful_shutdown=int(settings.shutdown_grace_s) + 5,
        **extra,  # type: ignore[arg-type]
    )


def listening_socket(host: str, port: int) -> socket.socket:
    """The server's socket, with TCP_NODELAY (inherited by accepted connections): a relay of
    small frames must not wait for the peer's delayed ACK (~40 ms per token otherwise on
    event loops that don't set it per connection)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def banner(settings: Settings) -> str:
    from gateway.llm.client import ModelRouter

    url = f"http://{settings.public_host()}:{settings.port}"
    db = settings.resolved_database_url()
    store = "PostgreSQL" if db.startswith("postgresql") else f"SQLite ({db.split(':///', 1)[-1]})"
    broker = f"Redis ({settings.redis_url})" if settings.redis_url else "in-process memory"
    offline = (
        ""
        if settings.anthropic_api_key
        else f" (no ANTHROPIC_API_KEY; offline model paced at {settings.offline_tokens_per_second:g} tok/s)"
    )
    return "\n".join(
        [
            f"agent-gateway {__version__}",
            f"  chat UI     {url}/",
            f"  websocket   ws://{settings.public_host()}:{settings.port}/v1/ws  (subprotocol agentgw.v1)",
            f"  REST        {url}/v1/",
            f"  store       {store}",
            f"  event logs  {broker}",
            f"  models      {ModelRouter.describe_settings(settings)}{offline}",
        ]
    )


def raise_fd_limit() -> int:
    """Lift the soft open-files limit to the hard one: each websocket is a descriptor, and
    a default soft limit of 1024 would cap the server near a thousand connections."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            return int(target)
        except (ValueError, OSError):
            return int(soft)
    return int(soft)


def serve(args: argparse.Namespace) -> int:
    from gateway.app import create_app

    raise_fd_limit()
    try:
        settings = Settings()
    except SettingsError as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return 2
    settings.host = args.host
    settings.port = args.port
    if args.data_dir:
        settings.data_dir = Path(args.data_dir)
    if args.database_url:
        settings.database_url = args.database_url
    if args.redis_url:
        settings.redis_url = args.redis_url
    if args.offline_tokens_per_second is not None:
        settings.offline_tokens_per_second = args.offline_tokens_per_second
    if args.allow_origin:
        settings.allowed_origins = tuple(args.allow_origin)
    settings.freeze_gc = True
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    app = create_app(settings)
    print(banner(settings), flush=True)
    server = GatewayServer(uvicorn_config(app, settings))
    server.run(sockets=[listening_socket(settings.host, settings.port)])
    return 0


def offline_model(args: argparse.Namespace) -> int:
    from gateway.llm.offline import main as offline_main

    argv = ["--host", args.host, "--port", str(args.port), "--tokens-per-second", str(args.tokens_per_second)]
    return offline_main(argv) or 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gateway", description="Realtime gateway for AI agents")
    parser.add_argument("--version", action="version", version=__version__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("serve", help="serve the websocket, REST API and chat UI")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8283)
    p.add_argument("--data-dir", help="where the SQLite file lives (default ./data)")
    p.add_argument(
        "--database-url", help="e.g. postgresql+asyncpg://user@host/db (default: SQLite in the data dir)"
    )
    p.add_argument("--redis-url", help="redis://host:port/0 for event logs shared by several processes")
    p.add_argument(
        "--offline-tokens-per-second", type=float, help="pace of the built-in offline model (default 30)"
    )
    p.add_argument(
        "--allow-origin", action="append", help="extra browser Origin allowed on the websocket (repeatable)"
    )
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(func=serve)
    o = sub.add_parser("offline-model", help="serve only the offline Anthropic-compatible model")
    o.add_argument("--host", default="127.0.0.1")
    o.add_argument("--port", type=int, default=8788)
    o.add_argument("--tokens-per-second", type=float, default=30.0)
    o.set_defaults(func=offline_model)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
