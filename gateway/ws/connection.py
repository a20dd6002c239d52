"""One websocket connection's outbound side: a bounded queue drained by one writer task.

The connection is a broker `Sink`: `deliver` only appends a pre-encoded frame and wakes the
writer, so the run appending events never waits for this client. Past `limit` queued frames
the client is too slow: consecutive deltas of one message are merged (`seq_from`), and if the
queue is still full the connection is closed with 4408 and the client resumes with `after`.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from protocol.codec import encode_event, encode_goodbye
from protocol.codes import CloseCode

log = logging.getLogger("gateway.ws")

ASGISend = Callable[[dict[str, Any]], Awaitable[None]]

# Delta events that may be merged for a slow consumer, and the field that concatenates.
MERGEABLE = {"assistant_message": "content", "reasoning_message": "reasoning"}


class Connection:
    __slots__ = (
        "_closed",
        "_wake",
        "close_code",
        "close_reason",
        "id",
        "limit",
        "outbox",
        "principal",
        "send",
        "subscriptions",
        "writer",
    )

    def __init__(self, connection_id: str, send: ASGISend, *, limit: int) -> None:
        self.id = connection_id
        self.send = send
        self.limit = limit
        # Items: (frame, run_id, seq, event) for run events; (frame, None, 0, None) for replies.
        self.outbox: deque[tuple[str, str | None, int, dict[str, Any] | None]] = deque()
        self._wake = asyncio.Event()
        self.subscriptions: set[str] = set()
        self.close_code: int | None = None
        self.close_reason = ""
        self._closed = False
        self.writer: asyncio.Task[None] | None = None
        self.principal: str | None = None

    # -- enqueueing (never blocks) ----------------------------------------------------------

    def deliver(self, run_id: str, seq: int, frame: str, event: dict[str, Any]) -> None:
        if self.close_code is not None:
            return
        if len(self.outbox) >= self.limit and not self._merge_backlog():
            self.close(CloseCode.SLOW_CONSUMER, "slow consumer: reconnect and resubscribe with after")
            return
        self.outbox.append((frame, run_id, seq, event))
        self._wake.set()

    def reply(self, frame: bytes | str) -> None:
        """Queue a command reply (ack or error); replies are never dropped or merged."""
        if self.close_code is not None:
            return
        self.outbox.append((frame if isinstance(frame, str) else frame.decode(), None, 0, None))
        self._wake.set()

    def close(self, code: int, reason: str) -> None:
        """Send goodbye and close once the frames queued before it are written."""
        if self.close_code is None:
            self.close_code = code
            self.close_reason = reason
            self._wake.set()

    def _merge_backlog(self) -> bool:
        """Merge runs of consecutive deltas of one block in the queue. True if it freed room."""
        before = len(self.outbox)
        merged: deque[tuple[str, str | None, int, dict[str, Any] | None]] = deque()
        first_seq: dict[int, int] = {}
        for item in self.outbox:
            frame, run_id, seq, event = item
            if merged and event is not None and run_id is not None:
                pframe, prun, pseq, pevent = merged[-1]
                field = MERGEABLE.get(event.get("message_type", ""))
                if (
                    field is not None
                    and pevent is not None
                    and prun == run_id
                    and pseq == seq - 1
                    and pevent.get("message_type") == event["message_type"]
                    and pevent.get("otid") == event.get("otid")
                    and not event.get("signature")
                ):
                    combined = {**pevent, field: pevent.get(field, "") + event.get(field, "")}
                    start = first_seq.get(id(pevent), pseq)
                    out = encode_event(run_id, seq, combined, seq_from=start).decode()
                    merged[-1] = (out, run_id, seq, combined)
                    first_seq[id(combined)] = start
                    continue
            merged.append(item)
        self.outbox = merged
        return len(merged) < before and len(merged) < self.limit

    # -- the writer ---------------------------------------------------------------------------

    async def run_writer(self) -> None:
        send = self.send
        outbox = self.outbox
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                outbox = self.outbox
                while outbox:
                    frame = outbox.popleft()[0]
                    await send({"type": "websocket.send", "text": frame})
                    outbox = self.outbox
                if self.close_code is not None:
                    await self._send_close()
                    return
        except (OSError, RuntimeError, asyncio.CancelledError):
            self._closed = True
            raise
        except Exception:  # the client went away mid-send
            self._closed = True

    async def _send_close(self) -> None:
        if self._closed:
            return
        self._closed = True
        code = self.close_code or CloseCode.NORMAL_CLOSURE
        try:
            await self.send({"type": "websocket.send", "text": encode_goodbye(code, self.close_reason).decode()})
            await self.send({"type": "websocket.close", "code": int(code), "reason": self.close_reason[:120]})
        except Exception:
            log.debug("connection %s went away while closing", self.id)

    @property
    def closed(self) -> bool:
        return self._closed
