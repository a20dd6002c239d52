"""Client commands (PROTOCOL.md sections 2 and 3), as pydantic models.

Every command is a JSON object ``{"type": "<command>", "id": "<1-64 chars>", ...fields}``.
:data:`Command` is the union of the seven models, discriminated on ``type``;
:data:`COMMAND_TYPES` lists the ``type`` values, in the spec's order, and the server checks
it has a handler for each.

Contracts of the models:

* Unknown fields are ignored, on commands and on every object inside them, so that clients
  may send additive extensions to servers that do not know them yet.
* Known fields are validated strictly: integers and booleans are never coerced from strings,
  floats or each other (see :mod:`protocol.fields`).
* Instances are frozen. Optional fields the client left out are ``None`` (the server applies
  its default) unless the spec gives a default, which the model applies.

Decode frames with :func:`protocol.codec.decode_command`, not with these models directly: it
turns every failure into a precise :class:`~protocol.errors.ProtocolError`.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag

from .fields import CommandId, Flag, IdempotencyKey, Identifier
from .limits import MAX_STEPS_CAP

__all__ = [
    "COMMAND_MODELS",
    "COMMAND_TYPES",
    "UNION_TAGS",
    "AnyCommand",
    "ApprovalDecision",
    "ApprovalRespond",
    "BaseCommand",
    "CancelMode",
    "ClientInfo",
    "Command",
    "Content",
    "Hello",
    "IfBusy",
    "InputMessage",
    "Ping",
    "RunCancel",
    "RunStart",
    "RunSubscribe",
    "RunUnsubscribe",
    "TextPart",
]


class _Inbound(BaseModel):
    """Base of every inbound object: frozen, unknown fields ignored."""

    model_config = ConfigDict(frozen=True, extra="ignore")


class BaseCommand(_Inbound):
    """Fields every command has. ``type`` is narrowed to a literal by each subclass."""

    type: str
    #: Chosen by the client, echoed in the reply (``ack`` or ``error``) to this command.
    id: CommandId


# -- hello -----------------------------------------------------------------------------------


class ClientInfo(_Inbound):
    """Who the client is, for logs and metrics."""

    name: str
    version: str


class Hello(BaseCommand):
    """Must be the connection's first frame, within 10 s (else close 4400).

    A rejected ``token`` closes the connection with 4401. Ack: :class:`~protocol.results.HelloResult`.
    """

    type: Literal["hello"]
    token: str | None = None
    client: ClientInfo | None = None


# -- run.start -------------------------------------------------------------------------------


class TextPart(_Inbound):
    """A text content part: ``{"type": "text", "text": "..."}``. Text must not be empty."""

    type: Literal["text"]
    text: Annotated[str, Field(min_length=1)]


#: Branch tags of :data:`Content`. Pydantic puts them in error locations; the codec drops
#: them (:data:`UNION_TAGS`) so that a field path reads ``messages.0.content.0.text``.
CONTENT_TEXT_TAG = "<text>"
CONTENT_PARTS_TAG = "<parts>"
UNION_TAGS: frozenset[str] = frozenset({CONTENT_TEXT_TAG, CONTENT_PARTS_TAG})


def _content_kind(value: Any) -> str | None:
    """Pick the branch of :data:`Content` by the JSON type alone: string or array."""
    if isinstance(value, str):
        return CONTENT_TEXT_TAG
    if isinstance(value, list):
        return CONTENT_PARTS_TAG
    return None


#: A user message's content: a non-empty string, or a non-empty list of content parts.
#: Only text parts are defined so far; a part of another ``type`` is a ``bad_request``.
Content = Annotated[
    Annotated[str, Field(min_length=1), Tag(CONTENT_TEXT_TAG)]
    | Annotated[list[TextPart], Field(min_length=1), Tag(CONTENT_PARTS_TAG)],
    Discriminator(
        _content_kind,
        custom_error_type="content_type",
        custom_error_message="Input should be a string or a list of content parts",
    ),
]


class InputMessage(_Inbound):
    """One input message of ``run.start``. Only ``user`` messages are accepted."""

    role: Literal["user"]
    content: Content
    #: Client-chosen id of the message, echoed as the ``otid`` of its ``user_message`` event.
    otid: Identifier | None = None


class IfBusy(StrEnum):
    """What ``run.start`` does when the agent already has an active run."""

    #: Refuse with ``agent_busy`` (``details.active_run_id``).
    REJECT = "reject"
    #: Accept with status ``queued``; the run starts when the agent is free.
    QUEUE = "queue"


class RunStart(BaseCommand):
    """Start a run of ``agent_id`` on ``messages``; the sender is subscribed to it.

    Ack: :class:`~protocol.results.RunStartResult`. A reused ``idempotency_key`` (per agent)
    returns the existing run and starts nothing.
    """

    type: Literal["run.start"]
    agent_id: Identifier
    messages: Annotated[list[InputMessage], Field(min_length=1)]
    #: Forward text, reasoning and tool-call deltas as they arrive (else one event per block).
    stream_tokens: Flag = True
    #: At most this many steps (model call + tools); ``None``: the server's default (50).
    max_steps: Annotated[int, Field(strict=True, ge=1, le=MAX_STEPS_CAP)] | None = None
    idempotency_key: IdempotencyKey | None = None
    if_busy: IfBusy = IfBusy.REJECT


# -- run.subscribe, run.unsubscribe, run.cancel ------------------------------------------------


class RunSubscribe(BaseCommand):
    """Replay every event of ``run_id`` with ``seq > after``, then follow it live.

    Ack: :class:`~protocol.results.RunSubscribeResult`, sent before the first replayed event.
    """

    type: Literal["run.subscribe"]
    run_id: Identifier
    after: Annotated[int, Field(strict=True, ge=0)] = 0
    #: The epoch the client's ``after`` refers to; a mismatch gives ``recovered: false``.
    epoch: Identifier | None = None


class RunUnsubscribe(BaseCommand):
    """Stop receiving the events of ``run_id``. The run goes on. Ack: ``{}``."""

    type: Literal["run.unsubscribe"]
    run_id: Identifier


class CancelMode(StrEnum):
    """How ``run.cancel`` stops a run (PROTOCOL.md section 5)."""

    #: Stop now: close the model request, kill a running tool, deny pending approvals.
    IMMEDIATE = "immediate"
    #: Let the current step finish, stop before the next; ``immediate`` when not running.
    AFTER_STEP = "after_step"


class RunCancel(BaseCommand):
    """Cancel ``run_id``. Ack: :class:`~protocol.results.RunCancelResult`."""

    type: Literal["run.cancel"]
    run_id: Identifier
    mode: CancelMode = CancelMode.IMMEDIATE


# -- approval.respond ------------------------------------------------------------------------


class ApprovalDecision(_Inbound):
    """A decision on one pending tool call; ``reason`` is passed to the model."""

    tool_call_id: Identifier
    approve: Flag
    reason: str | None = None


class ApprovalRespond(BaseCommand):
    """Decide pending tool calls of ``run_id``; all decisions are accepted or none is.

    Ack: :class:`~protocol.results.ApprovalRespondResult`. Two decisions for one
    ``tool_call_id`` in one command are not refused here: the server answers the second as
    already decided (``approval_not_pending``), which rejects the command whole.
    """

    type: Literal["approval.respond"]
    run_id: Identifier
    decisions: Annotated[list[ApprovalDecision], Field(min_length=1)]


# -- ping ------------------------------------------------------------------------------------


class Ping(BaseCommand):
    """Application-level liveness check. Ack: ``{}``."""

    type: Literal["ping"]


# -- the union -------------------------------------------------------------------------------

#: Any command model (the plain union, for annotations).
AnyCommand = Hello | RunStart | RunSubscribe | RunUnsubscribe | RunCancel | ApprovalRespond | Ping

#: Any command, discriminated on ``type`` (for validation and schema export).
Command = Annotated[AnyCommand, Field(discriminator="type")]

#: Every command ``type``, in the spec's order. The server must handle each of them; a drift
#: test checks this tuple against :data:`Command`.
COMMAND_TYPES: tuple[str, ...] = (
    "hello",
    "run.start",
    "run.subscribe",
    "run.unsubscribe",
    "run.cancel",
    "approval.respond",
    "ping",
)

#: The model of each command ``type``.
COMMAND_MODELS: dict[str, type[BaseCommand]] = {
    "hello": Hello,
    "run.start": RunStart,
    "run.subscribe": RunSubscribe,
    "run.unsubscribe": RunUnsubscribe,
    "run.cancel": RunCancel,
    "approval.respond": ApprovalRespond,
    "ping": Ping,
}
