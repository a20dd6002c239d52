"""The codec: inbound frames to command models, outbound frames to bytes.

Inbound, :func:`decode_command` is the only entry point. It parses with orjson, validates
with a :class:`~pydantic.TypeAdapter` built once at import, and either returns a command
model or raises :class:`~protocol.errors.ProtocolError`, for any input whatsoever: the
caller needs exactly one ``except`` to answer a bad frame and keep the connection.

Outbound, the ``encode_*`` functions build one small dict each and serialise it with a
single ``orjson.dumps``. They validate nothing (that is what the tests do, with
:mod:`protocol.events`), so their inputs must hold only JSON types with ``str`` keys, enum
members (encoded as their values) and datetimes (encoded in RFC 3339); anything else makes
orjson raise :class:`orjson.JSONEncodeError`. Every encoder returns UTF-8 JSON bytes that
go out as one WebSocket **text** frame (decode them, or hand them to a send call that
makes text frames; a binary frame would make a client close with 1003).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
from pydantic import TypeAdapter, ValidationError
from pydantic_core import ErrorDetails

from .codes import CloseCode, ErrorCode
from .commands import COMMAND_MODELS, UNION_TAGS, AnyCommand, Command
from .errors import CommandError, ProtocolError
from .limits import MAX_COMMAND_ID_LENGTH, MAX_REPORTED_ERRORS

__all__ = [
    "decode_command",
    "encode_ack",
    "encode_command_error",
    "encode_error",
    "encode_event",
    "encode_goodbye",
]

#: Validates any command, discriminated on ``type``; built once.
_COMMAND_ADAPTER: TypeAdapter[AnyCommand] = TypeAdapter(Command)

#: Longest command ``type`` echoed back in an ``unknown_type`` error; longer ones are cut.
_MAX_ECHOED_TYPE = 64

_dumps = orjson.dumps

#: Pydantic messages that speak Python ("a valid dictionary or instance of ClientInfo"),
#: said in JSON terms instead; every other message is pydantic's own.
_JSON_MESSAGES = {
    "model_type": "Input should be an object",
    "model_attributes_type": "Input should be an object",
    "dict_type": "Input should be an object",
    "list_type": "Input should be an array",
}


# -- inbound ---------------------------------------------------------------------------------


def decode_command(data: str | bytes) -> AnyCommand:
    """Decode one inbound text frame into a command model.

    Raises :class:`ProtocolError` and nothing else, whatever ``data`` holds:

    * ``bad_request`` "invalid JSON: ..." when ``data`` is not JSON (or not UTF-8);
    * ``bad_request`` when the JSON is not an object;
    * ``unknown_type`` when ``type`` is missing, not a string or not a command type;
      ``details.type`` echoes a string type (cut to 64 characters), else is ``null``;
    * ``bad_request`` when fields are invalid: the message names the first bad field, and
      ``details.errors`` lists up to 10 as ``{"field": "messages.0.role", "message": ...}``
      (``details.error_count`` gives the total when there were more).

    The error's ``command_id`` is the frame's ``id`` whenever the frame is an object whose
    ``id`` is a valid command id (a string of 1 to 64 characters), so that the reply can
    echo it; otherwise ``None``.
    """
    try:
        obj = orjson.loads(data)
    except (ValueError, TypeError) as exc:  # orjson.JSONDecodeError is a ValueError
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"invalid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ProtocolError(
            ErrorCode.BAD_REQUEST, f"a command should be a JSON object, not {_json_kind(obj)}"
        )

    command_id = _recover_id(obj)
    command_type = obj.get("type")
    # Check the type before validating: an unhashable type must not reach a dict lookup,
    # and an unknown type deserves unknown_type, not pydantic's union_tag_invalid.
    if not isinstance(command_type, str) or command_type not in COMMAND_MODELS:
        raise _unknown_type(command_type, command_id)

    try:
        return _COMMAND_ADAPTER.validate_python(obj)
    except ValidationError as exc:
        raise _invalid_fields(command_type, exc, command_id) from None


def _recover_id(obj: dict[str, Any]) -> str | None:
    """The frame's ``id`` if it is a valid command id, else ``None``."""
    command_id = obj.get("id")
    if isinstance(command_id, str) and 0 < len(command_id) <= MAX_COMMAND_ID_LENGTH:
        return command_id
    return None


def _json_kind(value: Any) -> str:
    """The JSON name of the type of a value decoded by orjson."""
    if value is None:
        return "null"
    if isinstance(value, bool):  # before int: bool is an int
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _unknown_type(command_type: Any, command_id: str | None) -> ProtocolError:
    """The ``unknown_type`` error for a frame whose ``type`` names no command."""
    if command_type is None:
        message = "missing command type"
        echoed = None
    elif not isinstance(command_type, str):
        message = f"command type should be a string, not {_json_kind(command_type)}"
        echoed = None
    else:
        echoed = command_type[:_MAX_ECHOED_TYPE]
        message = f"unknown command type {echoed!r}"
    return ProtocolError(ErrorCode.UNKNOWN_TYPE, message, details={"type": echoed}, command_id=command_id)


def _invalid_fields(command_type: str, exc: ValidationError, command_id: str | None) -> ProtocolError:
    """The ``bad_request`` error listing the invalid fields of a known command."""
    errors = exc.errors(include_url=False, include_context=False, include_input=False)
    listed = [_field_error(error, command_type) for error in errors[:MAX_REPORTED_ERRORS]]
    first = listed[0]
    message = f"invalid {command_type}: {first['field']}: {first['message']}"
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more)"
    details: dict[str, Any] = {"errors": listed}
    if len(errors) > len(listed):
        details["error_count"] = len(errors)
    return ProtocolError(ErrorCode.BAD_REQUEST, message, details=details, command_id=command_id)


def _field_error(error: ErrorDetails, command_type: str) -> dict[str, str]:
    """One pydantic error as ``{"field": "a.0.b", "message": ...}``.

    The location loses the union tags pydantic adds: the command type in front, and the
    branch tags of ``content`` (:data:`protocol.commands.UNION_TAGS`).
    """
    loc = error["loc"]
    if loc and loc[0] == command_type:
        loc = loc[1:]
    field = ".".join(str(part) for part in loc if part not in UNION_TAGS)
    message = _JSON_MESSAGES.get(error["type"], error["msg"])
    return {"field": field or "(command)", "message": message}


# -- outbound --------------------------------------------------------------------------------


def encode_ack(id: str, result: Mapping[str, Any] | None = None) -> bytes:
    """``{"type": "ack", "id": id, "result": result}``; ``result`` defaults to ``{}``."""
    return _dumps({"type": "ack", "id": id, "result": _as_dict(result)})


def encode_error(
    id: str | None,
    code: ErrorCode,
    message: str,
    retryable: bool | None = None,
    details: Mapping[str, Any] | None = None,
) -> bytes:
    """``{"type": "error", "id": id, "error": {code, message, retryable, details?}}``.

    ``id`` is ``None`` when the command's id could not be recovered. ``retryable`` defaults
    to the code's (:attr:`ErrorCode.retryable`); ``details`` is left out when ``None``.
    ``message`` must carry no internals.
    """
    code = ErrorCode(code)
    error: dict[str, Any] = {
        "code": code.value,
        "message": message,
        "retryable": code.retryable if retryable is None else retryable,
    }
    if details is not None:
        error["details"] = _as_dict(details)
    return _dumps({"type": "error", "id": id, "error": error})


def encode_command_error(error: CommandError) -> bytes:
    """The ``error`` frame answering a refused command; empty ``details`` are left out."""
    return encode_error(error.command_id, error.code, error.message, error.retryable, error.details or None)


def encode_event(run_id: str, seq: int, event: dict[str, Any], seq_from: int | None = None) -> bytes:
    """``{"type": "event", "run_id": run_id, "seq": seq, "event": event[, "seq_from"]}``.

    The hot path: one dict and one ``orjson.dumps``, no validation. ``event`` is the run
    event dict as built by the server (``message_type`` first, by convention). ``seq_from``
    is given only for merged deltas (the first merged ``seq``) and comes last.
    """
    if seq_from is None:
        return _dumps({"type": "event", "run_id": run_id, "seq": seq, "event": event})
    return _dumps({"type": "event", "run_id": run_id, "seq": seq, "event": event, "seq_from": seq_from})


def event_of(frame: str | bytes) -> dict[str, Any]:
    """The run event an event frame made by :func:`encode_event` carries (no validation:
    the frame is the server's own)."""
    event: dict[str, Any] = orjson.loads(frame)["event"]
    return event


def encode_goodbye(code: CloseCode | int, reason: str) -> bytes:
    """``{"type": "goodbye", "code": code, "reason": reason}``, sent just before closing.

    Use the same code and reason in the WebSocket close frame (whose reason is limited to
    123 bytes of UTF-8).
    """
    return _dumps({"type": "goodbye", "code": int(code), "reason": reason})


def _as_dict(value: Mapping[str, Any] | None) -> dict[str, Any]:
    """orjson serialises dicts, not other mappings; ``None`` is ``{}``."""
    if value is None:
        return {}
    return value if isinstance(value, dict) else dict(value)
