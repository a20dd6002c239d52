"""The gateway's wire protocol, ``agentgw.v1``: no I/O, frames in, models and bytes out.

Normative contract: ``../shared/PROTOCOL.md``; as implemented: ``docs/protocol.md``. This
package imports no I/O library (no asyncio, starlette, websockets, anthropic, sqlalchemy,
httpx) and can be tested without an event loop. Its parts:

* :mod:`protocol.codec` -- :func:`decode_command` (text frame to command model) and the
  ``encode_*`` functions (one ``orjson.dumps`` each, bytes to send as a text frame);
* :mod:`protocol.commands` -- the client commands, discriminated on ``type``;
  :data:`COMMAND_TYPES` lists them, and the server must have a handler for each;
* :mod:`protocol.results` -- the ``result`` of each command's ``ack``;
* :mod:`protocol.events` -- the run events (discriminated on ``message_type``) and the
  server frames (``ack``, ``error``, ``event``, ``goodbye``), to check what the server emits;
* :mod:`protocol.codes` -- :class:`CloseCode`, :class:`ErrorCode`, :data:`RECONNECT`;
* :mod:`protocol.runs` -- :class:`RunStatus`, :class:`StopReason`, :data:`TERMINAL_STATUS`;
* :mod:`protocol.limits` -- limits and defaults; :mod:`protocol.schema` -- JSON Schema export.

Exceptions::

    Exception
     └── CommandError        a command is refused: reply with one error frame, keep the connection
          └── ProtocolError  the frame itself is invalid (bad_request, unknown_type)

Contracts:

* :func:`decode_command` raises :class:`ProtocolError` and nothing else, for any input; the
  error carries the frame's ``id`` when it could be recovered, and
  :func:`encode_command_error` makes the reply. The server raises :class:`CommandError` for
  refusals that need state (``not_found``, ``agent_busy``, ...).
* Commands ignore unknown fields (additive extensions); server-side models forbid them (an
  extension is added to the model and to ``docs/protocol.md`` first).
* Outbound events are plain dicts built by the server and encoded once by
  :func:`encode_event`; the models in :mod:`protocol.events` are for tests and the schema,
  never for the hot path.
"""

from __future__ import annotations

from .codec import (
    decode_command,
    encode_ack,
    encode_command_error,
    encode_error,
    encode_event,
    encode_goodbye,
)
from .codes import CLOSE_CODE_EXPLANATIONS, ERROR_CODE_RETRYABLE, RECONNECT, CloseCode, ErrorCode
from .commands import (
    COMMAND_MODELS,
    COMMAND_TYPES,
    AnyCommand,
    ApprovalDecision,
    ApprovalRespond,
    CancelMode,
    ClientInfo,
    Command,
    Hello,
    IfBusy,
    InputMessage,
    Ping,
    RunCancel,
    RunStart,
    RunSubscribe,
    RunUnsubscribe,
    TextPart,
)
from .errors import CommandError, ProtocolError
from .events import (
    EVENT_MODELS,
    EVENT_TYPES,
    SERVER_FRAME_TYPES,
    AnyRunEvent,
    AnyServerFrame,
    RunEvent,
    ServerFrame,
    validate_event,
    validate_server_frame,
)
from .limits import SUBPROTOCOL
from .results import ACK_RESULTS, validate_ack_result
from .runs import (
    EVENT_STATUSES,
    FAILING_STOP_REASONS,
    TERMINAL_STATUS,
    TERMINAL_STATUSES,
    RunStatus,
    StopReason,
)

__all__ = [
    "ACK_RESULTS",
    "CLOSE_CODE_EXPLANATIONS",
    "COMMAND_MODELS",
    "COMMAND_TYPES",
    "ERROR_CODE_RETRYABLE",
    "EVENT_MODELS",
    "EVENT_STATUSES",
    "EVENT_TYPES",
    "FAILING_STOP_REASONS",
    "RECONNECT",
    "SERVER_FRAME_TYPES",
    "SUBPROTOCOL",
    "TERMINAL_STATUS",
    "TERMINAL_STATUSES",
    "AnyCommand",
    "AnyRunEvent",
    "AnyServerFrame",
    "ApprovalDecision",
    "ApprovalRespond",
    "CancelMode",
    "ClientInfo",
    "CloseCode",
    "Command",
    "CommandError",
    "ErrorCode",
    "Hello",
    "IfBusy",
    "InputMessage",
    "Ping",
    "ProtocolError",
    "RunCancel",
    "RunEvent",
    "RunStart",
    "RunStatus",
    "RunSubscribe",
    "RunUnsubscribe",
    "ServerFrame",
    "StopReason",
    "TextPart",
    "decode_command",
    "encode_ack",
    "encode_command_error",
    "encode_error",
    "encode_event",
    "encode_goodbye",
    "validate_ack_result",
    "validate_event",
    "validate_server_frame",
]
