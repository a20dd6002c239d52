"""Floor (a): the `anthropic` SDK alone reading the same upstream streams.

`python -m bench.sdkfloor --url U --serve` is a worker: it reads one JSON job per stdin line
(`{"concurrency": C, "runs": N, "words": D}` or `{"cancel": K}`) and answers each with one
JSON line, until stdin closes (so the SDK's imports are paid once per benchmark run).
`python -m bench.sdkfloor --url U --concurrency C --runs N --words D` runs one job: N streaming
`messages.create(stream=True)` requests against the offline model, C at a time, each asking
for D words unpaced (the same request shape as the gateway's runs), iterates every event with
the SDK's own parsing and models, and prints one JSON line: its CPU seconds (user + system,
from `resource.getrusage`) over the streaming phase, the events and text deltas it saw.

With `--cancel K` it instead opens K paced streams one after another, closes each after its
fifth delta, and reports the close times (wall-clock ns) by nonce, so that the offline model's
tap can tell how long the close took to reach it (the floor of "cancel -> upstream closed").
Runs on uvloop, as the gateway does, and on the SDK HTTP backend the gateway is measured with
(`GATEWAY_LLM_HTTP`: `aiohttp`, the default, is the SDK's `DefaultAioHttpClient`; `httpx` is
the SDK's default stack), so the floor is the SDK at its best configuration.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import time
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    import anthropic

BACKENDS = ("aiohttp", "httpx")


def backend() -> str:
    """The SDK HTTP backend from `GATEWAY_LLM_HTTP` (default aiohttp), as the gateway reads it."""
    name = (os.environ.get("GATEWAY_LLM_HTTP") or BACKENDS[0]).strip().lower()
    if name not in BACKENDS:
        raise ValueError(f"GATEWAY_LLM_HTTP must be one of {', '.join(BACKENDS)}, got {name!r}")
    return name


def make_client(url: str) -> anthropic.AsyncAnthropic:
    import anthropic

    http_client = anthropic.DefaultAioHttpClient() if backend() == "aiohttp" else None
    return anthropic.AsyncAnthropic(api_key="offline", base_url=url, max_retries=0, http_client=http_client)


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def run(url: str, concurrency: int, runs: int, words: int, tps: float = 0.0) -> dict[str, Any]:
    client = make_client(url)
    try:
        return await _run(client, concurrency, runs, words, tps)
    finally:
        await client.close()  # closes the aiohttp session too (no "Unclosed client session")


async def _run(
    client: anthropic.AsyncAnthropic, concurrency: int, runs: int, words: int, tps: float
) -> dict[str, Any]:
    events = 0
    deltas = 0

    async def one(i: int) -> None:
        nonlocal events, deltas
        stream = await client.messages.create(
            model="bench",
            max_tokens=max(4096, words * 2),
            messages=[
                {
                    "role": "user",
                    "content": f"Write {words} words please [[tps:{tps:g}]] bench-{os.getpid():x}{i:06x}",
                }
            ],
            stream=True,
        )
        async for event in stream:
            events += 1
            if event.type == "content_block_delta":
                deltas += 1

    await one(999999)  # warm-up: imports, connection, first-use caches
    events = deltas = 0
    sem = asyncio.Semaphore(concurrency)

    async def limited(i: int) -> None:
        async with sem:
            await one(i)

    wall = time.perf_counter()
    cpu = cpu_seconds()
    await asyncio.wait_for(asyncio.gather(*(limited(i) for i in range(runs))), timeout=600)
    cpu = cpu_seconds() - cpu
    wall = time.perf_counter() - wall
    return {"cpu_s": cpu, "wall_s": wall, "events": events, "deltas": deltas, "runs": runs}


async def cancel(url: str, count: int) -> dict[str, Any]:
    client = make_client(url)
    try:
        return await _cancel(client, count)
    finally:
        await client.close()


async def _cancel(client: anthropic.AsyncAnthropic, count: int) -> dict[str, Any]:
    closed: dict[str, int] = {}
    for i in range(count):
        nonce = f"{os.getpid():x}c{i:06x}"
        stream = await client.messages.create(
            model="bench",
            max_tokens=4096,
            messages=[{"role": "user", "content": f"Write 2000 words please [[tps:50]] bench-{nonce}"}],
            stream=True,
        )
        seen = 0
        async for event in stream:
            if event.type == "content_block_delta":
                seen += 1
                if seen >= 5:
                    break
        closed[nonce] = time.time_ns()
        await stream.close()
        await asyncio.sleep(0.02)
    return {"closed": closed}


async def first_token(url: str, count: int) -> dict[str, Any]:
    """`count` one-word requests one after another: wall ms from calling `create` to the first
    content_block_delta (the model's and the SDK's own share of a gateway's first token)."""
    client = make_client(url)
    try:
        times: list[float] = []
        for i in range(count + 3):  # the first three warm up
            t0 = time.perf_counter()
            stream = await client.messages.create(
                model="bench",
                max_tokens=4096,
                messages=[{"role": "user", "content": f"Write 1 words please bench-{os.getpid():x}f{i:06x}"}],
                stream=True,
            )
            first = None
            async for event in stream:
                if first is None and event.type == "content_block_delta":
                    first = (time.perf_counter() - t0) * 1e3
            if i >= 3 and first is not None:
                times.append(first)
        return {"first_token_ms": times}
    finally:
        await client.close()


async def serve(url: str) -> None:
    """Answer jobs from stdin, one JSON line each, until EOF."""
    import sys

    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            return
        job = orjson.loads(line)
        try:
            if job.get("cancel"):
                result = await cancel(url, int(job["cancel"]))
            elif job.get("first_token"):
                result = await first_token(url, int(job["first_token"]))
            else:
                result = await run(
                    url,
                    int(job["concurrency"]),
                    int(job["runs"]),
                    int(job["words"]),
                    float(job.get("tps", 0)),
                )
        except Exception as exc:  # reported to the caller, which raises
            result = {"error": repr(exc)}
        sys.stdout.write(orjson.dumps(result).decode() + "\n")
        sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.sdkfloor")
    parser.add_argument("--url", required=True)
    parser.add_argument("--serve", action="store_true", help="answer JSON jobs from stdin")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--words", type=int, default=200)
    parser.add_argument("--cancel", type=int, default=0)
    args = parser.parse_args(argv)
    import uvloop

    if args.serve:
        uvloop.run(serve(args.url))
        return 0
    if args.cancel:
        result = uvloop.run(cancel(args.url, args.cancel))
    else:
        result = uvloop.run(run(args.url, args.concurrency, args.runs, args.words))
    print(orjson.dumps(result).decode(), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
