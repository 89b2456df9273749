"""The PostgreSQL ledger's connection dropped mid-run (an admin ends the session): one line,
exit 8, no traceback; nothing committed is lost and `resume` finishes every file."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from conftest import Floraq, floraq_against, served_outputs, sha256
from ledgers import fresh_schema, postgres_url
from test_e2e_crash import manifest
from test_e2e_postgres_cli import PASSWORD, assert_no_password, pg_query

from floraq.errors import ExitCode, LedgerConnectionLost, LedgerRefused
from floraq.ledger.lean_rows import OUTPUT_PATH
from floraq.ledger.pg_connection import PgConnection, masked
from floraq.sandbox import SandboxServer

ROWS = 9


@pytest.fixture
def app_name() -> str:
    """The application_name of this test's floraq sessions, so only they are ended."""
    return f"floraq-lost-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def pg_url(app_name: str) -> Iterator[str]:
    with fresh_schema() as url:
        yield f"{url}&password={PASSWORD}&application_name={app_name}"


def _terminate(app_name: str) -> int:
    """End every session of this test's floraq from an admin connection; how many."""
    with psycopg.connect(postgres_url(), autocommit=True) as admin:
        rows = admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
            (app_name,),
        ).fetchall()
    return sum(1 for (ended,) in rows if ended)


def _downloaded(url: str) -> int:
    try:
        rows = pg_query(url, "SELECT COUNT(*) AS n FROM jobs WHERE state = 'downloaded'")
    except psycopg.Error:  # the schema is not there yet
        return 0
    return int(rows[0]["n"])


def test_a_dropped_connection_is_one_line_and_resume_finishes(
    tmp_path: Path, sandbox: SandboxServer, pg_url: str, app_name: str
) -> None:
    cli: Floraq = floraq_against(tmp_path, sandbox)
    cli.env["FLORAQ_LEDGER"] = pg_url
    # The broken worker cannot hand its rows back; `resume` takes them over once its lease
    # ends, so the lease is short here (the default is a minute).
    cli.env["FLORAQ_LEASE_SECONDS"] = "3"
    sandbox.configure(duration=[40, 400])  # 0.4-4 s: the first file lands well before the last
    process = cli.start("submit", str(manifest(cli, ROWS, batch="lost")))
    deadline = time.monotonic() + 60
    while _downloaded(pg_url) < 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert _terminate(app_name) == 1
    out, err = process.communicate(timeout=120)
    assert process.returncode == ExitCode.LEDGER_LOST, out + err
    assert "Traceback" not in err and out == ""
    # psycopg names the break as it met it: the server's notice when a statement was under
    # way, "the connection is closed" when the session was idle at that instant, libpq's
    # "<step> failed: server closed the connection unexpectedly" when the end came while
    # it was sending or reading (seen on a loaded machine).
    reasons = (
        "terminating connection due to administrator command|the connection is closed"
        "|[a-z ]+ failed: server closed the connection unexpectedly"
    )
    assert re.fullmatch(
        re.escape(f"floraq: error: lost the connection to the PostgreSQL ledger {masked(pg_url)}")
        + f" \\(({reasons})\\): "
        + re.escape("nothing committed is lost; check the server, then `floraq resume`\n"),
        err,
    ), err
    assert 1 <= _downloaded(pg_url) < ROWS  # what was committed before the break is kept
    runs = sandbox.stats()["runs_created"]

    done = cli("resume")
    assert done.returncode == ExitCode.OK, done.stdout + done.stderr
    states = pg_query(pg_url, "SELECT state, COUNT(*) AS n FROM jobs GROUP BY state")
    assert states == [{"state": "downloaded", "n": ROWS}]
    served = served_outputs(sandbox)
    outputs = pg_query(
        pg_url,
        f"SELECT j.idempotency_key, o.output_id, {OUTPUT_PATH} AS path, o.sha256 FROM outputs o"
        " JOIN jobs j ON j.id = o.job_id JOIN batches b ON b.name = j.batch",
    )
    assert len(outputs) == len(served)
    for row in outputs:
        expected = served[f"{row['idempotency_key']}/{row['output_id']}"]
        assert sha256(Path(row["path"])) == row["sha256"] == expected
    assert sandbox.stats()["runs_created"] == runs <= ROWS  # no run sent twice
    assert_no_password(cli, out, err, done.stdout, done.stderr)


def test_a_statement_timeout_is_not_taken_for_a_lost_connection(pg_url: str) -> None:
    """An OperationalError of a live session (here a cancelled statement) is a refusal said
    as itself (``LedgerRefused``, one line): only a session that is gone becomes the
    one-line "lost the connection"."""
    conn = PgConnection.connect(pg_url)
    try:
        conn.execute("SET statement_timeout = 10")
        with pytest.raises(LedgerRefused) as refused:
            conn.execute("SELECT pg_sleep(1)")
        assert not isinstance(refused.value, LedgerConnectionLost)
        assert str(refused.value).startswith(
            f"the PostgreSQL ledger {masked(pg_url)} refused a statement (canceling statement"
        )
        assert conn.execute("SELECT 1").fetchone()[0] == 1  # still usable
        conn.execute("SET application_name = 'floraq-about-to-go'")
        with psycopg.connect(postgres_url(), autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE application_name = 'floraq-about-to-go'"
            )
        with pytest.raises(LedgerConnectionLost) as lost:
            conn.execute("SELECT 1")
        assert lost.value.exit_code == ExitCode.LEDGER_LOST
        assert str(lost.value).startswith(
            f"lost the connection to the PostgreSQL ledger {masked(pg_url)} ("
        )
        assert not conn.in_transaction
    finally:
        conn.close()
