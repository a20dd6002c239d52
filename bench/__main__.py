"""`python -m bench` (= `make bench`): run the benchmark suite and write bench/results/.

    python -m bench                 full suite, about 5 minutes
    python -m bench --quick         small counts, tens of seconds (smoke run)
    python -m bench --only latency,cancel
    python -m bench --profile       the gateway under pyinstrument on three workloads;
                                    writes bench/results/profile.md and speedscope files
    python -m bench --rev HEAD      measure a commit (exported with git archive) instead of
                                    the work tree

Everything runs on 127.0.0.1, every wait is bounded, and the whole run is bounded by
`--deadline` seconds; the servers it starts die with it.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
from pathlib import Path

from bench.config import CONFIGS
from bench.report import RESULTS, write

FIGURES = (
    "cpu_per_delta",
    "latency",
    "max_paced_runs",
    "cancel",
    "first_token",
    "resume",
    "fanout",
    "idle_rss",
    "gc_held",
)


def log(message: str) -> None:
    print(message, flush=True)


async def run_suite(args: argparse.Namespace, workdir: Path) -> dict[str, Path]:
    from bench.suite import Suite

    config = CONFIGS[args.size]
    only = set(args.only.split(",")) if args.only else None
    unknown = (only or set()) - set(FIGURES)
    if unknown:
        raise SystemExit(f"unknown figures {sorted(unknown)}; choose from {', '.join(FIGURES)}")
    suite = Suite(config, workdir, log)
    results = await asyncio.wait_for(suite.run(only), args.deadline)
    return write(results, Path(args.out))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", dest="size", action="store_const", const="quick", help="small counts")
    size.add_argument("--tiny", dest="size", action="store_const", const="tiny", help="toy counts (tests)")
    parser.set_defaults(size="full")
    parser.add_argument("--only", help=f"comma-separated figures: {', '.join(FIGURES)}")
    parser.add_argument("--out", default=str(RESULTS), help="results directory (default bench/results)")
    parser.add_argument("--deadline", type=float, default=None, help="stop after this many seconds")
    parser.add_argument("--profile", action="store_true", help="profile the gateway instead of benchmarking")
    parser.add_argument(
        "--keep", action="store_true", help="keep the work directory (server logs, databases)"
    )
    parser.add_argument("--rev", help="measure this git revision's gateway (default: the work tree)")
    args = parser.parse_args(argv)
    if args.deadline is None:
        args.deadline = {"full": 1200.0, "quick": 300.0, "tiny": 120.0}[args.size]
    import uvloop

    from bench.procs import raise_nofile

    raise_nofile()
    workdir = Path(tempfile.mkdtemp(prefix="gateway-bench-"))
    started = time.perf_counter()
    ok = False
    try:
        if args.rev:
            from bench.procs import use_revision

            log(f"[bench] measuring {args.rev} = {use_revision(args.rev, workdir)}")
        if args.profile:
            from bench.profile import run_profile

            paths = uvloop.run(run_profile(CONFIGS[args.size], workdir, Path(args.out), log))
        else:
            paths = uvloop.run(run_suite(args, workdir))
        ok = True
    finally:
        if ok and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            log(f"[bench] work directory kept: {workdir}")
    log(f"[bench] done in {time.perf_counter() - started:.0f} s")
    for name, path in paths.items():
        log(f"[bench] {name}: {path}")
    if not args.profile and "markdown" in paths:
        print(paths["markdown"].read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
