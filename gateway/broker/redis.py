"""Redis broker: the memory broker's logs, written through to Redis Streams for every process.

Layout (``prefix`` defaults to ``gw``):

- ``{prefix}:run:{run_id}:log``: a Redis Stream, one entry per event, entry id ``{seq}-0``
  (so ids are the seqs) and one field ``f``: the encoded frame, exactly as sinks receive it.
- ``{prefix}:run:{run_id}:meta``: a hash with ``epoch``, ``last_seq`` and, once the run has
  finished, ``closed`` = 1. Both keys then expire after ``retention_s``.
- ``{prefix}:control``: pub/sub channel of ``publish_control`` messages (orjson).
- ``{prefix}:broker``: pub/sub channel of the brokers' own notices (a log was adopted).

Owner side. The process that opened (or adopted) a run holds its log in memory exactly as
:class:`MemoryBroker` does, so ``append`` stays synchronous and cheap and local subscribers
are served with no round trip. ``append`` only marks the log dirty; one background writer
task writes what each dirty log has not yet written, in seq order, batching everything
pending into one pipeline per round trip (chunks of up to :data:`CHUNK` events per script
call, :data:`ROUND_MAX` per round trip). A Lua script per chunk XADDs the entries and sets
``last_seq`` atomically, and refuses anything but the next seq of a log whose epoch it
holds: a second writer of the same seq (another process appending to the same run) is
reported, never merged. The script is idempotent (an entry already present with the same
frame is skipped), so a round retried after a lost reply is harmless.

If Redis is unreachable, ``append`` and local subscribers keep working; the writer retries
with backoff and logs one warning per outage. Nothing is copied while waiting: the pending
work is a cursor into each log's own frames, so the backlog is bounded by the logs the
memory broker holds anyway; a closed log whose retention passed before it could be written
is given up. **What is lost** if the process dies while Redis is unreachable (or if
``stop`` cannot flush within ``flush_timeout_s``): every event appended since the writes
started failing, and the ``closed`` mark; other processes then see the log end at the last
written seq (and followers of it see no more events). The run's persisted messages (the
store) are not affected. If Redis loses a log it was given (restart without persistence),
the owner writes the whole log again from memory.

Subscriber side. ``attach`` on a process that does not hold the log replays it from the
stream (XRANGE pages) and then follows it through one reader task per run (XREAD BLOCK),
which fans each entry out to that run's remote sinks. Reads go through a Lua script that
returns the meta and a page of frames joined into one string, atomically: redis-py's
pure-Python reply parser costs 30-55 us per XRANGE entry, one string about 2.5 us per event
(the reader's XREAD only waits, COUNT 1, and the script reads, in the same round trip).
``info`` and ``events`` are this process's view (logs it holds), as in memory; ``fetch_info``
also reads Redis. How the replay hands over to live
delivery with no gap and no duplicate: the reader's position ``pos`` is the last seq it has
delivered, and every sink registered with it has received exactly ``1..pos`` (or
``after+1..pos``). The reader fans a batch out and advances ``pos`` with no await in
between. A new sink replays ``after+1..pos`` (re-reading ``pos`` after every page) and,
once its cursor equals ``pos``, registers with no await between that check and the
registration; from then on the reader delivers ``pos+1...``. With no reader yet, the sink
replays to the end of the stream and starts the reader at its cursor. A sink whose ``after``
is past the reader's position is held back until the reader passes ``after``.

The reader stops when its run is closed and every event has been delivered, when its last
sink detaches (noticed within ``read_block_ms``), or when the log disappears or is rebuilt
under a new epoch. Sinks are called synchronously: by ``append`` (local logs), by the reader
task (remote logs), and by ``attach`` itself for the replay.

``adopt`` loads a log from Redis so this process continues it (next seq after the last
written one). It then announces the adoption; the process that held the log before drops
its local copy and keeps its subscribers fed from the stream instead, from exactly where
they were.

Control. ``publish_control`` PUBLISHes; one listener task per process calls the handlers
for every message (its own included), one message at a time in order, so a handler should
be quick (spawn a task for long work); a handler that raises is logged and the channel goes
on. Pub/sub is fire-and-forget: a message published while a process is disconnected from
Redis does not reach it.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Sequence
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway.broker.base import LogInfo, Sink
from gateway.broker.memory import DEFAULT_MAX_CLOSED_BYTES, MemoryBroker, RunLog
from protocol.codec import encode_event, event_of

log = logging.getLogger("gateway.broker")

#: Most events written by one script call, and in one round trip.
CHUNK = 500
ROUND_MAX = 8000
#: Backoff between retries while Redis is unreachable (seconds).
RETRY_MIN_S = 0.05
RETRY_MAX_S = 2.0

_UNREACHABLE = (RedisConnectionError, RedisTimeoutError, OSError)

# Write (part of) one log. KEYS: log stream, meta hash. ARGV: epoch, open (0/1), close (0/1),
# retention in ms, then seq, frame, seq, frame... Returns {0, last_seq} on success,
# {1, seq, reason} when a seq is not the log's next one (a second writer), {2, 0, epoch}
# when the log belongs to another epoch, {3, 0} when the log is missing (not opening).
_WRITE_SCRIPT = """
local log, meta = KEYS[1], KEYS[2]
local epoch = ARGV[1]
local cur = redis.call('HGET', meta, 'epoch')
if ARGV[2] == '1' then
  if cur ~= epoch then
    redis.call('DEL', log, meta)
    redis.call('HSET', meta, 'epoch', epoch, 'last_seq', 0)
  end
elseif not cur then
  return {3, 0}
elseif cur ~= epoch then
  return {2, 0, cur}
end
local last = tonumber(redis.call('HGET', meta, 'last_seq') or '0')
local top = last
local failed = nil
for i = 5, #ARGV, 2 do
  local seq = tonumber(ARGV[i])
  if seq <= top then
    local got = redis.call('XRANGE', log, ARGV[i] .. '-0', ARGV[i] .. '-0')
    if #got == 0 or got[1][2][2] ~= ARGV[i + 1] then
      failed = {1, seq, 'seq ' .. seq .. ' is already written with another event'}
      break
    end
  elseif seq ~= top + 1 then
    failed = {1, seq, 'seq ' .. seq .. ' does not follow the last written seq ' .. top}
    break
  else
    local ok = redis.pcall('XADD', log, ARGV[i] .. '-0', 'f', ARGV[i + 1])
    if type(ok) == 'table' and ok.err then
      failed = {1, seq, ok.err}
      break
    end
    top = seq
  end
end
if top ~= last then
  redis.call('HSET', meta, 'last_seq', top)
end
if failed then
  return failed
end
if ARGV[3] == '1' then
  redis.call('HSET', meta, 'closed', 1)
  redis.call('PEXPIRE', log, ARGV[4])
  redis.call('PEXPIRE', meta, ARGV[4])
end
return {0, top}
"""

# Read a log and its meta atomically. KEYS: log stream, meta hash. ARGV: after, upto (a seq
# or '+'), count. Returns {} if there is no log, else {epoch, last_seq, closed, first_seq,
# from, to, frames}: the frames of seqs from..to (at most `count`, all > after and <= upto)
# joined by "\n" in one bulk string. One string instead of one reply element per field is
# what makes reading cheap for a pure-Python client (about 2.5 us an event instead of 30-55).
# A frame never holds a raw newline: JSON escapes control characters inside strings.
_READ_SCRIPT = """
local m = redis.call('HMGET', KEYS[2], 'epoch', 'last_seq', 'closed')
if not m[1] then
  return {}
end
local first_seq = 1
local head = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)
if #head > 0 then
  first_seq = tonumber(string.match(head[1][1], '^%d+'))
end
local frames = {}
local from, to = 0, 0
local count = tonumber(ARGV[3])
if count > 0 then
  local upto = ARGV[2]
  if upto ~= '+' then
    upto = upto .. '-0'
  end
  local entries = redis.call('XRANGE', KEYS[1], (tonumber(ARGV[1]) + 1) .. '-0', upto, 'COUNT', count)
  for i, e in ipairs(entries) do
    frames[i] = e[2][2]
  end
  if #entries > 0 then
    from = tonumber(string.match(entries[1][1], '^%d+'))
    to = tonumber(string.match(entries[#entries][1], '^%d+'))
  end
end
return {m[1], m[2] or '0', m[3] or '0', first_seq, from, to, table.concat(frames, '\\n')}
"""

Entry = tuple[int, str, dict[str, Any]]  # seq, frame, event


def _why(exc: BaseException) -> str:
    """An exception for a log line (redis-py's repr says only "network:ConnectionError")."""
    return f"{type(exc).__name__}: {exc}"


class _Snapshot:
    """What one read script call saw: the log's meta and a page of its events."""

    __slots__ = ("closed", "entries", "epoch", "first_seq", "last_seq")

    def __init__(self, reply: list[Any]) -> None:
        epoch, last_seq, closed, first_seq, lo, hi, blob = reply
        self.epoch: str = epoch.decode()
        self.last_seq = int(last_seq)
        self.closed = closed == b"1"
        self.first_seq = int(first_seq)
        self.entries: list[Entry] = []
        if blob:
            frames = blob.decode().split("\n")
            lo, hi = int(lo), int(hi)
            if hi - lo + 1 != len(frames):
                raise RuntimeError(f"event log has a gap between seq {lo} and {hi}")
            self.entries = [(lo + i, frame, event_of(frame)) for i, frame in enumerate(frames)]

    def info(self) -> LogInfo:
        return LogInfo(self.epoch, self.last_seq, self.first_seq, self.closed)


class _RedisLog(RunLog):
    """A log held by this process, with how much of it Redis has."""

    __slots__ = ("close_written", "dirty", "failed", "flushed", "need_open")

    def __init__(self, run_id: str, epoch: str) -> None:
        super().__init__(run_id, epoch)
        self.flushed = 0  # events Redis holds (seq 1..flushed)
        self.need_open = True  # the meta hash (epoch) is still to be written
        self.close_written = False
        self.dirty = False  # queued for the writer
        self.failed: str | None = None  # a write conflict: this log is no longer written


class _Follower:
    """The reader of one remote log: its position and the sinks it feeds."""

    __slots__ = ("epoch", "gated", "pos", "run_id", "sinks", "task")

    def __init__(self, run_id: str, epoch: str, pos: int) -> None:
        self.run_id = run_id
        self.epoch = epoch
        self.pos = pos  # last seq delivered to every sink in `sinks`
        self.sinks: list[Sink] = []
        self.gated: list[tuple[Sink, int]] = []  # sinks waiting for the reader to pass `after`
        self.task: asyncio.Task[None] | None = None


class RedisBroker(MemoryBroker):
    """The broker for several gateway processes (see the module docstring).

    ``url`` is a redis-py URL (``redis://host:6379/0``). ``read_block_ms`` is how long a
    reader's XREAD blocks before it re-checks its run (closed, or no sinks left);
    ``flush_timeout_s`` bounds how long ``stop`` waits for pending writes; ``page_size`` is
    the XRANGE/XREAD page. ``conflicts`` maps a run id to the reason its writes were refused
    (a second writer, or the log was rebuilt by another process).
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "gw",
        retention_s: float = 86400.0,
        max_closed_bytes: int = DEFAULT_MAX_CLOSED_BYTES,
        read_block_ms: int = 1000,
        flush_timeout_s: float = 5.0,
        page_size: int = 1000,
    ) -> None:
        super().__init__(retention_s=retention_s, max_closed_bytes=max_closed_bytes)
        self.url = url
        self.prefix = prefix
        self.read_block_ms = read_block_ms
        self.flush_timeout_s = flush_timeout_s
        self.page_size = page_size
        self.conflicts: dict[str, str] = {}
        self.instance_id = uuid.uuid4().hex
        self._retention_ms = max(1, int(retention_s * 1000))
        self._control_channel = f"{prefix}:control"
        self._notice_channel = f"{prefix}:broker"
        self._client: aioredis.Redis = aioredis.Redis.from_url(
            url, retry=Retry(NoBackoff(), 1), socket_connect_timeout=5.0
        )
        self._pubsub: Any = None
        self._sha = ""
        self._dirty: list[_RedisLog] = []
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._outage: str | None = None
        self._writer: asyncio.Task[None] | None = None
        self._listener: asyncio.Task[None] | None = None
        self._followers: dict[str, _Follower] = {}
        self._joining: dict[str, list[Sink]] = {}

    # -- keys ---------------------------------------------------------------------------------

    def log_key(self, run_id: str) -> str:
        return f"{self.prefix}:run:{run_id}:log"

    def meta_key(self, run_id: str) -> str:
        return f"{self.prefix}:run:{run_id}:meta"

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect (raises if Redis is unreachable), subscribe, start the writer and listener.

        When it returns, control messages published by any process reach ``on_control``.
        """
        if self._writer is not None:
            return
        self._sha = await self._client.script_load(_WRITE_SCRIPT)
        pubsub: Any = self._client.pubsub()
        await pubsub.subscribe(self._control_channel, self._notice_channel)
        confirmed = 0
        deadline = time.monotonic() + 5.0
        while confirmed < 2:
            if time.monotonic() > deadline:
                await pubsub.aclose()
                raise TimeoutError("Redis did not confirm the control subscription")
            message = await pubsub.get_message(timeout=1.0)
            if message is not None and message["type"] == "subscribe":
                confirmed += 1
        self._pubsub = pubsub
        self._writer = asyncio.create_task(self._write_loop(), name="broker-writer")
        self._listener = asyncio.create_task(self._listen(), name="broker-control")

    async def stop(self) -> None:
        """Flush pending writes (at most ``flush_timeout_s``), stop every task, disconnect."""
        if self._writer is not None and not await self.flush(self.flush_timeout_s):
            log.warning(
                "broker stopping with %d events not written to Redis; they are lost for other processes",
                self.unflushed(),
            )
        tasks = [f.task for f in self._followers.values() if f.task is not None]
        tasks += [t for t in (self._writer, self._listener) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._followers.clear()
        self._writer = self._listener = None
        if self._pubsub is not None:
            await self._pubsub.aclose()
            self._pubsub = None
        await self._client.aclose()
        await super().stop()

    async def flush(self, timeout: float | None = None) -> bool:
        """Wait until every event appended so far is written (or refused); False on timeout."""
        if self._writer is None or self._writer.done():
            return not self._dirty
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def unflushed(self) -> int:
        """Events appended here and not yet written to Redis."""
        return sum(len(lg.frames) - lg.flushed for lg in self._dirty if lg.failed is None)

    # -- owner side -----------------------------------------------------------------------------

    def open(self, run_id: str, epoch: str) -> None:
        """Start a new log (no-op if this process holds one). Redis gets it on the next write.

        A log already in Redis under another epoch is replaced (a rebuilt log). Under the
        same epoch it is continued only where this process writes the very same events;
        otherwise the writes are refused and reported (use ``adopt`` to continue a log).
        """
        if run_id not in self.logs:
            lg = _RedisLog(run_id, epoch)
            self.logs[run_id] = lg
            self._mark(lg)

    def append(self, run_id: str, event: dict[str, Any]) -> int:
        """As :meth:`MemoryBroker.append`, plus queueing the log for the writer (no I/O)."""
        lg: _RedisLog = self.logs[run_id]  # type: ignore[assignment]
        seq = len(lg.frames) + 1
        frame = encode_event(run_id, seq, event).decode()
        lg.frames.append(frame)  # type: ignore[union-attr]  # a sealed log takes no appends
        lg.events.append(event)  # type: ignore[union-attr]
        for sink in lg.sinks:
            sink.deliver(run_id, seq, frame, event)
        if not lg.dirty:
            self._mark(lg)
        return seq

    def evict(self) -> int:
        """As in memory, but none while Redis is unreachable: nothing new is written then, so
        the scan would pass over every unwritten log on every close."""
        return 0 if self._outage is not None else super().evict()

    def _evictable(self, log: RunLog) -> bool:
        """Only a log Redis holds whole (closed mark included) leaves memory early: the
        subscribers of an evicted log then read it from Redis."""
        return isinstance(log, _RedisLog) and log.close_written and log.flushed == len(log.frames)

    def close(self, run_id: str) -> None:
        """Close locally; the writer then marks the log closed and sets its expiry."""
        super().close(run_id)
        lg: _RedisLog | None = self.logs.get(run_id)  # type: ignore[assignment]
        if lg is not None and not lg.dirty:
            self._mark(lg)

    def _mark(self, lg: _RedisLog) -> None:
        lg.dirty = True
        self._dirty.append(lg)
        self._idle.clear()
        self._wake.set()

    async def _write_loop(self) -> None:
        delay = RETRY_MIN_S
        while True:
            calls = self._plan_round()
            if not calls:  # nothing left to write (no log stays dirty without a call)
                self._idle.set()
                self._wake.clear()
                await self._wake.wait()
                continue
            try:
                results = await self._send(calls)
            except _UNREACHABLE as exc:
                self._down(exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)
                continue
            except Exception:
                log.exception("writing event logs to Redis failed; retrying")
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)
                continue
            if any(isinstance(r, NoScriptError) for r in results):
                try:
                    self._sha = await self._client.script_load(_WRITE_SCRIPT)
                except _UNREACHABLE as exc:
                    self._down(exc)
                    await asyncio.sleep(delay)
                continue
            if self._apply(calls, results):
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)
                continue
            if self.closed_bytes > self.max_closed_bytes:  # logs just written whole may go now
                self.evict()
            if self._outage is not None:
                log.warning("Redis is reachable again; the event logs are written again")
                self._outage = None
            delay = RETRY_MIN_S

    def _down(self, exc: BaseException) -> None:
        if self._outage is None:
            self._outage = _why(exc)
            log.warning(
                "cannot write event logs to Redis (%s); %d events wait, runs continue locally; retrying",
                _why(exc),
                self.unflushed(),
            )

    def _plan_round(self) -> list[tuple[_RedisLog, int, int, bool, bool]]:
        """The script calls of one round trip: (log, from, to, open, close) in seq order."""
        calls: list[tuple[_RedisLog, int, int, bool, bool]] = []
        budget = ROUND_MAX
        keep: list[_RedisLog] = []
        now = time.monotonic()
        for lg in self._dirty:
            n = len(lg.frames)
            closing = lg.closed_at is not None and not lg.close_written
            if lg.failed is not None:
                continue  # never written again; stays "dirty" so that appends do not re-queue it
            if lg.flushed >= n and not lg.need_open and not closing:
                lg.dirty = False
                continue
            if lg.closed_at is not None and now - lg.closed_at >= self.retention_s:
                log.warning("giving up writing run %s to Redis: its retention time has passed", lg.run_id)
                lg.dirty = False
                continue
            keep.append(lg)
            if budget <= 0:
                continue
            lo = lg.flushed
            first = True
            while True:
                hi = min(n, lo + min(CHUNK, budget))
                calls.append((lg, lo, hi, lg.need_open and first, closing and hi == n))
                budget -= hi - lo
                lo, first = hi, False
                if lo >= n or budget <= 0:
                    break
        self._dirty = keep
        return calls

    async def _send(self, calls: list[tuple[_RedisLog, int, int, bool, bool]]) -> list[Any]:
        pipe = self._client.pipeline(transaction=False)
        retention = self._retention_ms
        for lg, lo, hi, opening, closing in calls:
            args: list[Any] = [lg.epoch, 1 if opening else 0, 1 if closing else 0, retention]
            frames = lg.frames
            for i in range(lo, hi):
                args.append(i + 1)
                args.append(frames[i])
            pipe.evalsha(self._sha, 2, self.log_key(lg.run_id), self.meta_key(lg.run_id), *args)
        return await pipe.execute(raise_on_error=False)

    def _apply(self, calls: list[tuple[_RedisLog, int, int, bool, bool]], results: list[Any]) -> bool:
        """Advance each log by what Redis took; True if some call failed transiently."""
        transient = False
        lost: set[str] = set()
        for (lg, _lo, hi, opening, closing), res in zip(calls, results, strict=True):
            if lg.failed is not None:
                continue
            if isinstance(res, Exception):
                if self._outage is None:
                    self._outage = _why(res)
                    log.warning("Redis refused event log writes (%s); retrying", _why(res))
                transient = True
                continue
            code = int(res[0])
            if code == 0:
                lg.flushed = max(lg.flushed, hi)
                if opening:
                    lg.need_open = False
                if closing:
                    lg.close_written = True
            elif code == 3:
                if lg.run_id not in lost:
                    lost.add(lg.run_id)
                    log.warning("Redis lost the log of run %s; writing it again from memory", lg.run_id)
                lg.need_open, lg.flushed, lg.close_written = True, 0, False
            else:
                detail = res[2].decode() if isinstance(res[2], bytes) else str(res[2])
                if code == 1:
                    reason = f"second writer: seq {int(res[1])} of run {lg.run_id} refused: {detail}"
                else:
                    reason = f"run {lg.run_id}'s log in Redis now has epoch {detail}, not {lg.epoch}"
                lg.failed = reason
                self.conflicts[lg.run_id] = reason
                log.error("event log conflict, no longer writing this run to Redis: %s", reason)
        return transient

    # -- info and adopt -------------------------------------------------------------------------

    async def fetch_info(self, run_id: str) -> LogInfo | None:
        """The local log if held, else Redis' view; None if Redis has no such log."""
        info = self.info(run_id)
        if info is not None:
            return info
        return await self._remote_info(run_id)

    async def _read(
        self, run_id: str, after: int, upto: int | None = None, count: int = 0
    ) -> _Snapshot | None:
        """One atomic read: the meta and up to ``count`` events in ``after+1..upto``."""
        reply = await self._client.eval(
            _READ_SCRIPT, 2, self.log_key(run_id), self.meta_key(run_id), after, upto or "+", count
        )
        return _Snapshot(reply) if reply else None

    async def _remote_info(self, run_id: str) -> LogInfo | None:
        snap = await self._read(run_id, 0)
        return None if snap is None else snap.info()

    async def adopt(self, run_id: str) -> LogInfo | None:
        """Load the log from Redis so this process continues it; None if there is none.

        The previous holder (if any) is told, and serves its subscribers from the stream.
        """
        info = self.info(run_id)
        if info is not None:
            return info
        frames: list[str] = []
        events: list[dict[str, Any]] = []
        epoch: str | None = None
        while True:
            snap = await self._read(run_id, len(frames), None, self.page_size)
            if snap is None:
                return None
            if epoch is not None and snap.epoch != epoch:
                raise RuntimeError(f"run {run_id}'s log was rebuilt while it was being adopted")
            epoch = snap.epoch
            for seq, frame, event in snap.entries:
                if seq != len(frames) + 1:
                    raise RuntimeError(f"run {run_id}'s log in Redis has a gap before seq {seq}")
                frames.append(frame)
                events.append(event)
            if len(snap.entries) < self.page_size:
                break
        if run_id in self.logs:  # opened or adopted here meanwhile
            return self.logs[run_id].info()
        lg = _RedisLog(run_id, epoch)
        lg.frames, lg.events = frames, events
        lg.flushed, lg.need_open = len(frames), False
        if snap.closed:
            lg.closed_at = time.monotonic()
            lg.close_written = True
            lg.seal()
            self._schedule_sweep()
        self.logs[run_id] = lg
        try:
            notice = {"adopted": run_id, "epoch": lg.epoch, "last_seq": len(frames), "by": self.instance_id}
            await self._client.publish(self._notice_channel, orjson.dumps(notice))
        except _UNREACHABLE as exc:
            log.warning("could not announce that run %s was adopted: %s", run_id, _why(exc))
        return lg.info()

    def _on_adopted(self, run_id: str, epoch: str, last_seq: int) -> None:
        """Another process continues this run: serve its local subscribers from the stream."""
        lg: _RedisLog | None = self.logs.get(run_id)  # type: ignore[assignment]
        if lg is None:
            return
        if lg.epoch != epoch or len(lg.frames) != last_seq:
            log.error(
                "run %s was adopted by another process at seq %d (epoch %s) while this one holds seq %d "
                "(epoch %s); keeping the local log",
                run_id,
                last_seq,
                epoch,
                len(lg.frames),
                lg.epoch,
            )
            return
        del self.logs[run_id]
        sinks, lg.sinks = lg.sinks, []
        if not sinks:
            return
        f = self._followers.get(run_id)
        if f is None:
            f = self._follow(run_id, epoch, last_seq)
        for sink in sinks:
            if f.pos == last_seq:
                f.sinks.append(sink)
            else:
                f.gated.append((sink, last_seq))

    # -- subscriber side ------------------------------------------------------------------------

    async def attach(self, run_id: str, sink: Sink, after: int) -> LogInfo | None:
        """Replay ``seq > after`` to ``sink``, then deliver live; None if there is no log.

        A log held here is served as by :class:`MemoryBroker`; any other from Redis, by the
        run's reader (see the module docstring for the replay-to-live handover). A ``detach``
        while this is replaying cancels the attachment. A log another process has opened is
        found here only once its writer's first round trip has reached Redis (``flush`` on
        that process waits for it); before that, this is None like for an unknown run.
        """
        if run_id in self.logs:
            return await super().attach(run_id, sink, after)
        info = await self._remote_info(run_id)
        if run_id in self.logs:
            return await super().attach(run_id, sink, after)
        if info is None:
            return None
        joining = self._joining.setdefault(run_id, [])
        joining.append(sink)
        try:
            cursor = await self._join(run_id, sink, max(after, 0), info.epoch)
        finally:
            if any(s is sink for s in joining):
                joining.remove(sink)
            if not joining:
                self._joining.pop(run_id, None)
        if cursor is None:
            return None
        if isinstance(cursor, LogInfo):
            return cursor
        return LogInfo(info.epoch, max(info.last_seq, cursor), info.first_seq, info.closed)

    async def _join(self, run_id: str, sink: Sink, cursor: int, epoch: str) -> int | LogInfo | None:
        """Replay from ``cursor`` until caught up with the reader, then register with it."""
        while True:
            lg = self.logs.get(run_id)
            if lg is not None:  # adopted here meanwhile: the local log has it all
                for i in range(cursor, len(lg.frames)):
                    sink.deliver(run_id, i + 1, lg.frames[i], lg.event(i))
                if sink not in lg.sinks:
                    lg.sinks.append(sink)
                return lg.info()
            f = self._followers.get(run_id)
            if f is not None and f.epoch != epoch:  # a reader of the log this one replaced
                del self._followers[run_id]
                f = None
            if f is not None:
                if cursor == f.pos:
                    if sink not in f.sinks:
                        f.sinks.append(sink)
                    return cursor
                if cursor > f.pos:
                    f.gated.append((sink, cursor))
                    return cursor
            hi = f.pos if f is not None else None
            snap = await self._read(run_id, cursor, hi, self.page_size)
            if not any(s is sink for s in self._joining.get(run_id, ())):
                return None  # detached meanwhile
            if snap is None or snap.epoch != epoch:
                return None  # the log expired or was rebuilt
            entries = snap.entries
            for seq, frame, event in entries:
                sink.deliver(run_id, seq, frame, event)
                cursor = seq
            if hi is not None:
                if not entries and self._followers.get(run_id) is f:
                    log.warning("run %s: the stream lost events the reader had delivered", run_id)
                    return None
                continue
            if len(entries) < self.page_size and run_id not in self.logs and run_id not in self._followers:
                top = snap.last_seq
                f = self._follow(run_id, epoch, min(cursor, top))
                if cursor > top:
                    f.gated.append((sink, cursor))
                else:
                    f.sinks.append(sink)
                return cursor

    def detach(self, run_id: str, sink: Sink) -> None:
        """Stop delivering to ``sink`` (also cancels an attach still replaying)."""
        super().detach(run_id, sink)
        f = self._followers.get(run_id)
        if f is not None:
            if sink in f.sinks:
                f.sinks.remove(sink)
            f.gated = [(s, a) for s, a in f.gated if s is not sink]
        joining = self._joining.get(run_id)
        if joining is not None:
            joining[:] = [s for s in joining if s is not sink]

    def is_following(self, run_id: str) -> bool:
        """True while a reader task follows this run's log for remote sinks here."""
        return run_id in self._followers

    def _follow(self, run_id: str, epoch: str, pos: int) -> _Follower:
        f = _Follower(run_id, epoch, pos)
        self._followers[run_id] = f
        f.task = asyncio.create_task(self._read_loop(f), name=f"broker-reader:{run_id}")
        return f

    async def _read_loop(self, f: _Follower) -> None:
        run_id = f.run_id
        key, meta = self.log_key(run_id), self.meta_key(run_id)
        delay = RETRY_MIN_S
        try:
            while f.sinks or f.gated:
                # XREAD only waits (for anything after pos); the read script, run right after
                # it in the same round trip, returns the events and the meta in one piece.
                pipe = self._client.pipeline(transaction=False)
                pipe.xread({key: f"{f.pos}-0"}, count=1, block=self.read_block_ms)
                pipe.eval(_READ_SCRIPT, 2, key, meta, f.pos, "+", self.page_size)
                try:
                    _, reply = await pipe.execute()
                except _UNREACHABLE as exc:
                    if delay == RETRY_MIN_S:
                        log.warning(
                            "run %s: cannot read its log from Redis (%s); retrying", run_id, _why(exc)
                        )
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, RETRY_MAX_S)
                    continue
                delay = RETRY_MIN_S
                if self._followers.get(run_id) is not f:
                    return
                if not reply:
                    return  # expired or deleted
                snap = _Snapshot(reply)
                if snap.epoch != f.epoch:
                    log.warning("run %s: its log was rebuilt (new epoch); its remote followers stop", run_id)
                    return
                if snap.entries:
                    self._fan_out(f, snap.entries)
                if snap.closed and f.pos >= snap.last_seq:
                    return
        except Exception:
            log.exception("run %s: the log reader failed", run_id)
        finally:
            if self._followers.get(run_id) is f:
                del self._followers[run_id]

    def _fan_out(self, f: _Follower, entries: Sequence[Entry]) -> None:
        """Deliver a batch to every sink and advance ``pos``, with no await (the handover)."""
        run_id = f.run_id
        failed: list[Sink] = []
        for seq, frame, event in entries:
            if seq <= f.pos:
                continue
            for sink in f.sinks:
                try:
                    sink.deliver(run_id, seq, frame, event)
                except Exception:
                    log.exception("run %s: a sink raised; detaching it", run_id)
                    failed.append(sink)
            f.pos = seq
        if f.gated:
            waiting: list[tuple[Sink, int]] = []
            for sink, after in f.gated:
                for seq, frame, event in entries:
                    if seq > after:
                        sink.deliver(run_id, seq, frame, event)
                if f.pos >= after:
                    f.sinks.append(sink)
                else:
                    waiting.append((sink, after))
            f.gated = waiting
        for sink in failed:
            self.detach(run_id, sink)

    # -- control --------------------------------------------------------------------------------

    async def publish_control(self, message: dict[str, Any]) -> None:
        """PUBLISH ``message`` to every process (this one included). Lost if none listens."""
        await self._client.publish(self._control_channel, orjson.dumps(message))

    async def _listen(self) -> None:
        """Call the control handlers for every message, one message at a time, in order."""
        assert self._pubsub is not None
        pubsub = self._pubsub
        control = self._control_channel.encode()
        delay = RETRY_MIN_S
        while True:
            try:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=None)
            except _UNREACHABLE as exc:
                if delay == RETRY_MIN_S:
                    log.warning(
                        "control channel: Redis unreachable (%s); messages meanwhile are lost", _why(exc)
                    )
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)
                continue
            except Exception:
                log.exception("control channel: reading failed; retrying")
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)
                continue
            delay = RETRY_MIN_S
            if message is None or message.get("type") != "message":
                continue
            try:
                payload = orjson.loads(message["data"])
            except orjson.JSONDecodeError:
                log.warning("control channel: ignoring a message that is not JSON")
                continue
            if message["channel"] != control:
                if payload.get("by") != self.instance_id and "adopted" in payload:
                    self._on_adopted(str(payload["adopted"]), str(payload["epoch"]), int(payload["last_seq"]))
                continue
            for handler in list(self._control):
                try:
                    await handler(payload)
                except Exception:
                    log.exception("control handler failed on %r", payload)
