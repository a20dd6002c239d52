"""gateway.ws.frames.text_frame gives exactly the bytes websockets' own server framing gives."""

from __future__ import annotations

import pytest
from websockets.frames import Frame, Opcode

from gateway.ws.frames import text_frame


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65535, 65536, 70000])
def test_text_frame_matches_websockets(size: int) -> None:
    payload = ("é🙂x" * size).encode()[:size]
    assert text_frame(payload) == Frame(Opcode.TEXT, payload).serialize(mask=False)
