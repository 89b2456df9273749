"""`python -m bench.million [--rows N] [--downloaded-rows N]`: the million-row figures.

A benchmark, not a test (minutes at a million rows). Against a sandbox process, as the
real CLI (``bench.child``), it measures:

- `plan` of an N-row CSV job: wall, CPU, peak RSS;
- `submit --no-wait --max-cost 0` of it: validate + queue every row, then the runner
  stops at the cap before any POST (so this is the queueing, not N POSTs);
- the ledger's size after that, as the user sees it (file + WAL + shm) and after VACUUM;
- `floraq status` and `status --json` on that N-row ledger (wall of the whole command);
- bytes per row of a ledger whose batch was downloaded end to end (``--downloaded-rows``,
  instant runs), as a file and after VACUUM.

Each figure goes to stdout as a table and to ``bench/results/million-<utc>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.harness import ChildRun, Sandbox, disk_bytes, run_floraq, write_csv_manifest

RESULTS = Path(__file__).resolve().parent / "results"
TARGETS = {"plan_s": 15.0, "queue_s": 60.0, "peak_rss_mb": 100.0, "bytes_per_row": 600.0}


def _figures(run: ChildRun) -> dict[str, Any]:
    return {
        "exit_code": run.exit_code,
        "wall_s": round(run.wall, 2),
        "cpu_s": round(run.cpu, 2),
        "peak_rss_mb": round(run.max_rss_mb, 1),
    }


def _sizes(ledger: Path, rows: int) -> dict[str, Any]:
    """Bytes per row as found on disk, then after VACUUM (of a copy: the ledger stays)."""
    found = disk_bytes(ledger)
    conn = sqlite3.connect(ledger)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    copy = ledger.with_name("vacuumed.db")
    copy.unlink(missing_ok=True)
    conn.execute("VACUUM INTO ?", (str(copy),))
    by_table = {
        name: size
        for name, size in conn.execute(
            "SELECT name, SUM(pgsize) FROM dbstat GROUP BY name ORDER BY 2 DESC LIMIT 8"
        )
    }
    conn.close()
    vacuumed = copy.stat().st_size
    copy.unlink()
    return {
        "rows": rows,
        "file_mb": round(found / 2**20, 1),
        "bytes_per_row": round(found / rows),
        "vacuumed_bytes_per_row": round(vacuumed / rows),
        "bytes_per_row_by_table": {k: round(v / rows) for k, v in by_table.items()},
    }


def _status(folder: Path, sandbox: Sandbox, ledger: Path) -> dict[str, Any]:
    """The best of three `floraq status` (and `--json`) runs: wall of the whole command."""
    found: dict[str, Any] = {}
    for label, args in (("status", ["status"]), ("status_json", ["status", "--json"])):
        runs = [run_floraq(args, cwd=folder, sandbox=sandbox, ledger=ledger) for _ in range(3)]
        found[label] = {"best_wall_s": round(min(r.wall for r in runs), 3),
                        "exit_code": runs[0].exit_code}  # fmt: skip
    found["in_process_s"] = _status_in_process(ledger)
    return found


def _status_in_process(ledger: Path) -> float:
    """The best of three reads of what `status` shows, in this process (no start-up)."""
    from floraq.ledger import open_ledger_readonly
    from floraq.review import status_of

    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        led = open_ledger_readonly(ledger)
        assert led is not None
        status_of(led, led.batch_names())
        led.close()
        best = min(best, time.perf_counter() - started)
    return round(best, 3)


def measure(work: Path, rows: int, downloaded_rows: int) -> dict[str, Any]:
    """Every figure of the module docstring, in one sandbox."""
    knobs = {"seed": 14, "time_scale": 0.01, "duration": (0.0, 0.0), "capacity": 200,
             "balance": 1e9}  # fmt: skip
    result: dict[str, Any] = {"rows": rows}
    with Sandbox(work, **knobs) as sandbox:
        big = work / "big"
        big.mkdir()
        manifest = write_csv_manifest(big / "jobs.yaml", batch="million", rows=rows)
        ledger = big / "state" / "floraq.db"
        result["plan"] = _figures(
            run_floraq(["plan", str(manifest)], cwd=big, sandbox=sandbox, ledger=ledger)
        )
        queue = ["submit", "--no-wait", "--max-cost", "0", str(manifest)]
        result["queue"] = _figures(
            run_floraq(queue, cwd=big, sandbox=sandbox, ledger=ledger, timeout=7200)
        )
        result["queued_ledger"] = _sizes(ledger, rows)
        result["status"] = _status(big, sandbox, ledger)
        small = work / "downloaded"
        small.mkdir()
        manifest = write_csv_manifest(small / "jobs.yaml", batch="done", rows=downloaded_rows)
        ledger = small / "state" / "floraq.db"
        done = run_floraq(["submit", str(manifest)], cwd=small, sandbox=sandbox, ledger=ledger)
        result["downloaded"] = {**_figures(done), **_sizes(ledger, downloaded_rows)}
    return result


def table(result: dict[str, Any]) -> str:
    """The figures against the targets of issue 14."""
    plan, queue = result["plan"], result["queue"]
    queued, done = result["queued_ledger"], result["downloaded"]
    status = result["status"]

    def mark(value: float, target: float) -> str:
        return "met" if value <= target else "MISSED"

    lines = [
        f"million rows: {result['rows']:,} rows, load {result.get('load', '?')}",
        f"  plan               {plan['wall_s']:>8} s wall  {plan['cpu_s']:>7} s CPU"
        f"  {plan['peak_rss_mb']:>6} MB   ≤ 15 s: {mark(plan['wall_s'], TARGETS['plan_s'])}",
        f"  validate + queue   {queue['wall_s']:>8} s wall  {queue['cpu_s']:>7} s CPU"
        f"  {queue['peak_rss_mb']:>6} MB   ≤ 60 s: {mark(queue['wall_s'], TARGETS['queue_s'])}",
        f"  ledger, queued     {queued['bytes_per_row']:>8} B/row as a file,"
        f" {queued['vacuumed_bytes_per_row']} B/row after VACUUM ({queued['file_mb']} MB)",
        f"  ledger, downloaded {done['bytes_per_row']:>8} B/row as a file,"
        f" {done['vacuumed_bytes_per_row']} B/row after VACUUM ({done['rows']:,} rows)"
        f"   ≤ 600: {mark(done['bytes_per_row'], TARGETS['bytes_per_row'])}",
        f"    by table (B/row): {done['bytes_per_row_by_table']}",
        f"  status             {status['status']['best_wall_s']:>8} s wall (whole command),"
        f" --json {status['status_json']['best_wall_s']} s",
        f"  status, in process {status['in_process_s']:>8} s (open, read, close)   ≤ 1 s:"
        f" {mark(status['in_process_s'], 1.0)}",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.million", description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows to plan and queue")
    parser.add_argument(
        "--downloaded-rows", type=int, default=5_000, help="rows run to the end, for size"
    )
    parser.add_argument("--out", type=Path, help="results JSON [default: bench/results/]")
    args = parser.parse_args(argv)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="floraq-million-") as tmp:
        started = time.time()
        result = measure(Path(tmp), args.rows, args.downloaded_rows)
        result["bench_wall_s"] = round(time.time() - started, 1)
    result["load"] = f"{load_before:.1f} before / {os.getloadavg()[0]:.1f} after"
    out = args.out or RESULTS / time.strftime("million-%Y%m%dT%H%M%SZ.json", time.gmtime())
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(table(result))
    print(f"\nresults: {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
