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
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from gateway.ws.frames import text_frame
from protocol.codec import encode_event, encode_goodbye, event_of
from protocol.codes import CloseCode
from protocol.runs import TERMINAL_STATUSES

log = logging.getLogger("gateway.ws")

ASGISend = Callable[[dict[str, Any]], Awaitable[None]]

REPLAY_PAGE = 256
# The most bytes of queued frames the writer hands the socket in one write.
WRITE_BATCH_BYTES = 64 << 10

# (run_id, after, limit) -> up to `limit` (seq, frame, event) with seq > after, in order;
# event is None for a finished (sealed) log: decode the frame if it is needed.
LogReader = Callable[[str, int, int], list[tuple[int, str, dict[str, Any] | None]]]

# Delta events that may be merged for a slow consumer, and the field that concatenates.
MERGEABLE = {"assistant_message": "content", "reasoning_message": "reasoning"}


Item = tuple[str, str | None, int, int, "dict[str, Any] | None"]  # frame, run_id, seq_from, seq, event


class Connection:
    __slots__ = (
        "_closed",
        "_direct",
        "_idle",
        "_wake",
        "close_code",
        "close_reason",
        "finished",
        "id",
        "limit",
        "max_bytes",
        "on_finished",
        "outbox",
        "pending_bytes",
        "principal",
        "replays",
        "send",
        "subscriptions",
        "writer",
    )

    def __init__(self, connection_id: str, send: ASGISend, *, limit: int, max_bytes: int = 8 << 20) -> None:
        self.id = connection_id
        self.send = send
        self.limit = limit
        self.max_bytes = max_bytes
        # Run events carry their seq range and event dict (for merging); replies carry None.
        self.outbox: deque[Item] = deque()
        self.pending_bytes = 0
        self._wake = asyncio.Event()
        # While the writer sleeps on an empty queue, a live event is written straight to the
        # socket from `deliver` (no task switch per delta); see `direct_writer`.
        self._idle = False
        self._direct = direct_writer(send)
        self.subscriptions: set[str] = set()
        # Runs whose terminal event was queued: their subscription ends once the writer has
        # passed it (`on_finished` detaches from the broker), so a long-lived connection that
        # starts run after run never accumulates finished subscriptions.
        self.finished: list[str] = []
        self.on_finished: Callable[[str], None] | None = None
        self.close_code: int | None = None
        self.close_reason = ""
        self._closed = False
        self.writer: asyncio.Task[None] | None = None
        self.principal: str | None = None
        # Replays in progress: run_id -> [last seq queued, reader]. While a run replays, its
        # live events are not queued (the log has them); the writer pulls the log in pages
        # as the client drains, so a replay never floods the queue or trips the budget.
        self.replays: dict[str, list[Any]] = {}

    def start_replay(self, run_id: str, after: int, reader: LogReader) -> None:
        """Follow `run_id` from `after`: replay pulled from `reader`, then live via deliver()."""
        self.replays[run_id] = [after, reader]
        self._wake.set()

    def stop_replay(self, run_id: str) -> None:
        self.replays.pop(run_id, None)

    def _pull_replays(self) -> None:
        """Queue the next page of every replay; a replay that reached the log's end turns live.
        No await between reading the end and going live: no event can slip between them."""
        for run_id, cursor in list(self.replays.items()):
            after, reader = cursor
            page = reader(run_id, after, REPLAY_PAGE)
            for seq, frame, event in page:
                self.outbox.append((frame, run_id, seq, seq, event))
                self.pending_bytes += len(frame)
            if len(page) < REPLAY_PAGE:
                del self.replays[run_id]
                if page:
                    _, last_frame, last_event = page[-1]
                    if _is_terminal(event_of(last_frame) if last_event is None else last_event):
                        self.finished.append(run_id)
            else:
                cursor[0] = page[-1][0]

    # -- enqueueing (never blocks) ----------------------------------------------------------

    def deliver(self, run_id: str, seq: int, frame: str, event: dict[str, Any]) -> None:
        if self.close_code is not None or run_id in self.replays:
            return
        terminal = _is_terminal(event)
        if self._idle and not terminal and not self.outbox and self._direct is not None:
            if self._direct((frame,)):
                return
        if len(self.outbox) >= self.limit:
            self._merge_backlog()
        if len(self.outbox) >= self.limit or self.pending_bytes + len(frame) > self.max_bytes:
            self.slow_consumer()
            return
        self.outbox.append((frame, run_id, seq, seq, event))
        self.pending_bytes += len(frame)
        if terminal:
            self.finished.append(run_id)
        self._wake.set()

    def reply(self, frame: bytes | str) -> None:
        """Queue a command reply (ack or error); replies are never dropped or merged."""
        if self.close_code is not None:
            return
        text = frame if isinstance(frame, str) else frame.decode()
        self.outbox.append((text, None, 0, 0, None))
        self.pending_bytes += len(text)
        self._wake.set()

    def slow_consumer(self) -> None:
        self.close(CloseCode.SLOW_CONSUMER, "slow consumer: reconnect and resubscribe with after")

    def close(self, code: int, reason: str) -> None:
        """Send goodbye and close once the frames queued before it are written."""
        if self.close_code is None:
            self.close_code = code
            self.close_reason = reason
            self._wake.set()

    def _merge_backlog(self) -> None:
        """Fold runs of consecutive deltas of one content block into single events carrying
        `seq_from` (the first merged seq). Replies, signatures and other events stay as they are."""
        merged: deque[Item] = deque()
        size = 0
        for item in self.outbox:
            frame, run_id, seq_from, seq, event = item
            if merged and event is not None and run_id is not None:
                pframe, prun, pfrom, pseq, pevent = merged[-1]
                field = MERGEABLE.get(event.get("message_type", ""))
                if (
                    field is not None
                    and pevent is not None
                    and prun == run_id
                    and pseq == seq_from - 1
                    and pevent.get("message_type") == event["message_type"]
                    and pevent.get("otid") == event.get("otid")
                    and not event.get("signature")
                ):
                    combined = {**pevent, field: pevent.get(field, "") + event.get(field, "")}
                    out = encode_event(run_id, seq, combined, seq_from=pfrom).decode()
                    size += len(out) - len(pframe)
                    merged[-1] = (out, run_id, pfrom, seq, combined)
                    continue
            merged.append(item)
            size += len(frame)
        self.outbox = merged
        self.pending_bytes = size

    # -- the writer ---------------------------------------------------------------------------

    async def run_writer(self) -> None:
        send = self.send
        try:
            while True:
                if not self.replays or self.close_code is not None:
                    self._idle = not self.outbox
                    try:
                        await self._wake.wait()
                    finally:
                        self._idle = False
                self._wake.clear()
                if self.replays and not self.outbox and self.close_code is None:
                    self._pull_replays()
                outbox = self.outbox
                direct = self._direct
                while outbox:
                    if direct is not None:
                        # As many queued frames as fit WRITE_BATCH_BYTES, in one write.
                        batch = [outbox.popleft()[0]]
                        size = len(batch[0])
                        while outbox and size < WRITE_BATCH_BYTES:
                            frame = outbox.popleft()[0]
                            batch.append(frame)
                            size += len(frame)
                        self.pending_bytes -= size
                        if not direct(batch):  # not writable now: `send` waits for it
                            for frame in batch:
                                await send({"type": "websocket.send", "text": frame})
                    else:
                        frame = outbox.popleft()[0]
                        self.pending_bytes -= len(frame)
                        await send({"type": "websocket.send", "text": frame})
                    outbox = self.outbox
                if self.finished:
                    self._end_finished()
                if self.close_code is not None:
                    await self._send_close()
                    return
        except asyncio.CancelledError:
            self._closed = True
            raise
        except Exception:  # the client went away mid-send (ClientDisconnected, OSError...)
            self._closed = True

    def _end_finished(self) -> None:
        """End the subscriptions whose terminal event was written. A run that is replaying
        again (resubscribed since) is left alone: its replay re-reports the end."""
        finished, self.finished = self.finished, []
        for run_id in finished:
            if run_id not in self.replays and run_id in self.subscriptions:
                self.subscriptions.discard(run_id)
                if self.on_finished is not None:
                    self.on_finished(run_id)

    async def _send_close(self) -> None:
        if self._closed:
            return
        self._closed = True
        code = self.close_code or CloseCode.NORMAL_CLOSURE
        try:
            await self.send(
                {"type": "websocket.send", "text": encode_goodbye(code, self.close_reason).decode()}
            )
            await self.send({"type": "websocket.close", "code": int(code), "reason": self.close_reason[:120]})
        except Exception:
            log.debug("connection %s went away while closing", self.id)

    @property
    def closed(self) -> bool:
        return self._closed


def direct_writer(send: ASGISend) -> Callable[[Sequence[str]], bool] | None:
    """A synchronous "write these text frames now" for uvicorn's websockets-sansio protocol,
    or None for any other server (the writer task then sends everything through `send`).

    It writes what that protocol's ASGI `send` would for each text message (uvicorn
    0.3x-0.5x), all frames in one `transport.write`, but only when the send could not block:
    the transport is writable and open and the close handshake has not started. Otherwise it
    returns False, writes nothing, and the frames go through `send`, which waits, raises or
    drops as usual. Without extensions the frames are encoded by `frames.text_frame`
    (byte-identical to websockets' own); with any, by websockets.
    """
    proto: Any = getattr(send, "__self__", None)
    if proto is None or type(proto).__name__ != "WebSocketsSansIOProtocol":
        return None
    try:
        ws, transport, writable = proto.conn, proto.transport, proto.writable
        send_text, data_to_send = ws.send_text, ws.data_to_send
        _ = proto.disconnected, proto.close_sent, proto.handshake_complete, ws.extensions, ws.writes
    except AttributeError:
        return None
    from websockets.protocol import State

    open_state = State.OPEN

    def write(texts: Sequence[str]) -> bool:
        if (
            not writable.is_set()
            or proto.disconnected
            or proto.close_sent
            or ws.state is not open_state
            or transport.is_closing()
        ):
            return False
        if ws.expect_continuation_frame:  # a fragmented message is open: not ours to cut in
            return False
        if ws.extensions:  # the state was checked above, so send_text cannot refuse
            for text in texts:
                send_text(text.encode())
            transport.write(b"".join(data_to_send()))
            return True
        if ws.writes:  # bytes websockets queued itself (a pong): they go first
            transport.write(b"".join(data_to_send()))
        if len(texts) == 1:
            transport.write(text_frame(texts[0].encode()))
        else:
            transport.write(b"".join([text_frame(text.encode()) for text in texts]))
        return True

    return write


def _is_terminal(event: dict[str, Any] | None) -> bool:
    return (
        event is not None
        and event.get("message_type") == "run_status"
        and event.get("status") in TERMINAL_STATUSES
    )
