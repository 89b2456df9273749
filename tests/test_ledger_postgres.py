"""What only the PostgreSQL ledger has: racing migrations, concurrent claims, a URL's secret.

Everything both backends share runs in test_ledger*.py and test_runner_*.py on each.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import TypeVar

import psycopg
import pytest
from ledgers import postgres_url, with_search_path
from test_ledger import new_job

from floraq.core.lifecycle import JobState
from floraq.errors import LedgerBusy, LedgerError
from floraq.ledger import (
    PostgresLedger,
    SqliteLedger,
    ledger_name,
    open_ledger,
    open_ledger_readonly,
    pg_schema,
)
from floraq.ledger.migrations import MIGRATION_NAMES
from floraq.ledger.pg_connection import PgConnection, masked

T = TypeVar("T")


def together(n: int, work: Callable[[int], T]) -> list[T]:
    """Run ``work(i)`` in ``n`` threads released at the same instant; their results."""
    barrier = threading.Barrier(n)
    results: list[T | None] = [None] * n
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            barrier.wait()
            results[i] = work(i)
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    return [r for r in results if r is not None]


def test_four_workers_starting_together_migrate_once(postgres_schema: str) -> None:
    """4 connections apply the schema at the same instant: one applies every step, once."""
    conns = [PgConnection.connect(postgres_schema) for _ in range(4)]
    try:
        applied = together(4, lambda i: pg_schema.apply(conns[i], "test"))
    finally:
        for conn in conns:
            conn.close()
    assert sorted(applied, key=len) == [[], [], [], list(MIGRATION_NAMES)]
    ledger = PostgresLedger.open(postgres_schema)
    rows = ledger.query(f"SELECT name FROM {pg_schema.MIGRATIONS_TABLE} ORDER BY name")
    assert [r["name"] for r in rows] == list(MIGRATION_NAMES)
    assert ledger.migrate() == []
    ledger.close()


def test_two_claimers_never_pass_the_cap_together(postgres_schema: str) -> None:
    """2 connections x 50 claims of 0.10 under a 3.00 cap: exactly 30 claimed, never 31."""
    setup = PostgresLedger.open(postgres_schema)
    cap = Decimal("3.00")
    setup.save_batch(
        "b", manifest_path=None, output_dir="/o", concurrency=None, max_cost=cap,
        retry_failed_runs=1,
    )  # fmt: skip
    setup.insert_jobs(new_job(n) for n in range(1, 101))
    workers = [PostgresLedger.open(postgres_schema) for _ in range(2)]

    def claim_half(i: int) -> int:
        own = range(1 + 50 * i, 51 + 50 * i)
        return sum(
            workers[i].claim(job_id, at=1.0, quote=Decimal("0.10"), key_fingerprint=None, cap=cap)
            for job_id in own
        )

    claimed = together(2, claim_half)
    assert sum(claimed) == 30
    counts = setup.query("SELECT state, COUNT(*) AS n FROM jobs GROUP BY state ORDER BY state")
    assert counts == [{"state": "queued", "n": 70}, {"state": "submitting", "n": 30}]
    assert setup.committed_cost("b") == cap == setup.committed_cost_recomputed("b")
    assert setup.integrity_ok()
    for ledger in (setup, *workers):
        ledger.close()


def test_the_schema_has_sqlites_steps_tables_and_columns(postgres_schema: str) -> None:
    """Same step names, same tables, same columns: the backends cannot drift apart."""
    assert tuple(name for name, _ in pg_schema.STEPS) == MIGRATION_NAMES
    pg = PostgresLedger.open(postgres_schema)
    lite = SqliteLedger.in_memory()
    for table in ("batches", "techniques", "jobs", "outputs", "events", "api_limits", "workers"):
        pg_columns = {
            r["column_name"]
            for r in pg.query(
                "SELECT column_name FROM information_schema.columns"
                " WHERE table_schema = current_schema() AND table_name = ?",
                (table,),
            )
        }
        lite_columns = {r["name"] for r in lite.query(f"PRAGMA table_info({table})")}
        assert pg_columns == lite_columns, table
    pg.close()


def test_another_programs_database_is_refused_and_left_untouched(postgres_schema: str) -> None:
    """Tables but no floraq steps: one-line refusal, no floraq table created, rows kept."""
    with psycopg.connect(postgres_schema, autocommit=True) as other:
        other.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, email TEXT)")
        other.execute("INSERT INTO customers VALUES (1, 'a@example.com')")
    for opener in (PostgresLedger.open, PostgresLedger.open_readonly):
        with pytest.raises(
            LedgerError,
            match=r"is a PostgreSQL database but not a floraq ledger \(its tables: customers\);"
            r" it was left untouched",
        ):
            opener(postgres_schema)
    with psycopg.connect(postgres_schema) as other:
        tables = other.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
        ).fetchall()
        assert tables == [("customers",)]


def test_a_ledger_from_a_newer_floraq_is_refused_and_left_untouched(postgres_schema: str) -> None:
    """A schema step this floraq does not know: refused, and nothing is changed."""
    PostgresLedger.open(postgres_schema).close()
    with psycopg.connect(postgres_schema, autocommit=True) as newer:
        newer.execute(
            f"INSERT INTO {pg_schema.MIGRATIONS_TABLE} VALUES ('0099_from_the_future', 1.0)"
        )
    for opener in (PostgresLedger.open, PostgresLedger.open_readonly):
        with pytest.raises(
            LedgerError,
            match=r"written by a newer floraq \(schema step"
            r" 0099_from_the_future is unknown to this one\)",
        ):
            opener(postgres_schema)
    with psycopg.connect(postgres_schema) as newer:
        (n,) = newer.execute(f"SELECT COUNT(*) FROM {pg_schema.MIGRATIONS_TABLE}").fetchone() or ()
        assert n == len(MIGRATION_NAMES) + 1


def test_read_only_opens_only_an_existing_ledger_and_never_writes(postgres_schema: str) -> None:
    """Nothing there yet: None (and no table made). A ledger: readable, every write refused."""
    assert open_ledger_readonly(postgres_schema) is None
    ledger = open_ledger(postgres_schema)
    assert isinstance(ledger, PostgresLedger)
    ledger.save_batch(
        "b", manifest_path=None, output_dir="/o", concurrency=None, max_cost=None,
        retry_failed_runs=1,
    )  # fmt: skip
    reader = open_ledger_readonly(postgres_schema)
    assert reader is not None and reader.batch_names() == ["b"]
    with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
        reader.insert_jobs([new_job(1)])
    assert ledger.jobs(batches=["b"], states=list(JobState)) == []
    reader.close()
    ledger.close()


def test_a_password_is_never_in_an_error(postgres_schema: str) -> None:
    """A URL's password, in the user part or as ?password=, never reaches an error line."""
    port = postgres_url().split("@", 1)[1].split("/", 1)[0]
    secret = "s3cret-Pw%21x"  # percent-encoded: its decoded form must not show either
    wrong_db = f"postgresql://postgres:{secret}@{port}/no_such_database_here"
    in_query = f"postgresql://postgres@{port}/no_such_database_here?password={secret}"
    closed = f"postgres://postgres:{secret}@127.0.0.1:1/postgres"
    for url in (wrong_db, in_query, closed):
        for opener in (open_ledger, open_ledger_readonly):
            with pytest.raises(LedgerError) as raised:
                opener(url)
            text = str(raised.value)
            assert text.startswith(f"cannot open the ledger {masked(url)}: "), text
            assert "***" in text and "\n" not in text
            assert "s3cret" not in text and secret not in text, text
    assert masked(wrong_db) == f"postgresql://postgres:***@{port}/no_such_database_here"
    assert ledger_name(in_query).endswith("?password=***")


def test_masked_and_ledger_name_without_a_server() -> None:
    """A URL without a password is shown as is; a SQLite path is shown as its path."""
    assert masked("postgresql://u@h:5432/db") == "postgresql://u@h:5432/db"
    assert masked("postgresql://u:p@h/db?sslmode=require&password=q") == (
        "postgresql://u:***@h/db?sslmode=require&password=***"
    )
    assert ledger_name(Path("state/floraq.db")) == "state/floraq.db"


def test_open_ledger_picks_the_backend_from_the_target(tmp_path: Path) -> None:
    """A SQLite path (str or Path) opens SQLite; only a postgres URL scheme means PostgreSQL."""
    for target in (tmp_path / "a.db", str(tmp_path / "b.db")):
        ledger = open_ledger(target)
        assert isinstance(ledger, SqliteLedger)
        ledger.close()
    assert sqlite3.connect(tmp_path / "a.db").execute("SELECT 1").fetchone() == (1,)
    assert open_ledger_readonly(tmp_path / "none.db") is None


def test_search_path_urls_are_kept_apart(postgres_schema: str) -> None:
    """Two schemas of one database are two ledgers (the fixture's isolation really holds)."""
    first = open_ledger(postgres_schema)
    first.save_batch(
        "only-here", manifest_path=None, output_dir="/o", concurrency=None, max_cost=None,
        retry_failed_runs=1,
    )  # fmt: skip
    base = postgres_url()
    with psycopg.connect(base, autocommit=True) as admin:
        admin.execute("CREATE SCHEMA IF NOT EXISTS t_apart")
    try:
        second = open_ledger(with_search_path(base, "t_apart"))
        assert second.batch_names() == []
        second.close()
    finally:
        with psycopg.connect(base, autocommit=True) as admin:
            admin.execute("DROP SCHEMA t_apart CASCADE")
    assert first.batch_names() == ["only-here"]
    first.close()


def test_a_second_process_on_one_ledger_is_busy_until_the_first_ends(
    postgres_schema: str,
) -> None:
    """The advisory lock says exit 5 to a second holder; closing (or dying) releases it."""
    first = PostgresLedger.open(postgres_schema)
    first.hold_lock()
    second = PostgresLedger.open(postgres_schema)
    with pytest.raises(LedgerBusy, match=r"another floraq process is using the ledger postgres"):
        second.hold_lock()
    assert LedgerBusy.exit_code == 5
    first.close()
    second.hold_lock()
    second.close()
