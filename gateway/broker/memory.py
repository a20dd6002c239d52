"""In-process broker: logs are lists of pre-encoded frames; fan-out is a loop over sinks.

A finished log is *sealed*: its frames become a tuple of strings and its event dicts are
dropped (an event is decoded from its frame when a reader needs it, as when reading from
Redis). The collector untracks a tuple of strings at its next pass, so full collections no
longer walk every frame and event of every finished run held in memory; at 1.4 million held
events that walk was 125-145 ms per full collection (measured: `bench/` latency figures),
and the event dicts took about twice the memory of the frames that `max_closed_bytes` bounds.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from gateway.broker.base import ControlHandler, LogInfo, Sink
from protocol.codec import encode_event, event_of


class RunLog:
    __slots__ = ("closed_at", "epoch", "events", "frames", "run_id", "sinks")

    def __init__(self, run_id: str, epoch: str) -> None:
        self.run_id = run_id
        self.epoch = epoch
        # Lists while the run appends; `seal` makes them a tuple and None.
        self.frames: list[str] | tuple[str, ...] = []
        self.events: list[dict[str, Any]] | None = []
        self.sinks: list[Sink] = []
        self.closed_at: float | None = None

    def info(self) -> LogInfo:
        return LogInfo(self.epoch, len(self.frames), 1, self.closed_at is not None)

    def seal(self) -> None:
        """No more appends: keep the frames in a tuple (untracked by the garbage collector
        once it has seen it holds only strings) and drop the event dicts."""
        self.frames = tuple(self.frames)
        self.events = None

    def event(self, i: int) -> dict[str, Any]:
        """The event at index `i` (seq i + 1), decoded from its frame once sealed."""
        events = self.events
        return events[i] if events is not None else event_of(self.frames[i])


#: Default bound on the frames of finished runs kept in memory (`GATEWAY_LOG_MEMORY_MB`).
DEFAULT_MAX_CLOSED_BYTES = 256 << 20


class MemoryBroker:
    """Logs in this process. A finished run's log is kept for `retention_s`, and while the
    frames of all finished logs stay under `max_closed_bytes`: past it the oldest finished
    logs (no subscriber replaying them) are dropped first, as if their retention had passed.
    Without that bound a busy process would hold every run of the last day: memory without
    limit, and full garbage collections scanning them all (pauses growing with uptime)."""

    def __init__(
        self, retention_s: float = 86400.0, max_closed_bytes: int = DEFAULT_MAX_CLOSED_BYTES
    ) -> None:
        self.retention_s = retention_s
        self.max_closed_bytes = max_closed_bytes
        self.logs: dict[str, RunLog] = {}
        # Finished logs in the order they finished, with the size of their frames.
        self._closed: dict[str, int] = {}
        self.closed_bytes = 0
        self._sweeper: asyncio.TimerHandle | None = None
        self._control: list[ControlHandler] = []

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None

    async def fetch_info(self, run_id: str) -> LogInfo | None:
        return self.info(run_id)

    async def adopt(self, run_id: str) -> LogInfo | None:
        return self.info(run_id)

    async def publish_control(self, message: dict[str, Any]) -> None:
        for handler in list(self._control):
            await handler(message)

    def on_control(self, handler: ControlHandler) -> None:
        self._control.append(handler)

    def open(self, run_id: str, epoch: str) -> None:
        if run_id not in self.logs:
            self.logs[run_id] = RunLog(run_id, epoch)

    def append(self, run_id: str, event: dict[str, Any]) -> int:
        log = self.logs[run_id]
        seq = len(log.frames) + 1
        frame = encode_event(run_id, seq, event).decode()
        log.frames.append(frame)  # type: ignore[union-attr]  # a sealed log takes no appends
        log.events.append(event)  # type: ignore[union-attr]
        for sink in log.sinks:
            sink.deliver(run_id, seq, frame, event)
        return seq

    def close(self, run_id: str) -> None:
        log = self.logs.get(run_id)
        if log is not None and log.closed_at is None:
            log.closed_at = time.monotonic()
            log.seal()
            size = sum(map(len, log.frames))
            self._closed[run_id] = size
            self.closed_bytes += size
            if self.closed_bytes > self.max_closed_bytes:
                self.evict()
            self._schedule_sweep()

    def evict(self) -> int:
        """Drop the oldest finished logs until their frames fit `max_closed_bytes`; returns
        how many. A log being replayed (it has sinks) or not yet evictable is skipped."""
        dropped = []
        excess = self.closed_bytes - self.max_closed_bytes
        for rid, size in self._closed.items():
            if excess <= 0:
                break
            log = self.logs.get(rid)
            if log is not None and (log.sinks or not self._evictable(log)):
                continue
            dropped.append(rid)
            excess -= size
        for rid in dropped:
            self._forget(rid)
        return len(dropped)

    def _evictable(self, log: RunLog) -> bool:
        """Whether a finished log may be dropped before its retention passed (here: always)."""
        return True

    def _forget(self, run_id: str) -> None:
        self.logs.pop(run_id, None)
        self.closed_bytes -= self._closed.pop(run_id, 0)

    def info(self, run_id: str) -> LogInfo | None:
        log = self.logs.get(run_id)
        return None if log is None else log.info()

    async def attach(self, run_id: str, sink: Sink, after: int) -> LogInfo | None:
        """Replay and register with no await in between, so no append can slip through.

        A sink that can pull (`start_replay`) reads the backlog in pages as it drains;
        any other sink gets the backlog delivered now."""
        log = self.logs.get(run_id)
        if log is None:
            return None
        start_replay = getattr(sink, "start_replay", None)
        if start_replay is not None:
            start_replay(run_id, max(after, 0), self.page)
        else:
            frames = log.frames
            for i in range(max(after, 0), len(frames)):
                sink.deliver(run_id, i + 1, frames[i], log.event(i))
        if sink not in log.sinks:
            log.sinks.append(sink)
        return log.info()

    def page(self, run_id: str, after: int, limit: int) -> list[tuple[int, str, dict[str, Any] | None]]:
        """Up to `limit` events with seq > after, as (seq, frame, event); the event is None
        for a sealed (finished) log: the reader decodes the frame if it needs it."""
        log = self.logs.get(run_id)
        if log is None:
            return []
        frames, events = log.frames, log.events
        end = min(len(frames), after + limit)
        if events is None:
            return [(i + 1, frames[i], None) for i in range(after, end)]
        return [(i + 1, frames[i], events[i]) for i in range(after, end)]

    def detach(self, run_id: str, sink: Sink) -> None:
        log = self.logs.get(run_id)
        if log is not None and sink in log.sinks:
            log.sinks.remove(sink)

    def events(self, run_id: str, after: int = 0) -> list[tuple[int, str]]:
        log = self.logs.get(run_id)
        if log is None:
            return []
        return [(i + 1, log.frames[i]) for i in range(max(after, 0), len(log.frames))]

    def sweep(self, now: float | None = None) -> int:
        """Drop closed logs older than the retention time; returns how many."""
        now = time.monotonic() if now is None else now
        expired = [
            rid
            for rid, log in self.logs.items()
            if log.closed_at is not None and now - log.closed_at >= self.retention_s and not log.sinks
        ]
        for rid in expired:
            self._forget(rid)
        return len(expired)

    def _schedule_sweep(self) -> None:
        if self._sweeper is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return

        def run() -> None:
            self._sweeper = None
            self.sweep()
            if any(log.closed_at is not None for log in self.logs.values()):
                self._schedule_sweep()

        self._sweeper = loop.call_later(min(self.retention_s, 60.0), run)
