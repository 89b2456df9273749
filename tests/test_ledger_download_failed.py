"""Migration 0005: the committed-cost triggers learn the `download_failed` state.

A ledger written at step 0004 (rows in every state that counts) migrates on open; its
counter still equals the sum over its rows, and a row that becomes download_failed keeps
its quote (its run completed and was charged, or still owes the charge) as an expired
one does, on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

from ledgers import AnyLedger, fresh_schema
from sqlite_utils import Database

from floraq.core.lifecycle import JobState
from floraq.ledger import PostgresLedger, SqliteLedger, pg_schema
from floraq.ledger.migrations import migrations
from floraq.ledger.pg_connection import PgConnection

Execute = Callable[[str, tuple[object, ...]], object]

# state, estimated, charged, prior charged (micro-dollars)
ROWS: list[tuple[str, int, int | None, int]] = [
    ("downloaded", 50_000, 50_000, 100_000),
    ("expired", 50_000, None, 0),  # a charge never reported: counts at its quote
    ("completed", 100_000, None, 0),
    ("completed", 333_333, 333_333, 0),
    ("submitted", 50_000, None, 0),
    ("failed", 50_000, 20_000, 0),
    ("queued", 50_000, None, 0),
]
# downloaded 0.05 + 0.1, expired 0.05, completed 0.1, completed 0.333333, submitted 0.05,
# failed 0.02
COMMITTED = Decimal("0.703333")


def _fill(execute: Execute) -> None:
    """The rows above in batch 'old', written as floraq at step 0004 would have."""
    execute(
        "INSERT INTO batches (name, output_dir, created_at, updated_at, max_cost_micros)"
        " VALUES ('old', '/out', 1.0, 1.0, 1000000)",
        (),
    )
    for n, (state, estimated, charged, prior) in enumerate(ROWS, 1):
        execute(
            "INSERT INTO jobs (batch, technique, job_number, row_number, location, row_key,"
            " inputs, inputs_digest, idempotency_key, state, run_id, estimated_micros,"
            " charged_micros, prior_charged_micros, updated_at) VALUES ('old', 'poster', 1,"
            " ?, 'x', ?, '{}', 'd', ?, ?, ?, ?, ?, ?, 1.0)",
            (n, f"r{n}", f"fq1_{n}", state, f"run_{n}", estimated, charged, prior),
        )


def _sqlite_at_0004(tmp_path: Path) -> AnyLedger:
    path = tmp_path / "floraq.db"
    conn = sqlite3.connect(path)
    migrations.apply(Database(conn), stop_before="0005_download_failed")
    _fill(lambda sql, params: conn.execute(sql, params))
    conn.commit()
    conn.close()
    return SqliteLedger.open(path)


def _postgres_at_0004(url: str) -> AnyLedger:
    conn = PgConnection.connect(url)
    try:
        conn.execute("BEGIN")
        conn.execute(
            f"CREATE TABLE {pg_schema.MIGRATIONS_TABLE} (name TEXT PRIMARY KEY,"
            " applied_at DOUBLE PRECISION NOT NULL)"
        )
        for name, sql in pg_schema.STEPS[:4]:
            if sql is not None:
                conn.execute(sql)
            conn.execute(
                f"INSERT INTO {pg_schema.MIGRATIONS_TABLE} VALUES (?, ?)", (name, time.time())
            )
        _fill(lambda sql, params: conn.execute(sql, params))
        conn.execute("COMMIT")
    finally:
        conn.close()
    return PostgresLedger.open(url)


def _check_migrated_counter(led: AnyLedger) -> None:
    """0005 applied on open; the counter stands, and follows rows into the new state."""
    assert led.committed_cost("old") == COMMITTED == led.committed_cost_recomputed("old")
    # A completed row whose download fails for good keeps its quote, then its charge.
    led.move(3, JobState.COMPLETED, JobState.DOWNLOAD_FAILED, error_code="download_failed")
    assert led.committed_cost("old") == COMMITTED == led.committed_cost_recomputed("old")
    led.update(3, charged_cost=Decimal("0.09"))  # the late charge arrives
    assert led.committed_cost("old") == COMMITTED - Decimal("0.01")
    assert led.committed_cost("old") == led.committed_cost_recomputed("old")
    # Fetched again (the same run): back to completed, nothing released or added.
    assert led.refetch_unfetched(["old"], [JobState.DOWNLOAD_FAILED]) == 1
    assert led.job(3).state is JobState.COMPLETED
    led.move(4, JobState.COMPLETED, JobState.DOWNLOAD_FAILED, error_code="output_refused")
    led.move(5, JobState.SUBMITTED, JobState.COMPLETED)
    led.move(5, JobState.COMPLETED, JobState.DOWNLOAD_FAILED, error_code="download_failed")
    assert led.committed_cost("old") == COMMITTED - Decimal("0.01")
    assert led.committed_cost("old") == led.committed_cost_recomputed("old")


def test_a_sqlite_ledger_at_0004_migrates_and_its_counter_stays_exact(tmp_path: Path) -> None:
    led = _sqlite_at_0004(tmp_path)
    try:
        assert isinstance(led, SqliteLedger) and not migrations.pending(led.db)
        _check_migrated_counter(led)
    finally:
        led.close()


def test_a_postgres_ledger_at_0004_migrates_and_its_counter_stays_exact() -> None:
    with fresh_schema() as url:
        led = _postgres_at_0004(url)
        try:
            applied = led.query(f"SELECT name FROM {pg_schema.MIGRATIONS_TABLE} ORDER BY name")
            assert [r["name"] for r in applied] == [name for name, _ in pg_schema.STEPS]
            _check_migrated_counter(led)
        finally:
            led.close()
