"""From a run's results to `bench/results/<timestamp>.json`, `latest.md` and the PNG plots.

`table(results)` builds the rows (figure, gateway value, baseline, ratio, target, met?) that
both the JSON and the Markdown carry; every row's `gateway` and `baseline` is a number (NaN
only when a measurement produced no sample, which the smoke test catches).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import orjson

from bench.stats import fmt, fmt_spread

RESULTS = Path(__file__).resolve().parent / "results"
NOISY_CORES = 0.5  # other tenants' CPU (cores) above which a timing figure is flagged


def others(*loads: dict[str, float] | None) -> float:
    """The most CPU other processes used during any of these measurement windows."""
    return max((load.get("others", 0.0) for load in loads if load), default=0.0)


def _row(
    figure: str,
    gateway: dict[str, Any] | float,
    baseline: dict[str, Any] | float,
    *,
    unit: str,
    baseline_name: str,
    target: str = "-",
    met: bool | None = None,
    digits: int = 1,
    noise: float | None = None,
    ratio: float | None = None,
) -> dict[str, Any]:
    """One table row. `ratio` defaults to the gateway's median over the baseline's; a figure
    judged on the median of per-repeat (paired) ratios passes that one, so that the table
    shows the number the target was checked against."""
    g = gateway if isinstance(gateway, dict) else {"median": gateway, "runs": [gateway]}
    b = baseline if isinstance(baseline, dict) else {"median": baseline, "runs": [baseline]}
    gv, bv = float(g["median"]), float(b["median"])
    if ratio is None:
        ratio = gv / bv if bv and not math.isnan(bv) and not math.isnan(gv) else math.nan
    return {
        "figure": figure,
        "unit": unit,
        "gateway": gv,
        "gateway_text": fmt_spread(g, digits),
        "baseline": bv,
        "baseline_text": fmt_spread(b, digits),
        "baseline_name": baseline_name,
        "ratio": ratio,
        "target": target,
        "met": met,
        "others_cores": noise,
        "noisy": noise is not None and noise > NOISY_CORES,
    }


def _pct(s: dict[str, Any]) -> dict[str, Any]:
    return {k: ([x * 100 for x in v] if k == "runs" else v * 100) for k, v in s.items()}


def _quantile_rows(
    name: str,
    gateway: dict[str, Any],
    baseline: dict[str, Any],
    baseline_name: str,
    noise: Any,
    target: tuple[str, float] | None = None,
) -> list[Any]:
    """p50 and p99 rows (ms) of a latency figure; `target`: (quantile, ms it must stay under)."""
    out = []
    for q in ("p50", "p99"):
        held = target is not None and target[0] == q
        out.append(
            _row(
                f"{name} {q}",
                gateway[q],
                baseline[q],
                unit="ms",
                baseline_name=baseline_name,
                digits=2,
                target=f"< {target[1]:g} ms" if held and target else "-",
                met=(gateway[q] < target[1]) if held and target else None,
                noise=noise,
            )
        )
    return out


def table(results: dict[str, Any]) -> list[dict[str, Any]]:
    figs = results["figures"]
    targets = results["meta"]["config"]["targets"]
    rows: list[dict[str, Any]] = []
    cpu = figs.get("cpu_per_delta")
    if cpu:
        for level, r in cpu["levels"].items():
            ratio = r["ratio"]["median"]
            rows.append(
                _row(
                    f"CPU per relayed delta, {level} concurrent run(s) of {cpu['words_per_run']} deltas",
                    r["gateway_us"],
                    r["floor_us"],
                    unit="us",
                    baseline_name="floor: SDK parse (a) + plain ws (b)",
                    target=f"<= {targets['cpu_ratio']}x floor",
                    met=ratio <= targets["cpu_ratio"],
                    ratio=ratio,
                )
            )
        m = cpu.get("marginal")
        if m:
            rows.append(
                _row(
                    f"  marginal CPU per delta ({m['level']} concurrent runs of {m['long_words']} "
                    "minus runs of 1)",
                    m["gateway_us"],
                    m["floor_us"],
                    unit="us",
                    baseline_name="SDK marginal + plain ws per frame",
                    target=f"<= {targets['cpu_ratio']}x floor",
                    met=m["ratio"]["median"] <= targets["cpu_ratio"],
                    ratio=m["ratio"]["median"],
                )
            )
        pc = cpu.get("paced")
        if pc:
            rows.append(
                _row(
                    f"  CPU per paced delta ({pc['level']} runs at {pc['tps']:g} tok/s; "
                    "runs' fixed cost removed)",
                    pc["gateway_us"],
                    pc["floor_us"],
                    unit="us",
                    baseline_name="SDK on the same paced streams + plain ws paced frames",
                    target=f"<= {targets['cpu_ratio']}x floor",
                    met=pc["ratio"] <= targets["cpu_ratio"],
                )
            )
        for level, r in cpu["levels"].items():
            rows.append(
                _row(
                    f"  fixed CPU per run (runs of 1 delta), {level} concurrent",
                    r["fixed_gateway_ms_per_run"],
                    r["fixed_sdk_ms_per_run"],
                    unit="ms",
                    baseline_name="SDK request alone",
                    digits=2,
                )
            )
    lat = figs.get("latency")
    if lat:
        for level, r in lat["levels"].items():
            at_target = int(level) == targets["p99_at"]
            noise = others(*(x[side]["load"] for x in r["reps"] for side in ("gateway", "plain")))
            rows.append(
                _row(
                    f"Added latency p50, {level} runs at {lat['tps']:g} tok/s",
                    r["gateway_p50"],
                    r["plain_p50"],
                    unit="ms",
                    baseline_name="plain ws, same frames and pace",
                    digits=2,
                    noise=noise,
                )
            )
            rows.append(
                _row(
                    f"Added latency p99, {level} runs at {lat['tps']:g} tok/s",
                    r["gateway_p99"],
                    r["plain_p99"],
                    unit="ms",
                    baseline_name="plain ws, same frames and pace",
                    digits=2,
                    target=f"< {targets['p99_ms']:g} ms" if at_target else "-",
                    met=(
                        r["gateway_p99"]["median"] < targets["p99_ms"]
                        and r["gateway_coverage"]["median"] >= 0.95
                    )
                    if at_target
                    else None,
                    noise=noise,
                )
            )
            rows.append(
                _row(
                    f"  paced deltas sent in the window / due ({level} streams x {lat['tps']:g}/s)",
                    _pct(r["gateway_coverage"]),
                    _pct(r["plain_coverage"]),
                    unit="%",
                    baseline_name="plain ws",
                    target=">= 95%",
                    met=r["gateway_coverage"]["median"] >= 0.95,
                    noise=noise,
                    digits=0,
                )
            )
            rows.append(
                _row(
                    f"  run.start -> first delta p99, {level} runs",
                    r["gateway_first_delta_p99"],
                    r["plain_first_delta_p99"],
                    unit="ms",
                    baseline_name="plain ws: stream request -> first frame",
                    noise=noise,
                )
            )
    search = figs.get("max_paced_runs")
    if search:
        g, p = search["gateway"], search["plain"]
        rows.append(
            _row(
                f"Most paced runs with p99 < {search['bound_p99_ms']:g} ms and >= 95% of deltas sent "
                f"(levels {'/'.join(map(str, search['levels']))})",
                float(g["max_runs"]),
                float(p["max_runs"]),
                unit="runs",
                baseline_name="plain ws",
                target=f">= {targets['max_runs']}",
                met=g["max_runs"] >= targets["max_runs"],
                digits=0,
                noise=search.get("others_cores"),
            )
        )
    capacity = cpu_capacity(results)
    if capacity:
        rows.append(
            _row(
                f"CPU-bound capacity: paced runs one core carries ({capacity['tps']:g} tok/s, runs of "
                f"{capacity['run_s']:g} s; from the CPU figures, noise-free upper bound)",
                capacity["gateway"],
                capacity["floor"],
                unit="runs",
                baseline_name="floor (a)+(b) costs",
                target=f">= {targets['max_runs']}",
                met=capacity["gateway"] >= targets["max_runs"],
                digits=0,
            )
        )
    cancel = figs.get("cancel")
    if cancel:
        noise = others(cancel.get("load"))
        rows += _quantile_rows(
            "Cancel -> terminal run_status",
            cancel["to_terminal"],
            cancel["baseline_round_trip"],
            "plain ws round trip",
            noise,
            target=("p99", targets["cancel_p99_ms"]),
        )
        rows += _quantile_rows(
            "Cancel -> upstream request closed",
            cancel["to_upstream_closed"],
            cancel["baseline_sdk_close"],
            "SDK stream.close() alone",
            noise,
        )
    first = figs.get("first_token")
    if first:
        rows += _quantile_rows(
            "First token, one run at a time: run.start -> first delta",
            first["gateway"],
            first["sdk"],
            "SDK alone: create() -> first delta, same model",
            others(first.get("load")),
            target=("p50", targets["first_token_ms"]),
        )
    resume = figs.get("resume")
    if resume:
        rows.append(
            _row(
                f"Resume a finished {resume['events']:,}-event run (subscribe after=0 -> last event)",
                resume["gateway_ms"],
                resume["plain_ms"],
                unit="ms",
                baseline_name="plain ws, same frames",
                noise=others(*(r["gateway"].get("load") for r in resume["reps"])),
            )
        )
    held = figs.get("gc_held")
    if held:
        rows.append(
            _row(
                f"Full garbage collection, {held['held_events']:,} events of finished runs held in memory",
                held["sealed_ms"],
                held["lists_ms"],
                unit="ms",
                baseline_name="the same frames and events kept in lists",
                digits=2,
            )
        )
    idle = figs.get("idle_rss")
    if idle:
        for n, r in idle["levels"].items():
            kb = r["gateway"]["kb_per_conn"]
            rows.append(
                _row(
                    f"RSS per idle connection (after hello), {int(n):,} connections",
                    kb,
                    r["plain"]["kb_per_conn"],
                    unit="KB",
                    baseline_name="plain ws",
                    target=f"< {targets['idle_kb']:g} KB",
                    met=kb < targets["idle_kb"],
                )
            )
        for n, r in idle["levels"].items():
            rows.append(
                _row(
                    f"Connection set-up rate (connect + hello), up to {int(n):,} connections",
                    r["gateway"]["conns_per_s"],
                    r["plain"]["conns_per_s"],
                    unit="conn/s",
                    baseline_name="plain ws",
                    digits=0,
                )
            )
    fan = figs.get("fanout")
    if fan:
        rows.append(
            _row(
                f"Fan-out to {fan['subscribers']} subscribers: first -> last terminal frame",
                fan["gateway_spread_ms"],
                fan["plain_spread_ms"],
                unit="ms",
                baseline_name="plain ws broadcast",
                digits=2,
                noise=others(*(x[side]["load"] for x in fan["reps"] for side in ("gateway", "plain"))),
            )
        )
        rows.append(
            _row(
                f"Fan-out to {fan['subscribers']} subscribers: CPU per delivered frame",
                fan["gateway_us_per_frame"],
                fan["plain_us_per_frame"],
                unit="us",
                baseline_name="plain ws broadcast",
            )
        )
    return rows


def cpu_capacity(results: dict[str, Any]) -> dict[str, float] | None:
    """Paced runs one core could carry if CPU were the only limit: 1 / (tps * cost of a paced
    delta + fixed cost of a run / run length), with the costs measured by fig_cpu (the fixed
    cost at its highest level), for the gateway and for the floor."""
    figs = results["figures"]
    cpu, lat = figs.get("cpu_per_delta"), figs.get("latency")
    if not cpu or not cpu.get("marginal") or not lat:
        return None
    top = cpu["levels"][max(cpu["levels"], key=int)]
    tps, run_s = float(lat["tps"]), float(lat["run_s"])
    if cpu.get("paced"):  # what a paced delta costs, each alone in its chunk and frame
        per_gw, per_floor = cpu["paced"]["gateway_us"], cpu["paced"]["floor_us"]
    else:
        per_gw, per_floor = cpu["marginal"]["gateway_us"]["median"], cpu["marginal"]["floor_us"]["median"]
    gw = tps * per_gw / 1e6 + top["fixed_gateway_ms_per_run"] / 1e3 / run_s
    floor = tps * per_floor / 1e6 + top["fixed_sdk_ms_per_run"] / 1e3 / run_s
    return {
        "tps": tps,
        "run_s": run_s,
        "gateway": 1 / gw if gw > 0 else math.nan,
        "floor": 1 / floor if floor > 0 else math.nan,
    }


def markdown(results: dict[str, Any], rows: list[dict[str, Any]], json_name: str) -> str:
    meta = results["meta"]
    cfg = meta["config"]
    lines = [
        "# Benchmark results (latest run)",
        "",
        f"Run `{cfg['name']}` at {meta['timestamp']} in {meta.get('duration_s', '?')} s on "
        f"{meta['machine']['cpus']} CPUs ({meta['machine']['platform']}, "
        f"Python {meta['machine']['python']}); "
        f"load average at start {', '.join(f'{x:.2f}' for x in meta['machine']['load_avg_at_start'])}. "
        f"Raw data: [`{json_name}`]({json_name}). Method: [`docs/bench.md`](../../docs/bench.md).",
        "",
        _source(meta),
        "",
        "Values are medians over repeats, with [min-max] when repeated. The baseline is measured in "
        "the same run, interleaved with the gateway's measurements; ratio = gateway / baseline.",
        "",
        "| figure | gateway | baseline | ratio | target | met? |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        met = "-" if r["met"] is None else ("yes" if r["met"] else "**NO**")
        if r["noisy"]:
            met += f" (noisy: {r['others_cores']:.1f} cores used by others)"
        lines.append(
            f"| {r['figure']} ({r['unit']}) | {r['gateway_text']} "
            f"| {r['baseline_text']} ({r['baseline_name']}) "
            f"| {fmt(r['ratio'], 2)} | {r['target']} | {met} |"
        )
    lines += [
        "",
        f"*noisy*: during that measurement, other processes on this shared machine used more than "
        f"{NOISY_CORES} of its 2 cores (see below); such a timing measures the machine as much as "
        "the gateway, and its baseline suffered the same. CPU-time and memory figures are not "
        "flagged: they hold under load.",
    ]
    notes = list(results.get("notes", []))
    notes += [f"figure `{name}` failed: {error}" for name, error in results.get("failed", {}).items()]
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    lines += ["", "## Who used the CPU (share of one core, during each measurement window)", ""]
    lines += ["| measurement | gateway | offline model | plain ws | load generator | rest of the machine |"]
    lines += ["|---|---|---|---|---|---|"]
    for name, load in loads(results):
        lines.append(
            f"| {name} | {load.get('gateway', 0):.2f} | {load.get('model', 0):.2f} "
            f"| {load.get('plain', 0):.2f} "
            f"| {load.get('client', 0):.2f} | {load.get('others', 0):.2f} |"
        )
    lines += [
        "",
        "The machine has 2 cores, shared by the gateway, the offline model, the load generator and "
        "other tenants: when their sum nears 2, latency figures measure the machine, not the gateway.",
        "",
        "![latency](latency_vs_concurrency.png)",
        "",
        "![cpu](cpu_per_delta_vs_concurrency.png)",
        "",
    ]
    return "\n".join(lines)


def _source(meta: dict[str, Any]) -> str:
    src = meta.get("source") or {}
    if src.get("measured", "work tree") != "work tree":
        return f"Gateway measured: commit `{src['measured'][:12]}` (exported with git archive)."
    dirty = src.get("dirty_files") or []
    state = f"with {len(dirty)} uncommitted file(s) in gateway/ or protocol/" if dirty else "clean"
    return f"Gateway measured: the work tree at `{str(src.get('head', '?'))[:12]}`, {state}."


def loads(results: dict[str, Any]) -> list[tuple[str, dict[str, float]]]:
    figs = results["figures"]
    out: list[tuple[str, dict[str, float]]] = []
    for level, r in figs.get("cpu_per_delta", {}).get("levels", {}).items():
        out.append((f"CPU per delta, {level} run(s), gateway (rep 1)", r["reps"][0]["gateway"]["load"]))
    for level, r in figs.get("latency", {}).get("levels", {}).items():
        out.append((f"latency, {level} paced runs, gateway (rep 1)", r["reps"][0]["gateway"]["load"]))
        out.append((f"latency, {level} paced runs, plain ws (rep 1)", r["reps"][0]["plain"]["load"]))
    if "cancel" in figs:
        out.append(("cancel", figs["cancel"]["load"]))
    if "first_token" in figs:
        out.append(("first token", figs["first_token"]["load"]))
    if "fanout" in figs:
        out.append(("fan-out, gateway (rep 1)", figs["fanout"]["reps"][0]["gateway"]["load"]))
    return out


def plots(results: dict[str, Any], out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made: list[Path] = []
    figs = results["figures"]
    targets = results["meta"]["config"]["targets"]
    lat = figs.get("latency")
    search = figs.get("max_paced_runs")
    if lat or search:
        fig, ax = plt.subplots(figsize=(8, 6))
        for side, color in (("gateway", "tab:red"), ("plain", "tab:blue")):
            points: dict[int, dict[str, Any]] = {}
            for level, r in (lat or {}).get("levels", {}).items():
                points[int(level)] = {"p50": r[f"{side}_p50"], "p99": r[f"{side}_p99"]}
            for level, p99 in (search or {}).get(side, {}).get("p99_by_level", {}).items():
                points.setdefault(int(level), {"p99": {"median": p99, "min": p99, "max": p99}})
            xs = sorted(points)
            for q, style in (("p50", "--"), ("p99", "-")):
                qx = [x for x in xs if q in points[x]]
                med = [max(points[x][q]["median"], 1e-3) for x in qx]
                low = [m - max(points[x][q]["min"], 1e-3) for m, x in zip(med, qx, strict=True)]
                high = [max(points[x][q]["max"], 1e-3) - m for m, x in zip(med, qx, strict=True)]
                name = "gateway" if side == "gateway" else "plain ws (baseline)"
                ax.errorbar(
                    qx, med, yerr=[low, high], fmt="o" + style, color=color, capsize=3, label=f"{name} {q}"
                )
        ax.axhline(
            targets["p99_ms"], color="gray", linestyle=":", label=f"target p99 {targets['p99_ms']:g} ms"
        )
        ax.axvline(targets["p99_at"], color="gray", linestyle=":", alpha=0.5)
        if search:
            bound = search["bound_p99_ms"]
            ax.axhline(bound, color="black", linestyle="-.", alpha=0.5, label=f"search bound {bound:g} ms")
        ax.set_yscale("log")
        ax.set_xlabel(f"concurrent runs paced at {(lat or {}).get('tps', 30):g} tok/s")
        ax.set_ylabel("added latency (ms): client receive - model send")
        ax.set_title("Added latency vs concurrency (median of repeats, bars min-max)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=3)
        path = out_dir / "latency_vs_concurrency.png"
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        made.append(path)
    cpu = figs.get("cpu_per_delta")
    if cpu:
        levels = list(cpu["levels"])
        rows = [cpu["levels"][k] for k in levels]
        x = list(range(len(levels)))
        fig, ax = plt.subplots(figsize=(8, 6))
        w = 0.38

        def err(key: str) -> tuple[list[float], list[list[float]]]:
            med = [r[key]["median"] for r in rows]
            return med, [
                [m - r[key]["min"] for m, r in zip(med, rows, strict=True)],
                [r[key]["max"] - m for m, r in zip(med, rows, strict=True)],
            ]

        g, g_err = err("gateway_us")
        a, _ = err("floor_a_us")
        b, _ = err("floor_b_us")
        ax.bar([i - w / 2 for i in x], g, w, yerr=g_err, capsize=3, color="tab:red", label="gateway")
        # the part of the gateway's cost that is the fixed cost of its runs
        fixed = [r["fixed_gateway_ms_per_run"] * 1e3 / cpu["words_per_run"] for r in rows]
        ax.bar(
            [i - w / 2 for i in x],
            [min(f, gv) for f, gv in zip(fixed, g, strict=True)],
            w * 0.5,
            color="darkred",
            label="of which fixed per-run cost (runs of 1 delta) / deltas per run",
        )
        ax.bar([i + w / 2 for i in x], a, w, color="tab:orange", label="floor (a): anthropic SDK parse")
        ax.bar([i + w / 2 for i in x], b, w, bottom=a, color="tab:blue", label="floor (b): plain ws writes")
        ratio = targets["cpu_ratio"]
        for i, (fa, fb) in enumerate(zip(a, b, strict=True)):
            ax.plot([i - w, i + w], [ratio * (fa + fb)] * 2, color="black", linestyle=":")
        ax.plot([], [], color="black", linestyle=":", label=f"target: {ratio}x floor")
        ax.set_xticks(x, [f"{lv} concurrent" for lv in levels])
        ax.set_ylabel("CPU us per relayed delta")
        ax.set_title(
            f"Gateway CPU per delta vs floor (runs of {cpu['words_per_run']} deltas, unpaced; bars min-max)"
        )
        ax.grid(True, axis="y", alpha=0.3)
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=2)
        path = out_dir / "cpu_per_delta_vs_concurrency.png"
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        made.append(path)
    return made


def write(results: dict[str, Any], out_dir: Path = RESULTS) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = table(results)
    results["table"] = rows
    stamp = time.strftime("%Y%m%d-%H%M%S")
    json_path = out_dir / f"{stamp}-{results['meta']['config']['name']}.json"
    json_path.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))
    md_path = out_dir / "latest.md"
    md_path.write_text(markdown(results, rows, json_path.name))
    paths = {"json": json_path, "markdown": md_path}
    for p in plots(results, out_dir):
        paths[p.stem] = p
    return paths
