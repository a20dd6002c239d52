"""The benchmark suite runs end to end at toy sizes and reports every figure with numbers.

No timing is asserted (the machine is shared and noisy): only that `python -m bench --tiny`
starts its servers, measures each figure against its baseline, stops everything, and writes a
JSON whose table has a number on both sides of every row, plus the Markdown and the plots.
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from bench.__main__ import FIGURES as ALL_FIGURES

ROOT = Path(__file__).resolve().parents[2]
FIGURES = set(ALL_FIGURES)


@pytest.mark.timeout(180)
def test_tiny_run_reports_every_figure(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--tiny", "--out", str(tmp_path), "--deadline", "150"],
        cwd=ROOT,
        capture_output=True,
        timeout=170,
        check=False,
    )
    assert done.returncode == 0, done.stdout.decode()[-3000:] + done.stderr.decode()[-3000:]
    (json_path,) = tmp_path.glob("*-tiny.json")
    results = orjson.loads(json_path.read_bytes())

    assert set(results["figures"]) == FIGURES
    rows = results["table"]
    covered = {
        "CPU per relayed delta": False,
        "marginal CPU per delta": False,
        "fixed CPU per run": False,
        "Added latency p50": False,
        "Added latency p99": False,
        "Most paced runs": False,
        "Cancel -> terminal run_status p99": False,
        "Cancel -> upstream request closed p99": False,
        "Resume a finished": False,
        "RSS per idle connection": False,
        "Fan-out to 4 subscribers: first -> last": False,
        "Fan-out to 4 subscribers: CPU per delivered frame": False,
        "Full garbage collection, 400 events": False,
    }
    for row in rows:
        for side in ("gateway", "baseline"):
            value = row[side]
            assert isinstance(value, int | float) and not math.isnan(value), row
        for name in covered:
            if name in row["figure"]:
                covered[name] = True
    assert all(covered.values()), [name for name, seen in covered.items() if not seen]

    figures = results["figures"]
    assert figures["cpu_per_delta"]["levels"]["2"]["reps"][0]["gateway"]["completed"] == 4
    assert figures["latency"]["levels"]["4"]["reps"][0]["gateway"]["n"] > 0
    assert figures["cancel"]["cancelled"] == 3
    first = figures["first_token"]
    assert first["runs"] == 5 and first["gateway"]["n"] == 5 and first["sdk"]["n"] == 5
    assert 0 < first["sdk"]["p50"] and 0 < first["gateway"]["p50"]
    assert figures["resume"]["events"] == 200
    held = figures["gc_held"]
    assert held["held_events"] == 400 and held["tracked_sealed"] > 0 and held["lists_ms"] > 0
    assert (tmp_path / "latest.md").read_text().count("\n| ") >= len(rows)
    for plot in ("latency_vs_concurrency.png", "cpu_per_delta_vs_concurrency.png"):
        assert (tmp_path / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
