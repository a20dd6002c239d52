"""`python -m gateway.llm.offline`: run the offline model standalone under uvicorn.

`main(argv)` parses `--host`, `--port`, `--tokens-per-second`, `--signing-key` and
`--log-level`, serves until interrupted, and returns the exit status (0).
"""

from __future__ import annotations

import argparse

import uvicorn

from gateway.llm.offline.app import create_app
from gateway.llm.offline.signing import DEFAULT_KEY


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m gateway.llm.offline",
        description="Serve the offline model: an Anthropic-compatible Messages API with rule-based replies.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8788, help="port to bind (default 8788)")
    parser.add_argument(
        "--tokens-per-second",
        type=float,
        default=0.0,
        help="pace token deltas (default 0: as fast as possible)",
    )
    parser.add_argument("--signing-key", default=None, help="key for thinking signatures (default: built in)")
    parser.add_argument("--log-level", default="warning", help="uvicorn log level (default warning)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.tokens_per_second < 0:
        build_parser().error("--tokens-per-second must be >= 0")
    key = args.signing_key.encode() if args.signing_key else DEFAULT_KEY
    app = create_app(tokens_per_second=args.tokens_per_second, signing_key=key)
    uvicorn.run(
        app, host=args.host, port=args.port, log_level=args.log_level, access_log=False, lifespan="off"
    )
    return 0
