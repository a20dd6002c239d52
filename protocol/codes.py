"""Close codes and error codes (PROTOCOL.md section 6).

Two vocabularies, two lifetimes:

* :class:`ErrorCode` goes in an ``error`` reply to one command; the connection stays open.
* :class:`CloseCode` ends the connection; the server sends a ``goodbye`` frame carrying the
  same code just before the WebSocket close frame.

:data:`RECONNECT` tells a client which close codes it should reconnect after (with
backoff), resubscribing its runs with ``after`` set to the last ``seq`` it processed.
"""

from __future__ import annotations

from enum import IntEnum, StrEnum

__all__ = [
    "CLOSE_CODE_EXPLANATIONS",
    "ERROR_CODE_RETRYABLE",
    "RECONNECT",
    "CloseCode",
    "ErrorCode",
]


class CloseCode(IntEnum):
    """WebSocket close codes the gateway uses (RFC 6455 section 7.4, plus 4xxx of our own).

    The 4xxx codes mirror the HTTP status they resemble: 4400 bad request, 4401
    unauthorised, 4408 timeout (of a slow consumer), 4429 too many.
    """

    NORMAL_CLOSURE = 1000
    GOING_AWAY = 1001
    UNSUPPORTED_DATA = 1003
    #: Never sent on the wire: what a client observes when the TCP connection drops without a
    #: close frame. Listed because clients must reconnect after it.
    ABNORMAL_CLOSURE = 1006
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    PROTOCOL_VIOLATION = 4400
    AUTHENTICATION_FAILED = 4401
    SLOW_CONSUMER = 4408
    TOO_MANY_CONNECTIONS = 4429

    @property
    def explanation(self) -> str:
        """What this code means, for logs and for the ``goodbye`` reason."""
        return CLOSE_CODE_EXPLANATIONS[self]

    @property
    def reconnect(self) -> bool:
        """Whether a client should reconnect (with backoff) after this code."""
        return self in RECONNECT


#: One line per close code. A drift test checks every :class:`CloseCode` has an entry.
CLOSE_CODE_EXPLANATIONS: dict[CloseCode, str] = {
    CloseCode.NORMAL_CLOSURE: "normal closure",
    CloseCode.GOING_AWAY: "server shutting down; reconnect and resubscribe",
    CloseCode.ABNORMAL_CLOSURE: "connection lost without a close frame; reconnect and resubscribe",
    CloseCode.UNSUPPORTED_DATA: "binary frame; commands are JSON text frames",
    CloseCode.POLICY_VIOLATION: "policy violation",
    CloseCode.MESSAGE_TOO_BIG: "frame too big",
    CloseCode.INTERNAL_ERROR: "internal error",
    CloseCode.PROTOCOL_VIOLATION: "protocol violation: no hello first, or too many bad frames",
    CloseCode.AUTHENTICATION_FAILED: "authentication failed",
    CloseCode.SLOW_CONSUMER: "slow consumer; reconnect and resubscribe with after",
    CloseCode.TOO_MANY_CONNECTIONS: "too many connections; reconnect later",
}

#: Close codes after which a client reconnects with backoff (spec: 1001, 1006, 1011, 4408,
#: 4429). After any other code (1000, 1003, 1008, 1009, 4400, 4401) it does not: a normal
#: close was wanted, and the others would only fail again the same way.
RECONNECT: frozenset[CloseCode] = frozenset(
    {
        CloseCode.GOING_AWAY,
        CloseCode.ABNORMAL_CLOSURE,
        CloseCode.INTERNAL_ERROR,
        CloseCode.SLOW_CONSUMER,
        CloseCode.TOO_MANY_CONNECTIONS,
    }
)


class ErrorCode(StrEnum):
    """The ``error.code`` of an ``error`` reply. The connection stays open after any of them."""

    #: Invalid JSON, a non-object frame, or invalid fields; ``details.errors`` lists them.
    BAD_REQUEST = "bad_request"
    #: The ``type`` is missing or names no command; ``details.type`` echoes it.
    UNKNOWN_TYPE = "unknown_type"
    #: No such agent or run, also when it belongs to another principal (existence not leaked).
    NOT_FOUND = "not_found"
    #: The agent runs another run and ``if_busy`` was ``reject``; ``details.active_run_id``.
    AGENT_BUSY = "agent_busy"
    #: The tool call was already decided, or was never pending in a running run.
    APPROVAL_NOT_PENDING = "approval_not_pending"
    #: The run has finished; nothing about it can change.
    RUN_FINISHED = "run_finished"
    #: The client sends too fast.
    RATE_LIMITED = "rate_limited"
    #: The connection has as many subscriptions as ``hello``'s ``limits.max_subscriptions``.
    TOO_MANY_SUBSCRIPTIONS = "too_many_subscriptions"
    #: The server failed; the message carries no internals.
    INTERNAL = "internal"

    @property
    def retryable(self) -> bool:
        """Default ``error.retryable``: may the same command succeed if simply resent later?"""
        return ERROR_CODE_RETRYABLE[self]


#: Default ``retryable`` per code. ``agent_busy`` and ``rate_limited`` clear with time;
#: ``internal`` is assumed transient (resend ``run.start`` with an ``idempotency_key``).
#: ``too_many_subscriptions`` needs the client to unsubscribe first, so it is not retryable.
ERROR_CODE_RETRYABLE: dict[ErrorCode, bool] = {
    ErrorCode.BAD_REQUEST: False,
    ErrorCode.UNKNOWN_TYPE: False,
    ErrorCode.NOT_FOUND: False,
    ErrorCode.AGENT_BUSY: True,
    ErrorCode.APPROVAL_NOT_PENDING: False,
    ErrorCode.RUN_FINISHED: False,
    ErrorCode.RATE_LIMITED: True,
    ErrorCode.TOO_MANY_SUBSCRIPTIONS: False,
    ErrorCode.INTERNAL: True,
}
