"""Run events and server frames (PROTOCOL.md sections 2, 4 and 7), as pydantic models.

The server never builds these models on its hot path: the step loop and the stream
interpreter build events as plain dicts and :func:`protocol.codec.encode_event` encodes them
once. The models exist to export the JSON Schema and to let tests check every dict and
frame the server emits (:func:`validate_event`, :func:`validate_server_frame`).

Contracts of the models:

* Closed: an unknown field is an error. An extension (a new optional field) is added here,
  and listed under "Extensions" in ``docs/protocol.md``, before the server sends it.
  Clients, on the contrary, must ignore fields they do not know.
* Optional fields may be absent or ``null``.
* Message events (the ``*_message`` types but ``error_message``) carry ``id`` (the persisted
  message), ``otid`` (one per content block), ``step_id`` (``null`` outside a step, as for
  ``user_message``) and ``date`` (ISO 8601, UTC). ``run_status`` never carries them;
  ``error_message``, ``stop_reason`` and ``usage_statistics`` may.
* A ``run_status`` event is consistent: a terminal status carries the ``stop_reason`` that
  gives it (:data:`protocol.runs.TERMINAL_STATUS`); other statuses carry none; ``cancelling``
  is never an event.
* ``seq_from`` (merged deltas) is only on ``reasoning_message``, ``assistant_message`` and
  ``tool_call_message`` events, and names an earlier event than ``seq``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, model_validator

from .codes import CloseCode, ErrorCode
from .fields import CommandId, Count, Flag, Identifier, IsoDate, Seq
from .runs import TERMINAL_STATUS, RunStatus, StopReason

__all__ = [
    "DELTA_EVENT_TYPES",
    "EVENT_MODELS",
    "EVENT_TYPES",
    "SERVER_FRAME_TYPES",
    "AckFrame",
    "AnyRunEvent",
    "AnyServerFrame",
    "Approval",
    "ApprovalRequestMessage",
    "ApprovalResponseMessage",
    "AssistantMessage",
    "ErrorBody",
    "ErrorFrame",
    "ErrorMessage",
    "EventFrame",
    "EventRunStatus",
    "GoodbyeFrame",
    "HiddenReasoningMessage",
    "ReasoningMessage",
    "RunEvent",
    "RunStatusEvent",
    "ServerFrame",
    "StopReasonEvent",
    "TextContent",
    "ToolCall",
    "ToolCallDelta",
    "ToolCallMessage",
    "ToolReturn",
    "ToolReturnMessage",
    "UsageStatistics",
    "UserMessage",
    "validate_event",
    "validate_server_frame",
]


class _Outbound(BaseModel):
    """Base of every server-side object: frozen, closed."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class _MessageEvent(_Outbound):
    """Fields of every message event: the persisted message it belongs to, and when."""

    #: The persisted message this event belongs to; all deltas of a message share it.
    id: Identifier
    #: One per content block; all deltas of a block share it.
    otid: Identifier
    #: The step that produced the message; ``null`` for input messages.
    step_id: Identifier | None
    #: ISO 8601, UTC.
    date: IsoDate


class _RunLevelEvent(_Outbound):
    """Base of ``error_message``, ``stop_reason``, ``usage_statistics``: no message of their
    own, but they may carry the message fields."""

    id: Identifier | None = None
    otid: Identifier | None = None
    step_id: Identifier | None = None
    date: IsoDate | None = None


# -- run_status ------------------------------------------------------------------------------

#: The statuses a ``run_status`` event may carry: :data:`protocol.runs.EVENT_STATUSES`,
#: spelt out for the schema (a drift test checks the two agree).
EventRunStatus = Literal["queued", "running", "awaiting_approval", "completed", "failed", "cancelled"]


class RunStatusEvent(_Outbound):
    """Every status change; the terminal one is the run's last event and repeats the
    ``stop_reason``."""

    message_type: Literal["run_status"]
    status: EventRunStatus
    stop_reason: StopReason | None = None

    @model_validator(mode="after")
    def _check_stop_reason(self) -> RunStatusEvent:
        """A terminal status carries the stop reason that gives it; others carry none."""
        status = RunStatus(self.status)
        if not status.terminal:
            if self.stop_reason is not None:
                raise ValueError(f"status {status} carries no stop_reason")
        elif self.stop_reason is None:
            raise ValueError(f"terminal status {status} needs its stop_reason")
        elif TERMINAL_STATUS[StopReason(self.stop_reason)] is not status:
            raise ValueError(f"stop_reason {self.stop_reason} does not give status {status}")
        return self


# -- message events --------------------------------------------------------------------------


class TextContent(_Outbound):
    """A text content part of a ``user_message``."""

    type: Literal["text"]
    text: str


class UserMessage(_MessageEvent):
    """One per input message, in order, as the run's first events (seq 1..n)."""

    message_type: Literal["user_message"]
    content: str | list[TextContent]


class ReasoningMessage(_MessageEvent):
    """Model thinking: a delta when streaming tokens, else the whole block.

    When streaming, the block's ``signature`` arrives on its last event, with empty
    ``reasoning``.
    """

    message_type: Literal["reasoning_message"]
    reasoning: str
    source: Literal["reasoner_model"]
    signature: str | None = None


class HiddenReasoningMessage(_MessageEvent):
    """A redacted thinking block, whole."""

    message_type: Literal["hidden_reasoning_message"]
    state: Literal["redacted"]
    hidden_reasoning: str


class AssistantMessage(_MessageEvent):
    """Text: a delta when streaming tokens, else the whole block."""

    message_type: Literal["assistant_message"]
    content: str


class ToolCallDelta(_Outbound):
    """One tool call, or the next fragment of its JSON ``arguments`` when streaming.

    Every delta carries ``tool_call_id``; the first of each call also ``name``.
    """

    tool_call_id: Identifier
    name: str | None = None
    arguments: str


class ToolCallMessage(_MessageEvent):
    """One tool call (complete, or a delta when streaming; parallel calls interleave)."""

    message_type: Literal["tool_call_message"]
    tool_call: ToolCallDelta


class ToolCall(_Outbound):
    """A complete tool call: its ``arguments`` are the whole JSON text."""

    tool_call_id: Identifier
    name: Annotated[str, Field(min_length=1)]
    arguments: str


class ApprovalRequestMessage(_MessageEvent):
    """The calls of this step that need approval, before ``run_status: awaiting_approval``."""

    message_type: Literal["approval_request_message"]
    tool_calls: Annotated[list[ToolCall], Field(min_length=1)]


class Approval(_Outbound):
    """One accepted decision."""

    tool_call_id: Identifier
    approve: Flag
    reason: str | None = None


class ApprovalResponseMessage(_MessageEvent):
    """One per accepted ``approval.respond``, listing its decisions."""

    message_type: Literal["approval_response_message"]
    approvals: Annotated[list[Approval], Field(min_length=1)]


class ToolReturn(_Outbound):
    """The result of one tool call; denied and cancelled calls have status ``error``."""

    tool_call_id: Identifier
    status: Literal["success", "error"]
    tool_return: str
    #: Lines the tool wrote, as in Letta's schema.
    stdout: list[str] | None = None
    stderr: list[str] | None = None


class ToolReturnMessage(_MessageEvent):
    """The results of a step's calls."""

    message_type: Literal["tool_return_message"]
    tool_returns: Annotated[list[ToolReturn], Field(min_length=1)]


# -- the end of a run ------------------------------------------------------------------------


class ErrorMessage(_RunLevelEvent):
    """Why a run failed: just before its ``stop_reason`` (failing stop reasons only)."""

    message_type: Literal["error_message"]
    error_type: Annotated[str, Field(min_length=1)]
    message: str
    retryable: Flag


class StopReasonEvent(_RunLevelEvent):
    """Why the run ended: once, just before ``usage_statistics``."""

    message_type: Literal["stop_reason"]
    stop_reason: StopReason


class UsageStatistics(_RunLevelEvent):
    """Token usage summed over the run's steps: once, just before the terminal ``run_status``.

    ``prompt_tokens`` counts all input, cache reads and writes included.
    """

    message_type: Literal["usage_statistics"]
    prompt_tokens: Count
    completion_tokens: Count
    total_tokens: Count
    step_count: Count
    cached_input_tokens: Count | None = None
    cache_write_tokens: Count | None = None


# -- the event union -------------------------------------------------------------------------

#: Any run event model (the plain union, for annotations).
AnyRunEvent = (
    RunStatusEvent
    | UserMessage
    | ReasoningMessage
    | HiddenReasoningMessage
    | AssistantMessage
    | ToolCallMessage
    | ApprovalRequestMessage
    | ApprovalResponseMessage
    | ToolReturnMessage
    | ErrorMessage
    | StopReasonEvent
    | UsageStatistics
)

#: Any run event, discriminated on ``message_type``.
RunEvent = Annotated[AnyRunEvent, Field(discriminator="message_type")]

#: Every ``message_type``, in the spec's order.
EVENT_TYPES: tuple[str, ...] = (
    "run_status",
    "user_message",
    "reasoning_message",
    "hidden_reasoning_message",
    "assistant_message",
    "tool_call_message",
    "approval_request_message",
    "approval_response_message",
    "tool_return_message",
    "error_message",
    "stop_reason",
    "usage_statistics",
)

#: The model of each ``message_type``.
EVENT_MODELS: dict[str, type[BaseModel]] = {
    "run_status": RunStatusEvent,
    "user_message": UserMessage,
    "reasoning_message": ReasoningMessage,
    "hidden_reasoning_message": HiddenReasoningMessage,
    "assistant_message": AssistantMessage,
    "tool_call_message": ToolCallMessage,
    "approval_request_message": ApprovalRequestMessage,
    "approval_response_message": ApprovalResponseMessage,
    "tool_return_message": ToolReturnMessage,
    "error_message": ErrorMessage,
    "stop_reason": StopReasonEvent,
    "usage_statistics": UsageStatistics,
}

#: The message types that stream as deltas, and that a slow subscriber may get merged.
DELTA_EVENT_TYPES: frozenset[str] = frozenset({"reasoning_message", "assistant_message", "tool_call_message"})


# -- server frames ---------------------------------------------------------------------------


class AckFrame(_Outbound):
    """The reply to a successful command; ``result`` depends on the command
    (:data:`protocol.results.ACK_RESULTS`)."""

    type: Literal["ack"]
    id: CommandId
    result: dict[str, Any]


class ErrorBody(_Outbound):
    """What went wrong with a command."""

    code: ErrorCode
    message: str
    retryable: Flag
    details: dict[str, Any] | None = None


class ErrorFrame(_Outbound):
    """The reply to a refused command; ``id`` is ``null`` when it could not be recovered."""

    type: Literal["error"]
    id: CommandId | None
    error: ErrorBody


class EventFrame(_Outbound):
    """One run event, at its position ``seq`` in the run's log.

    ``seq_from`` is set when consecutive deltas ``seq_from..seq`` of one message were merged
    into this one event for a slow subscriber.
    """

    type: Literal["event"]
    run_id: Identifier
    seq: Seq
    event: RunEvent
    seq_from: Seq | None = None

    @model_validator(mode="after")
    def _check_seq_from(self) -> EventFrame:
        """``seq_from`` names an earlier event, and only a delta event is merged."""
        if self.seq_from is None:
            return self
        if self.seq_from >= self.seq:
            raise ValueError("seq_from should be less than seq")
        if self.event.message_type not in DELTA_EVENT_TYPES:
            raise ValueError(f"a {self.event.message_type} event is never merged")
        return self


class GoodbyeFrame(_Outbound):
    """Sent just before the server closes the connection with ``code``."""

    type: Literal["goodbye"]
    code: CloseCode
    reason: str

    @model_validator(mode="after")
    def _check_code(self) -> GoodbyeFrame:
        """1006 is what a client sees when there is no close frame: never sent."""
        if self.code is CloseCode.ABNORMAL_CLOSURE:
            raise ValueError("1006 is never sent")
        return self


#: Any server frame model (the plain union, for annotations).
AnyServerFrame = AckFrame | ErrorFrame | EventFrame | GoodbyeFrame

#: Any server frame, discriminated on ``type``.
ServerFrame = Annotated[AnyServerFrame, Field(discriminator="type")]

#: Every server frame ``type``.
SERVER_FRAME_TYPES: tuple[str, ...] = ("ack", "error", "event", "goodbye")

_RUN_EVENT_ADAPTER: TypeAdapter[AnyRunEvent] = TypeAdapter(RunEvent)
_SERVER_FRAME_ADAPTER: TypeAdapter[AnyServerFrame] = TypeAdapter(ServerFrame)


def validate_event(event: Mapping[str, Any]) -> AnyRunEvent:
    """Check that ``event`` (a run event dict as the server builds it) follows the protocol.

    Returns the event as a model; raises :class:`pydantic.ValidationError`. For tests and
    debugging, not the hot path.
    """
    return _RUN_EVENT_ADAPTER.validate_python(event)


def validate_server_frame(frame: str | bytes | Mapping[str, Any]) -> AnyServerFrame:
    """Check that ``frame`` (encoded, or decoded to a dict) is a valid server frame.

    Returns it as a model; raises :class:`pydantic.ValidationError`, or
    :class:`orjson.JSONDecodeError` for invalid JSON. For tests and debugging.
    """
    if isinstance(frame, str | bytes):
        frame = orjson.loads(frame)
    return _SERVER_FRAME_ADAPTER.validate_python(frame)
