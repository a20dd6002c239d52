"""The broker: one append-only event log per run, read by every subscriber.

Contract (every implementation, checked by one conformance suite):
- `append` assigns `seq` (1, 2, 3... with no gaps), encodes the frame ONCE, and hands
  `(seq, frame)` to every attached sink before returning. It never waits for a sink.
- `attach(run_id, sink, after)` delivers every event with `seq > after` and then the live
  ones, in order, with no gap and no duplicate, even while the run is appending.
- A log is named by its `epoch`; a lost or rebuilt log gets a new epoch, so a client holding
  the old one learns its cursor is meaningless (`recovered: false`).
- A closed log (run finished) is kept for `retention_s`, then dropped; earlier, oldest first,
  when the closed logs held in memory pass `max_closed_bytes` (none being replayed is dropped).
  It is sealed: no more appends, frames kept where the garbage collector does not walk them,
  event dicts dropped; sinks still get the event (decoded from its frame), pulled pages give
  None for it (the puller decodes the frame if it needs the event).
- Sinks are called synchronously on the appending task; they must only enqueue.
- `info` is this process's view (a log it holds); `fetch_info` also finds a log another
  process writes (Redis). `adopt` loads such a log so this process can continue it (a run
  resumed after approval on another instance): later appends continue its seq.
- Control messages (`publish_control` / `on_control`) reach every gateway process; the run's
  owner acts on them (cancel).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol


class Sink(Protocol):
    def deliver(self, run_id: str, seq: int, frame: str, event: dict[str, Any]) -> None:
        """Take one encoded event frame. Must not block or raise."""


@dataclass(slots=True, frozen=True)
class LogInfo:
    epoch: str
    last_seq: int
    first_seq: int  # oldest seq still held (1 unless trimmed)
    closed: bool


ControlHandler = Callable[[dict[str, Any]], Awaitable[None]]


class Broker(Protocol):
    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    def open(self, run_id: str, epoch: str) -> None: ...
    def append(self, run_id: str, event: dict[str, Any]) -> int: ...
    def close(self, run_id: str) -> None: ...
    def info(self, run_id: str) -> LogInfo | None: ...
    async def fetch_info(self, run_id: str) -> LogInfo | None: ...
    async def adopt(self, run_id: str) -> LogInfo | None: ...
    async def attach(self, run_id: str, sink: Sink, after: int) -> LogInfo | None: ...
    def detach(self, run_id: str, sink: Sink) -> None: ...
    def events(self, run_id: str, after: int = 0) -> list[tuple[int, str]]: ...
    async def publish_control(self, message: dict[str, Any]) -> None: ...
    def on_control(self, handler: ControlHandler) -> None: ...


# How long to wait for the log of a live run to appear when its owner is another instance
# (it writes a few ms behind): 50 x 10 ms.
LOG_APPEAR_TRIES = 50
LOG_APPEAR_WAIT_S = 0.01


async def find_log(broker: Broker, run_id: str, *, live: bool) -> LogInfo | None:
    """The run's log info; for a `live` run (not terminal) give its owner a moment to write it."""
    info = await broker.fetch_info(run_id)
    tries = LOG_APPEAR_TRIES if live else 0
    while info is None and tries:
        await asyncio.sleep(LOG_APPEAR_WAIT_S)
        info = await broker.fetch_info(run_id)
        tries -= 1
    return info
