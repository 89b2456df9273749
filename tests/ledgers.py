"""Both ledger backends behind one fixture, so their tests cannot drift apart.

``new_ledger`` is parametrized over SQLite (in memory) and PostgreSQL (a fresh schema per
test, dropped after it). PostgreSQL is the server at ``FLORAQ_TEST_POSTGRES`` (``.ci/run``
starts a throwaway one); without it those tests skip with one line, and under ``CI=true``
they fail instead: CI must never pass by skipping them.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from decimal import Decimal
from functools import partial
from urllib.parse import quote

import psycopg
import pytest

from floraq.core.keys import idempotency_key, inputs_digest
from floraq.ledger import NewJob, PostgresLedger, SqliteLedger

AnyLedger = SqliteLedger | PostgresLedger
NewLedger = Callable[[], AnyLedger]

POSTGRES_VAR = "FLORAQ_TEST_POSTGRES"
BACKENDS = ("sqlite", "postgres")


def postgres_url() -> str:
    """The test server's URL, or a skip (a failure under CI=true) saying how to get one."""
    url = os.environ.get(POSTGRES_VAR, "")
    if not url:
        reason = f"no PostgreSQL server: set {POSTGRES_VAR}=postgresql://… (.ci/run does)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason}; under CI=true the PostgreSQL tests must run", pytrace=False)
        pytest.skip(reason)
    return url


def with_search_path(url: str, schema: str) -> str:
    """``url`` with every session's search_path set to ``schema`` (libpq's options)."""
    joiner = "&" if "?" in url else "?"
    return f"{url}{joiner}options={quote(f'-csearch_path={schema}')}"


@contextmanager
def fresh_schema() -> Iterator[str]:
    """A URL whose sessions live in a new, empty schema; the schema is dropped afterwards."""
    url = postgres_url()
    schema = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute(f"CREATE SCHEMA {schema}")
    try:
        yield with_search_path(url, schema)
    finally:
        with psycopg.connect(url, autocommit=True) as admin:
            admin.execute(f"DROP SCHEMA {schema} CASCADE")


@pytest.fixture
def postgres_schema() -> Iterator[str]:
    """A URL on a fresh schema of the test server (PostgreSQL-only tests)."""
    with fresh_schema() as url:
        yield url


@pytest.fixture(params=BACKENDS)
def new_ledger(request: pytest.FixtureRequest) -> Iterator[NewLedger]:
    """Opens the test's ledger: SQLite in memory (new each call), or PostgreSQL on the
    test's own schema (each call another connection to the same ledger)."""
    opened: list[AnyLedger] = []

    def sqlite() -> AnyLedger:
        opened.append(SqliteLedger.in_memory())
        return opened[-1]

    if request.param == "sqlite":
        yield sqlite
    else:
        with fresh_schema() as url:

            def postgres() -> AnyLedger:
                opened.append(PostgresLedger.open(url))
                return opened[-1]

            yield postgres
            for ledger in opened:
                ledger.close()  # before the schema is dropped
    for ledger in opened:
        ledger.close()


LedgerWith = Callable[[list[str]], AnyLedger]


@pytest.fixture
def ledger_with(new_ledger: NewLedger) -> LedgerWith:
    """Opens the test's ledger (each backend) with batch ``b`` queued from ``prompts``."""
    return partial(_ledger_with, new_ledger)


def _ledger_with(new_ledger: NewLedger, prompts: list[str]) -> AnyLedger:
    ledger = new_ledger()
    ledger.save_batch(
        "b", manifest_path=None, output_dir="out", concurrency=2, max_cost=None, retry_failed_runs=1
    )
    ledger.insert_jobs(
        NewJob(
            batch="b",
            technique="poster",
            job_number=1,
            row_number=n,
            csv_line=None,
            location=f"row {n}",
            row_key=f"r{n}",
            inputs={"prompt": prompt},
            inputs_digest=inputs_digest({"prompt": prompt}),
            idempotency_key=idempotency_key(
                batch="b", technique="poster", inputs={"prompt": prompt}, attempt=1
            ),
            estimated_cost=Decimal("0.1"),
        )
        for n, prompt in enumerate(prompts, 1)
    )
    return ledger
