"""A minimal incremental Server-Sent Events decoder for the upstream LLM stream.

The gateway reads the raw HTTP body of a streaming Messages request itself (no SDK event
models on the hot path) and turns it into payload dicts here; `gateway.llm.interpreter`
folds those dicts into run events.

Contracts:

- `SSEDecoder.feed(chunk)` accepts the body in chunks split anywhere (inside a line, inside a
  `\\r\\n`, inside a UTF-8 sequence) and returns `(event name, data bytes)` for every event
  completed by this chunk, in order. Nothing is lost or duplicated across chunk boundaries.
- Lines end with `\\n`, `\\r\\n` or `\\r`; an empty line dispatches the event. Within an event,
  `data:` lines are joined with `\\n`; one space after the colon is dropped (per the WHATWG
  spec); lines starting with `:` are comments; `id:`, `retry:` and unknown fields are
  ignored. An event with no `data` line is not dispatched; one whose data is empty is
  (as `b""`). The event name defaults to `"message"`. A leading UTF-8 BOM is skipped.
- An event still open when the body ends (no blank line after it) is discarded, as the spec
  says; `pending` tells whether such bytes are buffered.
- The decoder is pure bookkeeping: no I/O, no clock, no logging. `SSEJsonDecoder` adds the
  JSON step, still synchronous: `gateway.llm.body` feeds it from the response body.

Cost: one `bytes.find` per event boundary and one `split` per event; no regex, no per-line
decoding (data stays bytes and goes to orjson as is).
"""

from __future__ import annotations

from typing import Any

import orjson

__all__ = ["SSEDataError", "SSEDecoder", "SSEJsonDecoder"]

_BOM = b"\xef\xbb\xbf"
# The Messages API's event names, decoded once.
_NAMES = {
    name.encode(): name
    for name in (
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
        "ping",
        "error",
    )
}


class SSEDataError(ValueError):
    """An event's data is not a JSON object (raised by `SSEJsonDecoder`). `before` holds the
    objects of the events that came before it in the same chunk: they are valid, and a
    caller hands them on before it fails."""

    def __init__(self, message: str, before: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.before: list[dict[str, Any]] = before or []


class SSEDecoder:
    """Incremental SSE decoder: bytes in, `(event, data)` pairs out. Not thread-safe."""

    __slots__ = ("_buf", "_cr_pending", "_scan_from", "_started")

    def __init__(self) -> None:
        # Bytes received but not yet part of a dispatched event; line ends already "\n".
        self._buf = b""
        # Where the search for the next blank line resumes (avoids rescanning a long event).
        self._scan_from = 0
        # The last chunk ended with "\r": a "\n" opening the next chunk belongs to it.
        self._cr_pending = False
        # False until the first event block was parsed (the BOM check happens there).
        self._started = False

    @property
    def pending(self) -> bool:
        """True if bytes of an unfinished event are buffered (the body was cut mid-event)."""
        return bool(self._buf.strip(b"\n"))

    def feed(self, chunk: bytes) -> list[tuple[str, bytes]]:
        """Add `chunk` to the stream; return the events it completes, oldest first."""
        if not chunk:
            return []
        if self._cr_pending and chunk[:1] == b"\n":
            chunk = chunk[1:]
        if b"\r" in chunk:
            # "\r" never occurs inside JSON text, so normalising whole chunks is safe. A
            # trailing "\r" becomes "\n" now; the "\n" that may follow it is dropped above.
            self._cr_pending = chunk[-1:] == b"\r"
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        else:
            self._cr_pending = False
        buf = self._buf + chunk if self._buf else chunk
        start = 0
        scan = self._scan_from
        fast = self._started
        find = buf.find
        startswith = buf.startswith
        out: list[tuple[str, bytes]] = []
        while True:
            end = find(b"\n\n", scan)
            if end < 0:
                break
            # Fast path for what the API sends: exactly "event: NAME\ndata: DATA", perhaps
            # after comment lines (": ...", e.g. a proxy's or the offline model's stamps).
            if fast:
                head = start
                while startswith(b":", head):
                    nl = find(b"\n", head, end)
                    if nl < 0:
                        break
                    head = nl + 1
                else:
                    if head != start and startswith(b"event: ", head):
                        start = head
            if fast and startswith(b"event: ", start):
                nl = find(b"\n", start, end)
                if nl > 0 and startswith(b"data: ", nl + 1) and find(b"\n", nl + 1, end) < 0:
                    name = buf[start + 7 : nl]
                    out.append(
                        (_NAMES.get(name) or name.decode("utf-8", "replace") or "message", buf[nl + 7 : end])
                    )
                    start = scan = end + 2
                    continue
            event = self._parse_block(buf[start:end])
            fast = True
            if event is not None:
                out.append(event)
            start = scan = end + 2
        if start:
            buf = buf[start:]
        self._buf = buf
        # The next search must still see a "\n" at the very end of this buffer.
        self._scan_from = len(buf) - 1 if buf else 0
        return out

    def _parse_block(self, block: bytes) -> tuple[str, bytes] | None:
        """Parse the lines of one event (no blank line inside except leading ones)."""
        if not self._started:
            self._started = True
            if block.startswith(_BOM):
                block = block[3:]
        event = "message"
        data: bytes | None = None
        more: list[bytes] | None = None
        for line in block.split(b"\n"):
            if line.startswith(b"data:"):
                value = line[6:] if line[5:6] == b" " else line[5:]
            elif line.startswith(b"event:"):
                name = line[7:] if line[6:7] == b" " else line[6:]
                event = name.decode("utf-8", "replace") or "message"
                continue
            elif not line or line[0] == 0x3A:  # blank (leading) line or ":" comment
                continue
            elif line == b"data":  # a field name with no colon has an empty value
                value = b""
            elif line == b"event":
                event = "message"
                continue
            else:  # id, retry and unknown fields carry nothing we use
                continue
            if data is None:
                data = value
            elif more is None:
                more = [data, value]
            else:
                more.append(value)
        if data is None:
            return None
        return event, (b"\n".join(more) if more is not None else data)


class SSEJsonDecoder:
    """`SSEDecoder` plus JSON: bytes in, the JSON object of every completed event out.
    A bad event raises `SSEDataError` carrying the good events before it (`before`).

    The Anthropic payload carries its own `"type"`, so the SSE event name is only used when
    the payload lacks one. Events whose data is empty or blank are skipped. Data that is not
    a JSON object raises `SSEDataError` (the upstream broke the format). An unfinished event
    at the end of the body is dropped silently; the interpreter notices the missing
    `message_stop`. Synchronous, so it can run in a protocol callback (`gateway.llm.body`).
    """

    __slots__ = ("_feed",)

    def __init__(self) -> None:
        self._feed = SSEDecoder().feed

    def feed(self, chunk: bytes) -> list[dict[str, Any]]:
        """The objects of the events `chunk` completes, oldest first."""
        out: list[dict[str, Any]] = []
        for name, data in self._feed(chunk):
            if not data or data.isspace():
                continue
            try:
                obj = orjson.loads(data)
            except orjson.JSONDecodeError as exc:
                raise SSEDataError(f"SSE event {name!r}: data is not valid JSON ({exc})", out) from exc
            if type(obj) is not dict:
                raise SSEDataError(f"SSE event {name!r}: data is a {type(obj).__name__}, not an object", out)
            if "type" not in obj:
                obj["type"] = name
            out.append(obj)
        return out
