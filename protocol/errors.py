"""Exceptions that become ``error`` replies.

Exception tree::

    Exception
     └── CommandError        a command is refused: reply with one error frame, keep the connection
          └── ProtocolError  the frame itself is invalid (bad_request, unknown_type);
                             raised by protocol.codec.decode_command and by nothing else

Both carry everything the ``error`` reply needs (``code``, ``message``, ``retryable``,
``details``, ``command_id``) and :func:`protocol.codec.encode_command_error` turns that into
the frame. The server raises :class:`CommandError` itself for refusals that need state
(``not_found``, ``agent_busy``, ...), so one ``except CommandError`` in the dispatcher
answers both kinds.

The blame follows the type: a :class:`ProtocolError` is always the client's fault, and a
server counting bad frames (to close with 4400) counts those only. Failures of the server
itself are not ``CommandError``: the dispatcher maps any other exception to an ``internal``
error with a fixed message, never the exception's text.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .codes import ErrorCode

__all__ = ["CommandError", "ProtocolError"]


class CommandError(Exception):
    """A command was refused with ``code``; the connection stays open.

    ``message`` is for people and must not leak internals or other principals' data.
    ``retryable`` defaults to :attr:`ErrorCode.retryable`. ``details`` is the optional
    machine-readable ``error.details`` object. ``command_id`` is the ``id`` of the refused
    command, echoed in the reply, or ``None`` when it could not be recovered.
    """

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        *,
        details: Mapping[str, Any] | None = None,
        command_id: str | None = None,
        retryable: bool | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details: dict[str, Any] = dict(details) if details is not None else {}
        self.command_id = command_id
        self.retryable = code.retryable if retryable is None else retryable

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.code!r}, {self.message!r}, "
            f"details={self.details!r}, command_id={self.command_id!r})"
        )


class ProtocolError(CommandError):
    """An inbound frame is not a valid command: ``bad_request`` or ``unknown_type``.

    Raised by :func:`protocol.codec.decode_command`, which raises nothing else.
    """
