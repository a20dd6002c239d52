"""Sizes of a benchmark run: `FULL` (`python -m bench`, a few minutes), `QUICK` (`--quick`,
tens of seconds) and `TINY` (the smoke test: every figure once, at toy sizes)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class Targets:
    cpu_ratio: float = 1.3  # gateway CPU per delta / (SDK parse floor + plain ws floor)
    p99_ms: float = 10.0  # p99 added latency ...
    p99_at: int = 300  # ... at this many paced runs
    max_runs: int = 500  # paced runs one process carries with p99 under search_p99_ms
    idle_kb: float = 50.0  # RSS per idle connection
    cancel_p99_ms: float = 50.0  # cancel frame -> terminal run_status
    first_token_ms: float = 5.0  # run.start -> first delta, one run at a time (p50)


@dataclass(frozen=True)
class Config:
    name: str
    # CPU per relayed delta, zero pacing: `cpu_levels` concurrent runs of `cpu_words` deltas,
    # as many runs as it takes to relay at least `cpu_min_deltas` deltas, `cpu_reps` times.
    cpu_levels: tuple[int, ...] = (1, 50, 200)
    cpu_words: int = 200
    cpu_min_deltas: int = 6_000
    cpu_reps: int = 5
    # The marginal cost of a delta: `cpu_marginal_runs` runs of `cpu_long_words` deltas minus
    # as many runs of one delta, `cpu_marginal_level` at a time.
    cpu_marginal_level: int = 10
    cpu_marginal_runs: int = 20
    cpu_long_words: int = 1000
    cpu_marginal_reps: int = 2
    # The same with paced deltas (each alone in its chunk and frame): `cpu_paced_level` runs
    # of `cpu_paced_words` deltas at `cpu_paced_tps`, once.
    cpu_paced_level: int = 50
    cpu_paced_words: int = 400
    cpu_paced_tps: float = 100.0
    # Added latency in a steady state: `lat_levels` connections each running paced runs
    # (`lat_tps` tokens/s, `lat_run_s` long) back to back, the first ones started evenly over
    # one run length; the deltas sent during the `lat_window_s` that follows are measured.
    # The baseline streams as many paced frames, started over `plain_ramp_s`. `lat_reps` times.
    lat_levels: tuple[int, ...] = (100, 300, 500)
    lat_tps: float = 30.0
    lat_run_s: float = 6.0
    lat_window_s: float = 3.0
    plain_ramp_s: float = 0.5
    lat_grace_s: float = 0.5  # after the window, for the deltas sent in it to arrive
    lat_reps: int = 2
    # The most paced runs with p99 under `search_p99_ms`: ascending levels, stop at the first miss.
    search_levels: tuple[int, ...] = (100, 200, 300, 500, 700, 1000)
    search_window_s: float = 2.5
    search_p99_ms: float = 50.0
    # Cancel: runs paced at lat_tps, each cancelled after a few deltas.
    cancel_runs: int = 40
    cancel_spread_s: float = 3.0  # the runs start (and are cancelled) spread over this time
    # First token: runs of one word, one at a time.
    first_token_runs: int = 100
    # Resume: a finished run of `resume_events` events, replayed to a fresh subscriber.
    resume_events: int = 10_000
    resume_reps: int = 5
    # Idle connections: RSS delta per connection after hello, each level on fresh servers.
    idle_levels: tuple[int, ...] = (2000, 5000)
    idle_fresh: bool = True  # each level on fresh server processes (False: the running ones)
    # Fan-out: one run of `fanout_words` deltas paced at `fanout_tps`, to `fanout_subs` subscribers.
    fanout_subs: int = 100
    fanout_words: int = 1000
    fanout_tps: float = 500.0
    fanout_reps: int = 3
    # Held logs: a full garbage collection with `gc_held_runs` finished runs of
    # `gc_held_events` events in the broker (bench/gcheld.py), `gc_held_reps` collections.
    gc_held_runs: int = 7800
    gc_held_events: int = 180
    gc_held_reps: int = 5
    targets: Targets = field(default_factory=Targets)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


FULL = Config("full")

QUICK = Config(
    "quick",
    cpu_levels=(1, 20),
    cpu_words=100,
    cpu_min_deltas=2000,
    cpu_reps=2,
    cpu_marginal_runs=10,
    cpu_long_words=500,
    cpu_marginal_reps=1,
    cpu_paced_level=20,
    cpu_paced_words=200,
    lat_levels=(50, 100),
    lat_run_s=3.0,
    lat_window_s=2.0,
    plain_ramp_s=0.5,
    lat_reps=1,
    search_levels=(50, 100, 200),
    search_window_s=2.0,
    cancel_runs=10,
    first_token_runs=30,
    cancel_spread_s=1.0,
    resume_events=2000,
    resume_reps=3,
    idle_levels=(300,),
    fanout_subs=20,
    fanout_words=200,
    fanout_tps=400.0,
    fanout_reps=2,
    gc_held_runs=1000,
)

TINY = Config(
    "tiny",
    cpu_levels=(2,),
    cpu_words=20,
    cpu_min_deltas=80,
    cpu_reps=1,
    cpu_marginal_level=2,
    cpu_marginal_runs=2,
    cpu_long_words=100,
    cpu_marginal_reps=1,
    cpu_paced_level=2,
    cpu_paced_words=20,
    lat_levels=(4,),
    lat_tps=50.0,
    lat_run_s=0.6,
    lat_window_s=0.5,
    plain_ramp_s=0.2,
    lat_grace_s=0.3,
    lat_reps=1,
    search_levels=(4,),
    search_window_s=0.4,
    cancel_runs=3,
    first_token_runs=5,
    cancel_spread_s=0.2,
    resume_events=200,
    resume_reps=1,
    idle_levels=(30,),
    idle_fresh=False,
    fanout_subs=4,
    fanout_words=30,
    fanout_tps=300.0,
    gc_held_runs=20,
    gc_held_events=20,
    gc_held_reps=1,
    fanout_reps=1,
)

CONFIGS = {"full": FULL, "quick": QUICK, "tiny": TINY}
