"""`python -m bench.run [--quick] [--full] [--only NAME ...]`: run the benchmarks, print a table.

Starts a sandbox process per scenario, runs floraq as the real CLI against it, and writes
every figure to ``bench/results/<utc time>.json`` (and ``latest.json``). See bench/README.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import harness, polling, scenarios
from bench import workers as bench_workers
from bench.harness import TIME_SCALE

RESULTS = Path(__file__).resolve().parent / "results"
SCENARIOS: dict[str, Callable[[Path, scenarios.Sizes], dict[str, Any]]] = {
    "makespan": scenarios.makespan,
    "overhead": scenarios.overhead,
    "scale": scenarios.scale,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke check")
    parser.add_argument(
        "--full", action="store_true", help="run the naive baseline on every row (adds ~6 min)"
    )
    parser.add_argument(
        "--no-baselines", action="store_true", help="skip the two baselines (floraq only)"
    )
    parser.add_argument(
        "--capacity", type=int, help="sandbox capacity in scenario 1 (diagnostic; default 50)"
    )
    parser.add_argument("--rows", type=int, help="rows in scenario 1 (diagnostic)")
    parser.add_argument("--overhead-rows", type=int, help="rows in scenario 3 (diagnostic)")
    parser.add_argument(
        "--only", nargs="+", choices=sorted([*SCENARIOS, "workers"]), help="these scenarios"
    )
    parser.add_argument(
        "--postgres",
        metavar="URL",
        help="PostgreSQL server for the workers scenario [default: $FLORAQ_TEST_POSTGRES;"
        " without one it is skipped]",
    )
    parser.add_argument("--workers-rows", type=int, help="rows in scenario 5 (diagnostic)")
    parser.add_argument("--out", type=Path, help="results JSON [default: bench/results/]")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    parser.add_argument(
        "--tree", type=Path, help="run the floraq client from this checkout (to measure a change)"
    )
    parser.add_argument(
        "--show", type=Path, metavar="JSON", help="print the table of an earlier results file"
    )
    parser.add_argument(
        "--polling",
        action="store_true",
        help="only the polling workloads (real speed and scaled; ~12 min)",
    )
    parser.add_argument(
        "--before",
        type=Path,
        metavar="TREE",
        help="with --polling: also run the client from this checkout, side by side",
    )
    parser.add_argument(
        "--scaled-only", action="store_true", help="with --polling: skip the real-speed workloads"
    )
    parser.add_argument(
        "--second-night",
        action="store_true",
        help="with --polling: measure each workload after a first, unmeasured run on its ledger",
    )
    args = parser.parse_args(argv)
    if args.polling:
        return _polling(args)
    if args.show is not None:
        shown = json.loads(args.show.read_text())
        if shown.get("mode") == "polling":
            print(polling.table(shown["workloads"], shown["clients"]))
            return 0
        shown["targets"] = targets(shown["scenarios"])
        print(table(shown))
        return 0
    if args.tree is not None:
        harness.use_tree(args.tree)
    sizes = scenarios.QUICK if args.quick else scenarios.FULL
    if args.full:
        sizes = dataclasses.replace(sizes, naive_sample=0)
    if args.capacity:
        sizes = dataclasses.replace(sizes, capacity=args.capacity)
    if args.rows:
        sizes = dataclasses.replace(sizes, makespan_rows=args.rows)
    if args.overhead_rows:
        sizes = dataclasses.replace(sizes, overhead_rows=args.overhead_rows)
    if args.no_baselines:
        sizes = dataclasses.replace(sizes, baselines=False)
    runners = dict(SCENARIOS)
    pg = bench_workers.postgres_url(args.postgres)
    if pg is not None:
        rows = args.workers_rows or (100 if args.quick else 2000)
        runners["workers"] = lambda folder, _: bench_workers.workers(folder, rows, pg)
    elif args.only and "workers" in args.only:
        parser.error("the workers scenario needs --postgres URL (or FLORAQ_TEST_POSTGRES)")
    names = args.only or list(runners)
    work = Path(tempfile.mkdtemp(prefix="floraq-bench-"))
    results: dict[str, Any] = {
        "machine": _machine(),
        "mode": "quick" if args.quick else "full" if args.full else "default",
        "time_scale": TIME_SCALE,
        "floraq_tree": str(args.tree.resolve()) if args.tree else str(harness.REPO),
        "sizes": dataclasses.asdict(sizes),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "scenarios": {},
    }
    t0 = time.perf_counter()
    try:
        for name in names:
            print(f"bench: {name} ...", file=sys.stderr, flush=True)
            folder = work / name
            folder.mkdir()
            started = time.perf_counter()
            results["scenarios"][name] = runners[name](folder, sizes)
            results["scenarios"][name]["bench_wall_s"] = round(time.perf_counter() - started, 1)
    finally:
        if args.keep:
            print(f"bench: scratch files kept in {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    results["total_wall_s"] = round(time.perf_counter() - t0, 1)
    results["machine"]["loadavg_after"] = os.getloadavg()
    results["targets"] = targets(results["scenarios"])
    out = args.out or RESULTS / time.strftime("%Y%m%dT%H%M%SZ.json", time.gmtime())
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    if args.out is None:
        (RESULTS / "latest.json").write_text(out.read_text())
    print(table(results))
    print(f"\nresults: {out}", file=sys.stderr)
    return 0


def _polling(args: argparse.Namespace) -> int:
    """The polling workloads, for this tree (``after``) and optionally ``--before TREE``."""
    trees: dict[str, Path | None] = {"after": args.tree}
    if args.before is not None:
        trees = {"before": args.before, **trees}
    work = Path(tempfile.mkdtemp(prefix="floraq-bench-polling-"))
    results: dict[str, Any] = {
        "machine": _machine(),
        "mode": "polling",
        "clients": list(trees),
        "trees": {k: str(v.resolve() if v else harness.REPO) for k, v in trees.items()},
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    t0 = time.perf_counter()
    try:
        results["second_night"] = args.second_night
        results["workloads"] = polling.run_all(
            work, trees, real=not args.scaled_only, second_night=args.second_night
        )
    finally:
        if args.keep:
            print(f"bench: scratch files kept in {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    results["total_wall_s"] = round(time.perf_counter() - t0, 1)
    results["machine"]["loadavg_after"] = os.getloadavg()
    out = args.out or RESULTS / time.strftime("polling-%Y%m%dT%H%M%SZ.json", time.gmtime())
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    m = results["machine"]
    print(
        f"floraq bench (polling), {m['cpus']} CPUs, load {m['loadavg_before'][0]:.2f} before"
        f" / {m['loadavg_after'][0]:.2f} after, {results['total_wall_s']} s in all"
    )
    print(polling.table(results["workloads"], results["clients"]))
    print(f"\nresults: {out}", file=sys.stderr)
    return 0


def _machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpus": os.cpu_count(),
        "cpu_model": cpu,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "loadavg_before": os.getloadavg(),
    }


# -- targets ---------------------------------------------------------------------------------


def targets(found: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target of issue 6 with the measured figure and whether it is met."""
    rows: list[dict[str, Any]] = []

    def add(name: str, value: float | None, goal: str, met: bool | None) -> None:
        rows.append({"target": name, "measured": value, "goal": goal, "met": met})

    if "makespan" in found:
        s = found["makespan"]
        f = s["floraq"]
        add(
            "makespan / ideal",
            f["makespan_over_ideal"],
            "<= 1.10",
            f["makespan_over_ideal"] <= 1.10,
        )
        for key, label, goal in (
            ("thread_pool_8", "(b) 8 threads", 5),
            ("naive_loop", "(a) naive", 50),
        ):
            if key not in s:
                continue
            speedup = s[key]["floraq_speedup"]
            add(f"speed-up over {label}", speedup, f">= {goal}x", speedup >= goal)
        polls = f["requests"]["per_row"]["poll"]
        add("polls per run", polls, "<= 3", polls <= 3)
        p95 = f["detection_latency"].get("p95_unscaled_s")
        add("p95 detection latency (unscaled s)", p95, "<= 5", p95 is not None and p95 <= 5)
    if "overhead" in found:
        cpu = found["overhead"]["floraq"]["cpu_ms_per_row"]
        add("client CPU ms per row", cpu, "<= 2", cpu <= 2)
    if "workers" in found:
        ratio = found["workers"]["by_workers"]["4"]["speedup_over_1"]
        add("4 workers / 1 worker, rows/s", ratio, ">= 3", ratio >= 3)
    if "scale" in found:
        s = found["scale"]
        big = s["by_size"][str(s["rows"])]
        add(
            f"plan time, {s['rows']} rows (s)",
            big["plan"]["wall_s"],
            "<= 15",
            big["plan"]["wall_s"] <= 15,
        )
        peak = max(big["plan"]["peak_rss_mb"], big["submit_no_wait"]["peak_rss_mb"])
        add(f"peak RSS, {s['rows']} rows (MB)", peak, "<= 250", peak <= 250)
        for what in ("plan", "submit_no_wait"):
            slope = s[f"{what}_rss_kb_per_1000_rows"]
            # Flat: the extra 90 % of the rows add under 10 % of the small run's peak.
            small = s["by_size"][str(s["rows"] // 10)][what]["peak_rss_mb"]
            grew = slope * (s["rows"] * 0.9 / 1000) / 1024
            add(f"{what} RSS growth (KB per 1000 rows)", slope, "flat (< 10 %)", grew < 0.1 * small)
    return rows


# -- the table -----------------------------------------------------------------------------------


def table(results: dict[str, Any]) -> str:
    """A plain-text summary: one block per scenario, then the targets."""
    lines: list[str] = []
    m = results["machine"]
    lines.append(
        f"floraq bench ({results['mode']}), {m['cpus']} CPUs ({m['cpu_model']}), "
        f"load {m['loadavg_before'][0]:.2f} before / {m['loadavg_after'][0]:.2f} after, "
        f"time scale {results['time_scale']} (x{1 / results['time_scale']:.0f} = unscaled), "
        f"{results['total_wall_s']} s in all"
    )
    found = results["scenarios"]
    if "makespan" in found:
        s = found["makespan"]
        lines += [
            "",
            f"1-2. makespan and requests: {s['rows']} rows, 5-60 s runs, "
            f"capacity {s['sandbox']['capacity']}; "
            f"ideal {s['ideal_s']} s ({s['ideal_unscaled_s']} s unscaled)",
        ]
        head = f"  {'':34}{'floraq':>12}{'8 threads':>12}{'naive':>12}"
        lines.append(head)
        cols = [s["floraq"], s.get("thread_pool_8", {}), s.get("naive_loop", {})]

        def row(label: str, get: Callable[[dict[str, Any]], Any]) -> None:
            cells = []
            for col in cols:
                try:
                    value = get(col)
                except (KeyError, TypeError):
                    value = None
                cells.append(
                    "-"
                    if value is None
                    else f"{value:g}"
                    if isinstance(value, float)
                    else str(value)
                )
            lines.append(f"  {label:34}" + "".join(f"{c:>12}" for c in cells))

        row("makespan (s)", lambda c: c["makespan_s"])
        row("makespan / ideal", lambda c: c["makespan_over_ideal"])
        row("  runs phase only / ideal", lambda c: c["runs_phase_over_ideal"])
        row("floraq speed-up over it", lambda c: c.get("floraq_speedup"))
        row("requests per row: submit", lambda c: c["requests"]["per_row"]["submit"])
        row("requests per row: poll", lambda c: c["requests"]["per_row"]["poll"])
        row("requests per row: download", lambda c: c["requests"]["per_row"]["download"])
        row("requests per row: total", lambda c: c["requests"]["per_row"]["total"])
        row("detection p50 (ms real)", lambda c: round(1000 * c["detection_latency"]["p50_s"], 1))
        row("detection p95 (ms real)", lambda c: round(1000 * c["detection_latency"]["p95_s"], 1))
        row("detection p50 (s unscaled)", lambda c: c["detection_latency"]["p50_unscaled_s"])
        row("detection p95 (s unscaled)", lambda c: c["detection_latency"]["p95_unscaled_s"])
        row("client CPU (s)", lambda c: c["cpu_s"])
        naive = s.get("naive_loop", {})
        if "extrapolated" in naive:
            lines.append(f"  naive loop makespan extrapolated {naive['extrapolated']}")
        phases = s["floraq"]["phases_s"]
        lines.append(
            f"  floraq phases (s): start to first run {phases['start_to_first_run']}, runs "
            f"{phases['first_run_to_last_completion']}, last completion to exit "
            f"{phases['last_completion_to_exit']}"
        )
    if "overhead" in found:
        f = found["overhead"]["floraq"]
        lines += [
            "",
            f"3. client overhead: {found['overhead']['rows']} instant runs",
            f"  {f['rows_per_s']} rows/s end to end ({f['wall_s']} s), client CPU "
            f"{f['cpu_ms_per_row']} ms/row, server CPU {f['server_cpu_ms_per_row']} ms/row, "
            f"{f['ledger_commits_per_s']} ledger commits/s ({f['ledger_commits_per_row']}/row), "
            f"peak RSS {f['peak_rss_mb']} MB",
        ]
    if "scale" in found:
        s = found["scale"]
        lines += ["", "4. scale: CSV manifest"]
        lines.append(
            f"  {'rows':>8}{'plan s':>9}{'plan MB':>9}{'submit s':>10}{'submit MB':>11}"
            f"{'ledger MB':>11}{'B/row':>7}"
        )
        for rows, b in s["by_size"].items():
            lines.append(
                f"  {rows:>8}{b['plan']['wall_s']:>9}{b['plan']['peak_rss_mb']:>9}"
                f"{b['submit_no_wait']['wall_s']:>10}{b['submit_no_wait']['peak_rss_mb']:>11}"
                f"{b['ledger_mb']:>11}{b['ledger_bytes_per_row']:>7}"
            )
    if "workers" in found:
        w = found["workers"]
        lines += [
            "",
            f"5. workers: {w['rows']} instant runs on one PostgreSQL batch, {w['cpus']} CPUs",
        ]
        lines.append(f"  {'workers':>8}{'wall s':>9}{'rows/s':>9}{'x 1':>7}{'CPU ms/row':>12}")
        for n, b in w["by_workers"].items():
            lines.append(
                f"  {n:>8}{b['wall_s']:>9}{b['rows_per_s']:>9}{b['speedup_over_1']:>7}"
                f"{b['client_cpu_ms_per_row']:>12}"
            )
    lines += ["", "targets:"]
    for t in results["targets"]:
        mark = {True: "met", False: "MISSED", None: "?"}[t["met"]]
        lines.append(f"  {t['target']:44}{t['measured']!s:>10}  {t['goal']:>14}  {mark}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
