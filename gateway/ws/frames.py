"""Server-to-client websocket text frames, encoded in one step (RFC 6455 section 5.2).

A frame from the server is never masked; without extensions (the gateway turns
permessage-deflate off) a text message sent in one frame is a two to ten byte header and
the UTF-8 payload. `websockets` builds the same bytes through a Frame object, a validity
check and a BytesIO per frame, which cost about as much as the rest of relaying a delta.
"""

from __future__ import annotations

__all__ = ["text_frame"]

_FIN_TEXT = 0x81  # FIN bit + opcode 0x1 (text)


def text_frame(payload: bytes) -> bytes:
    """One final, unmasked text frame carrying `payload` (already UTF-8)."""
    n = len(payload)
    if n < 126:
        return bytes((_FIN_TEXT, n)) + payload
    if n < 65536:
        return bytes((_FIN_TEXT, 126)) + n.to_bytes(2, "big") + payload
    return bytes((_FIN_TEXT, 127)) + n.to_bytes(8, "big") + payload
