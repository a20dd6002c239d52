"""The baseline websocket server: `python -m bench.plainws --port P`.

A bare ASGI websocket app (no Starlette, no protocol, no broker) under uvicorn with exactly
the gateway's settings (`gateway.cli.uvicorn_config`: ws="auto", same max size, pings, no
permessage-deflate, uvloop, httptools). It does the least a relay must do: write frames of
a given size to websocket clients. Each client sends JSON text commands:

- `{"op": "hello"}`: one reply frame of the size of the gateway's hello ack (an idle
  connection has then done what a gateway client does after `hello`).
- `{"op": "echo", ...}`: the same text back at once (a round trip: the floor of cancel).
- `{"op": "stream", "n": N, "size": S, "tps": R}`: N frames of S bytes; unpaced when R is 0,
  else frame k leaves at start + k/R (as the offline model paces its deltas) and carries
  `"t": time.time_ns()` taken just before it is written. The last frame has `"end": 1`.
- `{"op": "join", "group": G}` then, from any member, `{"op": "broadcast", "group": G, "n":
  N, "size": S, "tps": R}`: every frame is built once and written to each member in turn.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

import orjson

from gateway.cli import uvicorn_config
from gateway.config import Settings

HELLO_ACK_SIZE = 200


def frame(size: int, k: int, *, end: bool = False, stamp: bool = False) -> str:
    """A JSON text frame of exactly `size` bytes (or the smallest possible above it)."""
    head = f'{{"type":"event","k":{k}'
    if stamp:
        head += f',"t":{time.time_ns()}'
    if end:
        head += ',"end":1'
    head += ',"pad":"'
    pad = max(0, size - len(head) - 2)
    return head + "x" * pad + '"}'


class PlainApp:
    def __init__(self) -> None:
        self.groups: dict[str, list[Any]] = {}

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
            await send({"type": "http.response.body", "body": b"ok"})
            return
        message = await receive()
        if message["type"] != "websocket.connect":
            return
        offered = scope.get("subprotocols") or []
        await send({"type": "websocket.accept", "subprotocol": offered[0] if offered else None})
        tasks: set[asyncio.Task[None]] = set()
        joined: list[str] = []
        try:
            while True:
                message = await receive()
                if message["type"] == "websocket.disconnect":
                    return
                text = message.get("text")
                if text is None:
                    continue
                cmd = orjson.loads(text)
                op = cmd.get("op")
                if op == "echo":
                    await send({"type": "websocket.send", "text": text})
                elif op == "hello":
                    await send({"type": "websocket.send", "text": frame(HELLO_ACK_SIZE, 0)})
                elif op == "stream":
                    task = asyncio.ensure_future(self.stream([send], cmd))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                elif op == "join":
                    self.groups.setdefault(cmd["group"], []).append(send)
                    joined.append(cmd["group"])
                    await send({"type": "websocket.send", "text": frame(HELLO_ACK_SIZE, 0)})
                elif op == "broadcast":
                    task = asyncio.ensure_future(self.stream(list(self.groups.get(cmd["group"], [])), cmd))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
        finally:
            for group in joined:
                members = self.groups.get(group, [])
                if send in members:
                    members.remove(send)
            for task in list(tasks):
                task.cancel()

    @staticmethod
    async def stream(sends: list[Any], cmd: dict[str, Any]) -> None:
        n, size, tps = int(cmd["n"]), int(cmd["size"]), float(cmd.get("tps") or 0)
        loop = asyncio.get_running_loop()
        try:
            if not tps:
                body = frame(size, 0)
                for k in range(n - 1):
                    message = {"type": "websocket.send", "text": body}
                    for send in sends:
                        await send(message)
                    if k % 16 == 15:
                        await asyncio.sleep(0)
                last = {"type": "websocket.send", "text": frame(size, n - 1, end=True)}
                for send in sends:
                    await send(last)
                return
            interval = 1.0 / tps
            start = loop.time()
            for k in range(n):
                delay = start + k * interval - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                message = {"type": "websocket.send", "text": frame(size, k, end=k == n - 1, stamp=True)}
                for send in sends:
                    await send(message)
        except Exception:  # a client went away: nothing to report
            return


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.plainws")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    from bench.procs import raise_nofile

    raise_nofile()
    settings = Settings()
    settings.port = args.port
    import uvicorn

    config = uvicorn_config(PlainApp(), settings)
    uvicorn.Server(config).run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
