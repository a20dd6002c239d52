"""`python -m bench --profile`: where the gateway's CPU goes, for the lead to fix the hot path.

Three workloads, each on a fresh gateway process run under pyinstrument (a sampling profiler,
1 ms interval; `-r pyisession`):

- `per_run`: runs of one delta, 10 at a time: the fixed cost of a run (start, model request,
  persistence, closing events);
- `per_delta`: runs of 2,000 unpaced deltas, 20 at a time: the relay hot path, where deltas
  arrive 16 to an HTTP chunk;
- `paced`: 60 runs of 500 deltas paced at 100 tok/s, all at once: each delta arrives alone in
  its chunk and leaves alone in its frame, as in real runs.

For each, `profile.md` lists the busy time (samples outside the event loop's own C code and
waits) by library and the functions with the most self time and inclusive time, as shares
of the busy time; `profile-<workload>.speedscope.json` opens in https://www.speedscope.app.
Start-up (imports, migrations, the lifespan) and lazy imports on first use are left out: only
frames under the event loop count, and none under an import.
pyinstrument samples the main thread only; the gateway's other threads (the SQLite WAL
checkpointer, tool subprocess waits) use little of its CPU, and `thread_cpu_share` reports
it per run.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import procs
from bench.client import GatewayClient, close_many, open_many
from bench.config import Config

GROUPS = (
    ("gateway/", "gateway (ours)"),
    ("protocol/", "protocol (ours)"),
    ("sqlalchemy/", "SQLAlchemy"),
    ("aiosqlite/", "aiosqlite"),
    ("anthropic/", "anthropic SDK"),
    ("httpx", "httpx2/httpcore"),
    ("httpcore", "httpx2/httpcore"),
    ("h11", "h11"),
    ("uvicorn/", "uvicorn"),
    ("websockets/", "websockets"),
    ("starlette/", "starlette"),
    ("pydantic", "pydantic"),
    ("asyncio/", "asyncio"),
)
LOOP_FRAMES = {("run", "asyncio/runners.py"), ("run_forever", "asyncio/base_events.py")}
STARTUP_FRAMES = {
    ("lifespan", "gateway/app.py"),
    ("startup", "uvicorn/server.py"),
    ("shutdown", "uvicorn/server.py"),
}


def _group(path: str | None) -> str:
    path = path or ""
    for needle, name in GROUPS:
        if needle in path:
            return name
    if path.startswith("<built-in>"):
        return "builtins (C)"
    return "other Python"


def analyse(session_path: Path, top: int = 25) -> dict[str, Any]:
    """Self time by library and by function, inclusive time of our functions; shares of busy time."""
    from pyinstrument.session import Session

    session = Session.load(str(session_path))
    root = session.root_frame(trim_stem=False)
    assert root is not None
    loops: list[Any] = []

    def find(frame: Any) -> None:
        if (frame.function, frame.file_path_short) in LOOP_FRAMES:
            loops.append(frame)
            return
        for child in frame.children:
            find(child)

    find(root)
    self_time: dict[tuple[str, str, int], float] = defaultdict(float)
    inclusive: dict[tuple[str, str, int], float] = defaultdict(float)
    # self time of each function by the function that called it
    callers: dict[tuple[str, str, int], dict[tuple[str, str, int], float]] = defaultdict(
        lambda: defaultdict(float)
    )
    by_group: dict[str, float] = defaultdict(float)
    loop_self = 0.0
    excluded = 0.0

    def walk(
        frame: Any,
        stack: frozenset[tuple[str, str, int]],
        caller_path: str | None,
        parent: tuple[str, str, int],
    ) -> None:
        nonlocal loop_self, excluded
        if frame.function == "[self]":
            return
        if frame.function == "_find_and_load" or (frame.function, frame.file_path_short) in STARTUP_FRAMES:
            excluded += frame.time  # lazy imports and the lifespan: one-time costs
            return
        key = (frame.function, frame.file_path_short or "", frame.line_no or 0)
        own = frame.time - sum(c.time for c in frame.children if c.function != "[self]")
        if (frame.function, frame.file_path_short) in LOOP_FRAMES:
            loop_self += own
        else:
            self_time[key] += own
            callers[key][parent] += own
            # C functions are charged to the library that called them
            path = frame.file_path_short if frame.file_path_short != "<built-in>" else caller_path
            by_group[_group(path) if path else "builtins (C)"] += own
        if key not in stack:
            inclusive[key] += frame.time
        for child in frame.children:
            path = frame.file_path_short if frame.file_path_short != "<built-in>" else caller_path
            walk(child, stack | {key}, path, key)

    for loop in loops:
        walk(loop, frozenset(), None, ("", "", 0))
    busy = sum(self_time.values()) or 1e-9

    def name(key: tuple[str, str, int]) -> str:
        return f"{key[0]} ({key[1]}:{key[2]})"

    return {
        "sampled_s": round(sum(f.time for f in loops), 3),
        "loop_s": round(loop_self, 3),
        "excluded_s": round(excluded, 3),
        "busy_s": round(busy, 3),
        "by_library": sorted(
            ((g, round(t / busy * 100, 1)) for g, t in by_group.items()), key=lambda x: -x[1]
        ),
        "self": [
            (
                name(k),
                round(t / busy * 100, 1),
                [
                    (name(c), round(ct / busy * 100, 1))
                    for c, ct in sorted(callers[k].items(), key=lambda x: -x[1])[:3]
                ],
            )
            for k, t in sorted(self_time.items(), key=lambda x: -x[1])[:top]
        ],
        "inclusive_ours": [
            (name(k), round(t / busy * 100, 1))
            for k, t in sorted(inclusive.items(), key=lambda x: -x[1])
            if k[1].startswith(("gateway/", "protocol/"))
        ][:top],
    }


def speedscope(session_path: Path, out: Path) -> None:
    from pyinstrument.renderers.speedscope import SpeedscopeRenderer
    from pyinstrument.session import Session

    out.write_text(SpeedscopeRenderer().render(Session.load(str(session_path))))


async def _workload(gw: procs.Proc, words: int, level: int, runs: int, tps: float) -> dict[str, Any]:
    import httpx2 as httpx

    from bench.suite import nonce, words_prompt

    async with httpx.AsyncClient(base_url=f"http://{procs.HOST}:{gw.port}", timeout=60) as http:
        deadline = asyncio.get_running_loop().time() + 60
        while True:
            try:
                if (await http.get("/v1/health/")).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if asyncio.get_running_loop().time() > deadline:
                raise RuntimeError("gateway not healthy")
            await asyncio.sleep(0.2)
        agents = []
        for i in range(level):
            r = await http.post(
                "/v1/agents/", json={"name": f"p{i}", "model": "anthropic/bench", "max_tokens": 8192}
            )
            agents.append(r.json()["id"])
    url = f"ws://{procs.HOST}:{gw.port}/v1/ws"
    clients = await open_many(GatewayClient, url, level)
    threads0 = {t.id: t.user_time + t.system_time for t in gw.ps().threads()}
    cpu0 = gw.cpu()
    try:

        async def drive(i: int) -> None:
            for _ in range(runs // level):
                run_id = await clients[i].start_run(agents[i], words_prompt(words, tps, nonce()))
                await clients[i].wait_run(run_id, 300)

        await asyncio.wait_for(asyncio.gather(*(drive(i) for i in range(level))), 600)
    finally:
        await close_many(clients)
    cpu = gw.cpu() - cpu0
    threads = {t.id: t.user_time + t.system_time - threads0.get(t.id, 0.0) for t in gw.ps().threads()}
    main_thread = threads.get(gw.pid, 0.0)
    return {
        "runs": runs,
        "words": words,
        "level": level,
        "tps": tps,
        "cpu_s": round(cpu, 3),
        "thread_cpu_share": {
            "main": round(main_thread / max(cpu, 1e-9), 3),
            "others": round(1 - main_thread / max(cpu, 1e-9), 3),
        },
    }


# name: (deltas per run, runs at a time, runs, pace in tokens/s or 0)
WORKLOADS = {
    "per_run": (1, 10, 300, 0.0),
    "per_delta": (2000, 20, 40, 0.0),
    "paced": (500, 60, 60, 100.0),
}


async def run_profile(
    config: Config, workdir: Path, out_dir: Path, log: Callable[[str], None]
) -> dict[str, Path]:
    await asyncio.to_thread(out_dir.mkdir, parents=True, exist_ok=True)
    upstream = procs.start_upstream(workdir)
    report: dict[str, Any] = {}
    paths: dict[str, Path] = {}
    try:
        for name, (words, level, runs, tps) in WORKLOADS.items():
            if config.name == "tiny":
                runs = level
            session = workdir / f"{name}.pyisession"
            gw = procs.start_gateway(workdir, upstream.port, profile=session)
            try:
                log(f"[profile] {name}: {runs} runs of {words} deltas, {level} at a time, pace {tps:g}/s")
                work = await _workload(gw, words, level, runs, tps)
            finally:
                await asyncio.to_thread(gw.stop, 120.0)
            if not session.exists():
                raise RuntimeError(f"pyinstrument wrote no session:\n{gw.tail()}")
            report[name] = {"workload": work, **analyse(session)}
            scope = out_dir / f"profile-{name}.speedscope.json"
            speedscope(session, scope)
            paths[f"speedscope_{name}"] = scope
    finally:
        upstream.stop()
    md = out_dir / "profile.md"
    md.write_text(render(report, procs.tree_state()))
    paths["profile"] = md
    return paths


def render(report: dict[str, Any], source: dict[str, Any] | None = None) -> str:
    from bench.report import _source

    lines = ["# Gateway profile (pyinstrument, main thread)", ""]
    if source:
        lines += [_source({"source": source}), ""]
    lines.append(
        "Shares are of the busy time: samples inside Python code under the event loop (the loop's own "
        "C code, i.e. epoll waits and uvloop's socket I/O, is reported apart as `loop`). C functions "
        "(builtins) are charged to the library that called them in the by-library table."
    )
    for name, r in report.items():
        w = r["workload"]
        lines += [
            "",
            f"## {name}: {w['runs']} runs of {w['words']} delta(s), {w['level']} at a time, "
            + (f"paced at {w['tps']:g} tok/s" if w.get("tps") else "unpaced"),
            "",
            f"Gateway CPU {w['cpu_s']} s (main thread {w['thread_cpu_share']['main'] * 100:.0f}%); "
            f"sampled {r['sampled_s']} s under the event loop: loop {r['loop_s']} s, "
            "start-up and lazy imports "
            f"{r['excluded_s']} s (left out), busy {r['busy_s']} s "
            "(the profiler itself slows the process by roughly 1.5x).",
            "",
            "| library | share of busy |",
            "|---|---|",
        ]
        lines += [f"| {g} | {s}% |" for g, s in r["by_library"]]
        lines += ["", "| function (self time) | share | called from (share) |", "|---|---|---|"]
        lines += [
            f"| `{f}` | {s}% | " + "; ".join(f"`{c}` {cs}%" for c, cs in by) + " |" for f, s, by in r["self"]
        ]
        lines += ["", "| our function (inclusive) | share |", "|---|---|"]
        lines += [f"| `{f}` | {s}% |" for f, s in r["inclusive_ours"]]
    return "\n".join(lines) + "\n"
