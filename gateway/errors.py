"""Errors a command or request can end in; the websocket and REST layers map them to replies."""

from __future__ import annotations

from typing import Any


class GatewayError(Exception):
    """A client-visible failure with a protocol error code (PROTOCOL.md section 6)."""

    http_status = 400

    def __init__(
        self, code: str, message: str, *, details: dict[str, Any] | None = None, retryable: bool = False
    ):
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details
        self.retryable = retryable


def not_found(kind: str, ident: str) -> GatewayError:
    err = GatewayError("not_found", f"{kind} {ident!r} not found")
    err.http_status = 404
    return err


def bad_request(message: str, field: str | None = None) -> GatewayError:
    details = {"errors": [{"field": field, "message": message}]} if field else None
    return GatewayError("bad_request", message if not field else f"{field}: {message}", details=details)
