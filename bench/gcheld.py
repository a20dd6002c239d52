"""What finished runs held in memory cost each full garbage collection.

`python -m bench.gcheld [--runs R] [--events E] [--reps N]` fills the gateway's in-memory
broker with R finished runs of E delta events each (the bench's latency figure leaves about
1.4 million held under the default `GATEWAY_LOG_MEMORY_MB`), then times full collections
(`gc.collect()`, median of N) after `gc.freeze()` of the imports, as the gateway freezes its
start-up objects. The baseline, built in the same process the same way, is the same frames
and event dicts held in plain lists (what a finished log was before logs were sealed). Prints
one JSON line: both medians, their ratio, and the tracked objects each adds.

A CPU-bound figure on one core (no servers, no sockets): repeatable on a noisy machine.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from typing import Any

import orjson

from gateway.broker.memory import MemoryBroker
from protocol.codec import encode_event


def event(run: int, i: int) -> dict[str, Any]:
    return {
        "message_type": "assistant_message",
        "id": f"message-{run}",
        "otid": f"{run}-0",
        "date": "2026-11-22T10:00:00+00:00",
        "content": f" word{i % 10}",
    }


def run_id(run: int) -> str:
    return f"run-{run:08d}-1d4b-4c7e-9a55-0123456789ab"


def full_collection_ms(reps: int) -> float:
    times = []
    for _ in range(reps):
        started = time.perf_counter()
        gc.collect()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def measure(runs: int, events: int, reps: int) -> dict[str, Any]:
    gc.collect()
    gc.freeze()
    tracked0 = len(gc.get_objects())
    empty_ms = full_collection_ms(reps)

    broker = MemoryBroker(max_closed_bytes=1 << 62)
    for r in range(runs):
        rid = run_id(r)
        broker.open(rid, "ep")
        for i in range(events):
            broker.append(rid, event(r, i))
        broker.close(rid)
    gc.collect()
    sealed_ms = full_collection_ms(reps)
    tracked_sealed = len(gc.get_objects()) - tracked0
    del broker
    gc.collect()

    # The baseline: the same frames and events, kept in lists per run.
    held = {}
    for r in range(runs):
        rid = run_id(r)
        evs = [event(r, i) for i in range(events)]
        held[rid] = ([encode_event(rid, i + 1, e).decode() for i, e in enumerate(evs)], evs)
    gc.collect()
    lists_ms = full_collection_ms(reps)
    tracked_lists = len(gc.get_objects()) - tracked0
    return {
        "figure": "full garbage collection with finished runs held in memory",
        "held_events": runs * events,
        "runs": runs,
        "empty_ms": round(empty_ms, 2),
        "sealed_ms": round(sealed_ms, 2),
        "lists_ms": round(lists_ms, 2),
        "ratio": round(sealed_ms / lists_ms, 4),
        "tracked_sealed": tracked_sealed,
        "tracked_lists": tracked_lists,
        "python": sys.version.split()[0],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gcheld")
    parser.add_argument("--runs", type=int, default=7800, help="finished runs held (default 7800)")
    parser.add_argument("--events", type=int, default=180, help="events per run (default 180)")
    parser.add_argument("--reps", type=int, default=5, help="collections timed (median; default 5)")
    args = parser.parse_args(argv)
    if min(args.runs, args.events, args.reps) < 1:
        parser.error("--runs, --events and --reps must be at least 1")
    print(orjson.dumps(measure(args.runs, args.events, args.reps)).decode())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
