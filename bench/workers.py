"""Scenario 5: 1, 2 and 4 workers on one batch of a PostgreSQL ledger (issue 10).

Each worker is the real CLI (`python -m bench.child resume`) on the same ledger URL; the
rows are queued first (`submit --no-wait --max-cost 0`: queued, nothing sent), then the
workers start together. The sandbox has room for every run at once and its runs are
instant, so the clients are the bottleneck: rows/s end to end, from the first worker's
start to the last one's exit, and its ratio to one worker. Needs a PostgreSQL server
(``--postgres URL``, or ``FLORAQ_TEST_POSTGRES``); each measurement gets a fresh schema.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg

from bench.child import REPORT_ENV
from bench.harness import API_KEY, TIME_SCALE, Sandbox, child_env, write_csv_manifest

POSTGRES_ENV = "FLORAQ_TEST_POSTGRES"
WORKERS = (1, 2, 4)
BALANCE = 1e9


def postgres_url(given: str | None) -> str | None:
    """The server to measure on: ``--postgres``, else the tests' server, else none."""
    return given or os.environ.get(POSTGRES_ENV) or None


@contextmanager
def fresh_schema(url: str) -> Iterator[str]:
    """A URL whose sessions use a new, empty schema, dropped afterwards."""
    schema = f"bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute(f"CREATE SCHEMA {schema}")
    joiner = "&" if "?" in url else "?"
    try:
        yield f"{url}{joiner}options={quote(f'-csearch_path={schema}')}"
    finally:
        with psycopg.connect(url, autocommit=True) as admin:
            admin.execute(f"DROP SCHEMA {schema} CASCADE")


def _start(args: list[str], *, cwd: Path, sandbox: Sandbox, ledger: str) -> subprocess.Popen[str]:
    env = child_env(
        client=True,
        FLORA_API_KEY=API_KEY,
        FLORA_BASE_URL=sandbox.base_url,
        FLORAQ_LEDGER=ledger,
        FLORAQ_TIME_SCALE=str(TIME_SCALE),
        **{REPORT_ENV: str(cwd / f".child-{time.monotonic_ns()}.json")},
    )
    return subprocess.Popen(
        [sys.executable, "-m", "bench.child", *args],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(proc: subprocess.Popen[str], expected: int, what: str) -> None:
    out, err = proc.communicate(timeout=1800)
    if proc.returncode != expected:
        raise RuntimeError(f"{what} exited {proc.returncode}, not {expected}: {err or out}")


def _one(work: Path, sandbox: Sandbox, base_url: str, rows: int, workers: int) -> dict[str, Any]:
    """Queue ``rows``, then run ``workers`` workers on them together; what it took."""
    folder = work / f"workers-{workers}"
    folder.mkdir()
    manifest = write_csv_manifest(folder / "jobs.yaml", batch=f"bench-w{workers}", rows=rows)
    sandbox.reset()
    with fresh_schema(base_url) as url:
        queue = _start(
            ["submit", "--no-wait", "--max-cost", "0", str(manifest)],
            cwd=folder,
            sandbox=sandbox,
            ledger=url,
        )
        _finish(queue, 4, "queueing the rows")  # paused by the 0 cap: nothing was sent
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        procs = [
            _start(["resume"], cwd=folder, sandbox=sandbox, ledger=url) for _ in range(workers)
        ]
        for n, proc in enumerate(procs):
            _finish(proc, 0, f"worker {n + 1} of {workers}")
        wall = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        with psycopg.connect(url) as conn:
            done = conn.execute("SELECT COUNT(*) FROM jobs WHERE state = 'downloaded'").fetchone()
    stats = sandbox.stats()
    if done is None or done[0] != rows or stats["runs_created"] != rows:
        raise RuntimeError(f"{workers} worker(s): {done} downloaded, {stats['runs_created']} runs")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {
        "wall_s": round(wall, 3),
        "rows_per_s": round(rows / wall, 1),
        "client_cpu_s": round(cpu, 3),
        "client_cpu_ms_per_row": round(1000 * cpu / rows, 3),
    }


def workers(work: Path, rows: int, url: str) -> dict[str, Any]:
    """Rows/s of 1, 2 and 4 workers on one batch, and each one's ratio to one worker."""
    knobs: dict[str, Any] = {
        "seed": 5,
        "time_scale": TIME_SCALE,
        "duration": (0.0, 0.0),
        "capacity": 1000,
        "balance": BALANCE,
    }
    by_workers: dict[str, Any] = {}
    with Sandbox(work, **knobs) as sandbox:
        server_cpu = sandbox.cpu()
        for n in WORKERS:
            by_workers[str(n)] = _one(work, sandbox, url, rows, n)
        server_cpu = sandbox.cpu() - server_cpu
    one = by_workers["1"]["rows_per_s"]
    for figures in by_workers.values():
        figures["speedup_over_1"] = round(figures["rows_per_s"] / one, 2)
    return {
        "rows": rows,
        "cpus": os.cpu_count(),
        "by_workers": by_workers,
        "server_cpu_s": round(server_cpu, 3),
    }
