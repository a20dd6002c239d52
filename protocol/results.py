"""The ``result`` of each command's ``ack`` (PROTOCOL.md section 3), as pydantic models.

The server builds results as plain dicts; these models describe them for the JSON Schema
export and let tests check every ack the server sends (:func:`validate_ack_result`).
Like all server-side models they are closed (unknown fields are errors): an extension must
be added here, and documented in ``docs/protocol.md``, before the server may send it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from .fields import Count, Flag, Identifier
from .runs import RunStatus

__all__ = [
    "ACK_RESULTS",
    "ApprovalRespondResult",
    "EmptyResult",
    "HelloLimits",
    "HelloResult",
    "RunCancelResult",
    "RunStartResult",
    "RunSubscribeResult",
    "ServerInfo",
    "validate_ack_result",
]


class _Outbound(BaseModel):
    """Base of every server-side object: frozen, closed."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class ServerInfo(_Outbound):
    """The server's name and version."""

    name: str
    version: str


class HelloLimits(_Outbound):
    """Limits of this connection."""

    #: Largest inbound frame, in bytes; a larger one closes the connection with 1009.
    max_frame_bytes: Annotated[int, Field(strict=True, ge=1)]
    #: Most runs this connection may be subscribed to at once (``too_many_subscriptions``).
    max_subscriptions: Annotated[int, Field(strict=True, ge=1)]


class HelloResult(_Outbound):
    """Ack of ``hello``."""

    connection_id: Identifier
    #: Always :data:`~protocol.limits.SUBPROTOCOL` (a test checks the two agree).
    protocol: Literal["agentgw.v1"]
    server: ServerInfo
    #: Interval of the server's WebSocket pings, in seconds.
    heartbeat_s: Annotated[float, Field(strict=True, gt=0)]
    limits: HelloLimits


class RunStartResult(_Outbound):
    """Ack of ``run.start``: the new run (or, for a reused idempotency key, the existing one)."""

    run_id: Identifier
    epoch: Identifier
    #: ``running`` or ``queued`` for a new run; any status for an existing one.
    status: RunStatus


class RunSubscribeResult(_Outbound):
    """Ack of ``run.subscribe``, sent before the first replayed event."""

    run_id: Identifier
    status: RunStatus
    #: The ``seq`` of the run's last event so far (0 if none).
    last_seq: Count
    epoch: Identifier
    #: Every event after ``after`` is still in the log, under the client's ``epoch`` (if any).
    recovered: Flag


class RunCancelResult(_Outbound):
    """Ack of ``run.cancel``: ``cancelling``, or the terminal status the run already had."""

    run_id: Identifier
    status: RunStatus


class ApprovalRespondResult(_Outbound):
    """Ack of ``approval.respond``: the run's tool calls still pending after this one."""

    run_id: Identifier
    pending: list[Identifier]


class EmptyResult(_Outbound):
    """Ack of ``run.unsubscribe`` and ``ping``: ``{}``."""


#: The result model of each command ``type``. A drift test checks it covers COMMAND_TYPES.
ACK_RESULTS: dict[str, type[BaseModel]] = {
    "hello": HelloResult,
    "run.start": RunStartResult,
    "run.subscribe": RunSubscribeResult,
    "run.unsubscribe": EmptyResult,
    "run.cancel": RunCancelResult,
    "approval.respond": ApprovalRespondResult,
    "ping": EmptyResult,
}


def validate_ack_result(command_type: str, result: Mapping[str, Any]) -> BaseModel:
    """Check ``result`` is a valid ack result for ``command_type``; return it as a model.

    Raises :class:`KeyError` for an unknown command type and
    :class:`pydantic.ValidationError` for an invalid result. For tests, not the hot path.
    """
    return ACK_RESULTS[command_type].model_validate(result)
