"""The offline model with a measuring tap: `python -m bench.upstream --port P`.

It serves `gateway.llm.offline.create_app` unchanged (same SSE bytes, same pacing, same
`: t=<time.time_ns()>` stamp before every `content_block_delta`) under uvicorn, wrapped in an
ASGI middleware that only watches:

- the request body: the last `bench-<hex>` nonce in it names the request (the bench puts one
  in the text of each run's user message; the history of earlier runs comes first in the
  body, so the last match is the current turn);
- every body chunk the app sends: each `: t=` stamp is recorded, in order, under the nonce,
  so stamp k is the send time of delta k;
- the `http.disconnect` the server delivers: its wall-clock time is recorded under the
  nonce (when the client, i.e. the gateway, closed the upstream request).

`GET /bench/dump` returns and forgets `{"stamps": {nonce: [ns...]}, "closed": {nonce: ns}}`;
`GET /bench/stats` returns the offline model's own counters (`OfflineStats.snapshot()`). The
tap costs the model process a regex scan per chunk; it adds nothing to the gateway's path.
"""

from __future__ import annotations

import argparse
import re
import time
from typing import Any

import orjson
import uvicorn

from gateway.llm.offline import create_app

_NONCE = re.compile(rb"bench-([0-9a-f]{6,32})")
_STAMP = re.compile(rb"^: t=(\d+)$", re.M)


class Tap:
    def __init__(self, app: Any) -> None:
        self.app = app
        self.stamps: dict[str, list[int]] = {}
        self.closed: dict[str, int] = {}

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        if scope["method"] == "GET" and path.startswith("/bench/"):
            await self._control(path, send)
            return
        if path != "/v1/messages":
            await self.app(scope, receive, send)
            return
        nonce: list[str] = []  # filled once the body is read
        body: list[bytes] = []
        closed = self.closed

        async def tap_receive() -> dict[str, Any]:
            message: dict[str, Any] = await receive()
            kind = message["type"]
            if kind == "http.request" and not nonce:
                body.append(message.get("body", b""))
                if not message.get("more_body", False):
                    found = _NONCE.findall(b"".join(body))
                    nonce.append(found[-1].decode() if found else "")
            elif kind == "http.disconnect" and nonce and nonce[0]:
                closed.setdefault(nonce[0], time.time_ns())
            return message

        stamps = self.stamps

        async def tap_send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.body" and nonce and nonce[0]:
                chunk = message.get("body", b"")
                if b": t=" in chunk:
                    stamps.setdefault(nonce[0], []).extend(int(t) for t in _STAMP.findall(chunk))
            await send(message)

        await self.app(scope, tap_receive, tap_send)

    async def _control(self, path: str, send: Any) -> None:
        if path == "/bench/dump":
            payload: Any = {"stamps": self.stamps, "closed": self.closed}
            self.stamps, self.closed = {}, {}
        elif path == "/bench/stats":
            payload = self.app.state.stats.snapshot()
        else:
            payload = {"error": "not found"}
        body = orjson.dumps(payload)
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.upstream")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--tokens-per-second", type=float, default=0.0)
    args = parser.parse_args(argv)
    from bench.procs import raise_nofile

    raise_nofile()
    app = Tap(create_app(tokens_per_second=args.tokens_per_second))
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
        access_log=False,
        lifespan="off",
        backlog=4096,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
