"""Limits and defaults of the wire protocol, in one place.

The command models, the codec, the server and ``docs/protocol.md`` ("Limits and defaults")
all read these names; change a value here and the JSON Schema export changes with it (the
schema drift test then asks for ``make schema``).

Values marked *spec* are fixed by ``../shared/PROTOCOL.md``; the others are this
implementation's choices, documented in ``docs/protocol.md``.
"""

from __future__ import annotations

#: WebSocket subprotocol the server selects, and the ``protocol`` of the ``hello`` ack (spec).
SUBPROTOCOL = "agentgw.v1"

#: A command's ``id``: 1 to 64 characters, chosen by the client (spec).
MAX_COMMAND_ID_LENGTH = 64

#: ``idempotency_key`` of ``run.start``: 1 to 256 characters.
MAX_IDEMPOTENCY_KEY_LENGTH = 256

#: Any other identifier a command or event carries (``agent_id``, ``run_id``,
#: ``tool_call_id``, ``otid``, ``epoch``, message ``id``, ``step_id``): 1 to 256 characters.
#: Real identifiers are far shorter; the bound only keeps garbage out of lookups and logs.
MAX_IDENTIFIER_LENGTH = 256

#: Largest ``max_steps`` a ``run.start`` may ask for; a larger value is a ``bad_request``
#: (refused, not clamped, so the client learns the limit).
MAX_STEPS_CAP = 100

#: Steps a run may take when ``run.start`` omits ``max_steps`` (Letta's default).
DEFAULT_MAX_STEPS = 50

#: The first frame must be ``hello``, within this many seconds, or the server closes 4400 (spec).
HELLO_TIMEOUT_S = 10

#: Default interval of the server's WebSocket ping control frames (spec; configurable).
DEFAULT_HEARTBEAT_S = 20

#: A connection that misses this many consecutive pings is closed (spec).
MAX_MISSED_PINGS = 2

#: Default inbound frame size limit; a larger frame closes with 1009 (spec; configurable).
DEFAULT_MAX_FRAME_BYTES = 1 << 20

#: A ``bad_request`` lists at most this many field errors in ``details.errors``; when more
#: were found, ``details.error_count`` gives the total.
MAX_REPORTED_ERRORS = 10
