"""One rate per workspace across processes and nights: the 429 pause and the learned limit.

The pause test compares two clocks of one machine: the ledger's (the time the pause ends)
and the sandbox's (the time each run was created). A process that honours the pause
cannot create a run before it ends, however fast or slow the machine is.
"""

from __future__ import annotations

import signal
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from conftest import Floraq, status_json
from ledgers import BACKENDS, fresh_schema
from test_e2e_postgres_cli import pg_query

from floraq.core.keys import api_key_fingerprint
from floraq.errors import ExitCode
from floraq.sandbox import SandboxServer

PAUSE = 6.0  # Retry-After seconds, taken unscaled by the first process
CLOCK_SLACK_MS = 10  # the sandbox keeps whole milliseconds; the ledger keeps floats


def portraits(floraq: Floraq, name: str, rows: int, concurrency: int) -> Path:
    images = [
        {"input_image": f"https://storage.googleapis.com/{name}/{n}.jpg"} for n in range(rows)
    ]
    return floraq.write_manifest(
        f"{name}.yaml",
        batch=name,
        concurrency=concurrency,
        jobs=[{"technique": "portrait-enhancer", "rows": images}],
    )


def limits(floraq: Floraq) -> list[dict[str, Any]]:
    """The ledger's api_limits rows, as an operator would read them ([] until they exist)."""
    target = floraq.env["FLORAQ_LEDGER"]
    try:
        if target.startswith("postgresql://"):
            return pg_query(target, "SELECT * FROM api_limits")
        return floraq.query("SELECT * FROM api_limits")
    except (sqlite3.Error, psycopg.Error):  # the ledger or its table is not made yet
        return []


@pytest.fixture(params=BACKENDS)
def cli(request: pytest.FixtureRequest, floraq: Floraq) -> Iterator[Floraq]:
    """The CLI on a SQLite ledger, or on a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        yield floraq
        return
    with fresh_schema() as url:
        floraq.env["FLORAQ_LEDGER"] = url
        yield floraq


def wait_for(check: Any, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.02)
    raise AssertionError("timed out")


def test_a_pause_one_process_met_holds_the_next_process_back(
    cli: Floraq, sandbox: SandboxServer
) -> None:
    """The first POST gets a 429 with a 6 s Retry-After; the process is stopped during the
    pause; the next one, started while it is in force, creates no run before it ends.
    (On PostgreSQL the pause is on the server's clock: one machine here, so the same one.)"""
    floraq = cli
    sandbox.configure(rate_limit_next_creates=1, retry_after=PAUSE)
    jobs = str(portraits(floraq, "paused", 3, concurrency=1))
    first = floraq.start("submit", jobs, FLORAQ_TIME_SCALE="1")
    try:
        [row] = wait_for(lambda: [r for r in limits(floraq) if r["paused_until"]])
        first.send_signal(signal.SIGTERM)
        _, err = first.communicate(timeout=60)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == ExitCode.INTERRUPTED, err
    stats = sandbox.stats()
    assert (stats["faults"]["429"], stats["runs_created"]) == (1, 0)
    assert row["recent_429s"] == 1
    assert row["workspace"] == f"key:{api_key_fingerprint(sandbox.api_key)}"
    assert sandbox.api_key not in str(row)

    launched = time.time()
    assert launched < row["paused_until"], "the pause ended before the next process started"
    done = floraq("resume")
    assert done.returncode == ExitCode.OK, done.stderr
    created = sorted(run["created_at"] for run in sandbox.runs())
    assert len(created) == 3
    assert created[0] >= row["paused_until"] * 1000 - CLOCK_SLACK_MS
    assert status_json(floraq)["batches"]["paused"]["states"] == {"downloaded": 3}


def test_the_next_night_starts_at_the_concurrency_this_night_learned(
    cli: Floraq, sandbox: SandboxServer
) -> None:
    """Night 1 meets a 429 (2 -> 1); status shows 1; night 2, allowed 8, sends one at a time."""
    floraq = cli
    sandbox.configure(rate_limit_next_creates=1, retry_after=1)
    done = floraq("submit", "--no-wait", str(portraits(floraq, "night1", 2, concurrency=2)))
    assert done.returncode == ExitCode.INCOMPLETE, done.stderr  # sent; `resume` fetches
    assert sandbox.stats()["faults"]["429"] == 1
    [learned] = status_json(floraq)["api_limits"]
    assert learned["learned_concurrency"] == 1
    assert learned["api_host"] == sandbox.base_url.split("//")[1].split("/")[0]
    assert learned["workspace"] == f"key:{api_key_fingerprint(sandbox.api_key)}"
    shown = floraq("status")
    assert (
        f"API {learned['api_host']}, workspace {learned['workspace']}: learned concurrency 1"
        in (shown.stdout)
    )

    sandbox.reset()
    sandbox.configure(latency=0.2)  # each POST held long enough for the next to overlap it
    done = floraq("submit", "--no-wait", str(portraits(floraq, "night2", 4, concurrency=8)))
    assert done.returncode == ExitCode.INCOMPLETE, done.stderr
    stats = sandbox.stats()
    assert stats["runs_created"] == 4
    assert 1 <= stats["max_in_flight"] <= learned["learned_concurrency"]
