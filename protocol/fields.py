"""Annotated field types shared by the command, result and event models.

Numbers and booleans are strict: ``"5"``, ``5.0`` and ``true`` are not integers, ``1`` and
``"true"`` are not booleans. Strings are never coerced from numbers. Enum fields accept their
string values (the codec validates Python objects decoded by orjson).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated

from pydantic import AfterValidator, Field, StringConstraints

from .limits import MAX_COMMAND_ID_LENGTH, MAX_IDEMPOTENCY_KEY_LENGTH, MAX_IDENTIFIER_LENGTH

__all__ = [
    "CommandId",
    "Count",
    "Flag",
    "IdempotencyKey",
    "Identifier",
    "IsoDate",
    "Seq",
]

#: A command's ``id``: 1 to 64 characters.
CommandId = Annotated[str, StringConstraints(min_length=1, max_length=MAX_COMMAND_ID_LENGTH)]

#: ``agent_id``, ``run_id``, ``tool_call_id``, ``otid``, ``epoch``, ...: 1 to 256 characters.
Identifier = Annotated[str, StringConstraints(min_length=1, max_length=MAX_IDENTIFIER_LENGTH)]

#: ``run.start``'s ``idempotency_key``: 1 to 256 characters.
IdempotencyKey = Annotated[str, StringConstraints(min_length=1, max_length=MAX_IDEMPOTENCY_KEY_LENGTH)]

#: A JSON boolean, nothing else.
Flag = Annotated[bool, Field(strict=True)]

#: A non-negative JSON integer (token counts, ``after``, ``last_seq``).
Count = Annotated[int, Field(strict=True, ge=0)]

#: An event's position in its run's log: a JSON integer from 1.
Seq = Annotated[int, Field(strict=True, ge=1)]


def _check_utc_iso_date(value: str) -> str:
    """Accept an ISO 8601 date-time in UTC ("...Z" or "...+00:00"); return it unchanged.

    The value stays a string so that a validated event dumps back to the very same text.
    """
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError("should be an ISO 8601 date-time") from None
    if moment.utcoffset() != timedelta(0):
        raise ValueError("should be an ISO 8601 date-time in UTC")
    return value


#: ``date`` of message events: an ISO 8601 date-time string in UTC, kept as text.
IsoDate = Annotated[
    str,
    AfterValidator(_check_utc_iso_date),
    Field(json_schema_extra={"format": "date-time"}),
]
