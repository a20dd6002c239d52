"""`gateway serve`'s own pieces: the listening socket and the start-up banner."""

from __future__ import annotations

import socket

from gateway.cli import banner, listening_socket, main
from gateway.config import Settings


def test_accepted_connections_have_nodelay() -> None:
    """Without TCP_NODELAY a small frame waits for the peer's delayed ACK (~40 ms a token)."""
    server = listening_socket("127.0.0.1", 0)
    try:
        client = socket.create_connection(server.getsockname())
        conn, _ = server.accept()
        assert conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
        conn.close()
        client.close()
    finally:
        server.close()


def test_banner_names_url_store_and_model(tmp_path) -> None:
    settings = Settings()
    settings.data_dir = tmp_path
    settings.anthropic_api_key = None
    text = banner(settings)
    assert "http://127.0.0.1:8283/" in text and "ws://127.0.0.1:8283/v1/ws" in text
    assert "SQLite" in text and "offline model" in text


def test_help_exits_cleanly(capsys) -> None:
    try:
        main(["--help"])
    except SystemExit as exc:
        assert exc.code == 0
    assert "serve" in capsys.readouterr().out


def test_fd_limit_is_raised_to_the_hard_limit() -> None:
    import resource

    from gateway.cli import raise_fd_limit

    soft_before, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    got = raise_fd_limit()
    soft_after, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert got == soft_after >= soft_before
    assert hard == resource.RLIM_INFINITY or soft_after == hard
