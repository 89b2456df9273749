"""Workers and leases on a real PostgreSQL ledger: disjoint pages, fenced writes, takeover.

A lease is made to pass by moving its ``lease_until`` into the past on the server (what
the server's clock would do on its own), so no test waits on a clock.
"""

from __future__ import annotations

import psycopg
import pytest
from test_ledger import new_job
from test_ledger_postgres import together

from floraq.core.lifecycle import JobState
from floraq.errors import ExitCode, LeaseLost, LedgerRefused
from floraq.ledger import PostgresLedger

QUEUED = (JobState.QUEUED,)


def batch_of(url: str, rows: int) -> PostgresLedger:
    setup = PostgresLedger.open(url)
    setup.save_batch(
        "b", manifest_path=None, output_dir="/o", concurrency=None, max_cost=None,
        retry_failed_runs=1,
    )  # fmt: skip
    setup.insert_jobs(new_job(n) for n in range(1, rows + 1))
    return setup


def lapse(setup: PostgresLedger, worker: str) -> None:
    """The worker's lease passes, as the server's clock sees it."""
    setup.query("UPDATE workers SET lease_until = 0 WHERE id = ? RETURNING id", (worker,))


def test_three_workers_lease_disjoint_pages_at_the_same_instant(postgres_schema: str) -> None:
    """100 queued rows, 3 workers asking for 40 each at once: every row leased exactly once."""
    setup = batch_of(postgres_schema, 100)
    workers = [PostgresLedger.open(postgres_schema) for _ in range(3)]
    for w in workers:
        w.register_worker(60)

    pages = together(3, lambda i: workers[i].lease_jobs(batches=["b"], states=QUEUED, limit=40))
    ids = [job.id for page in pages for job in page]
    assert sorted(ids) == list(range(1, 101))  # 40 + 40 + 20, none twice
    owners = setup.query("SELECT lease_owner, COUNT(*) AS n FROM jobs GROUP BY lease_owner")
    assert sorted(r["n"] for r in owners) == sorted(len(p) for p in pages)
    assert {r["lease_owner"] for r in owners} == {w.worker for w in workers}
    # Nothing is left to lease, and a worker is never handed its own rows again.
    assert [w.lease_jobs(batches=["b"], states=QUEUED, limit=40) for w in workers] == [[]] * 3
    for ledger in (setup, *workers):
        ledger.close()


def test_a_lapsed_lease_fences_every_write_and_its_rows_are_taken_over(
    postgres_schema: str,
) -> None:
    """A's lease passes: its move, update and download are refused (LeaseLost, exit 6),
    its heartbeat cannot revive it, and B leases its rows and moves them."""
    setup = batch_of(postgres_schema, 3)
    a, b = PostgresLedger.open(postgres_schema), PostgresLedger.open(postgres_schema)
    worker_a, _ = a.register_worker(60)
    b.register_worker(60)
    [first, second, third] = a.lease_jobs(batches=["b"], states=QUEUED, limit=10)
    a.move(first.id, JobState.QUEUED, JobState.SUBMITTING, submitting_at=1.0)
    a.record_outputs(first.id, [("o1", "image", "https://x/1.png")])
    assert b.lease_jobs(batches=["b"], states=QUEUED, limit=10) == []  # A's, and live

    lapse(setup, worker_a)
    with pytest.raises(LeaseLost, match=f"job {second.id}: this worker's lease on it is gone"):
        a.move(second.id, JobState.QUEUED, JobState.SUBMITTING, submitting_at=1.0)
    with pytest.raises(LeaseLost):
        a.update(first.id, error_code="x")
    with pytest.raises(LeaseLost):
        a.output_downloaded(first.id, "o1", path="/p", size=1, sha256="0", content_type=None)
    assert a.renew_lease(60) is None
    assert LeaseLost.exit_code == ExitCode.INCOMPLETE

    taken = b.lease_jobs(batches=["b"], states=(JobState.QUEUED, JobState.SUBMITTING), limit=10)
    assert sorted(j.id for j in taken) == [first.id, second.id, third.id]
    b.move(first.id, JobState.SUBMITTING, JobState.SUBMITTED, run_id="run-1")
    rows = setup.query("SELECT id, state, error_code, lease_owner FROM jobs ORDER BY id")
    assert [(r["state"], r["error_code"]) for r in rows] == [
        ("submitted", None),
        ("queued", None),
        ("queued", None),
    ]
    assert {r["lease_owner"] for r in rows} == {b.worker}
    assert [o["state"] for o in setup.query("SELECT state FROM outputs")] == ["pending"]
    for ledger in (setup, a, b):
        ledger.close()


def test_workers_view_and_release(postgres_schema: str) -> None:
    """`status` sees each worker with its rows and lease; a clean exit hands them all back."""
    setup = batch_of(postgres_schema, 5)
    a, b = PostgresLedger.open(postgres_schema), PostgresLedger.open(postgres_schema)
    worker_a, _ = a.register_worker(60)
    worker_b, _ = b.register_worker(30)
    a.lease_jobs(batches=["b"], states=QUEUED, limit=3)
    b.lease_jobs(batches=["b"], states=QUEUED, limit=3)
    lapse(setup, worker_b)

    views = {v.id: v for v in setup.workers(["b"])}
    assert (views[worker_a].rows, views[worker_a].expired) == (3, False)
    assert 0 < views[worker_a].lease_left <= 60
    assert (views[worker_b].rows, views[worker_b].expired) == (2, True)

    def left_for(ledger: PostgresLedger, after: float) -> int:
        return ledger.left_elsewhere(batches=["b"], states=(), queued_batches=["b"], after=after)

    assert left_for(b, after=30) == 0  # A beats: its rows are its own to drive
    assert left_for(b, after=-1) == 3  # A has not beaten "for -1 s": it may be dead
    assert left_for(a, after=30) == 2  # B's lease passed: A may take B's rows
    assert a.left_elsewhere(batches=["b"], states=QUEUED, queued_batches=[], after=30) == 2
    assert a.left_elsewhere(batches=[], states=(), queued_batches=[], after=30) == 0

    a.release_worker()
    assert a.worker is None
    # A's rows handed back are nobody's: left for B (and for anyone else) to take.
    assert left_for(b, after=30) == 3
    assert {v.id for v in setup.workers(["b"])} == {worker_b}
    owners = setup.query("SELECT lease_owner, COUNT(*) AS n FROM jobs GROUP BY lease_owner")
    assert sorted((r["lease_owner"] or "", r["n"]) for r in owners) == sorted(
        [("", 3), (worker_b, 2)]
    )
    # A new worker tidies away nothing that still holds rows, and takes the lapsed ones.
    c = PostgresLedger.open(postgres_schema)
    c.register_worker(60)
    [first, *_] = taken = c.lease_jobs(batches=["b"], states=QUEUED, limit=10)
    assert len(taken) == 5
    # `retry` (no worker) re-queues a row c finished: c's lease on it goes, anyone may take it.
    c.move(first.id, JobState.QUEUED, JobState.SUBMITTING, submitting_at=1.0)
    c.move(first.id, JobState.SUBMITTING, JobState.REJECTED, error_code="bad")
    setup.new_attempt(first.id, JobState.REJECTED, attempt=2, idempotency_key="k-2")
    [row] = setup.query("SELECT state, lease_owner FROM jobs WHERE id = ?", (first.id,))
    assert row == {"state": "queued", "lease_owner": None}
    for ledger in (setup, a, b, c):
        ledger.close()


def test_a_statement_timeout_is_said_as_itself_and_the_lease_and_row_stay(
    postgres_schema: str,
) -> None:
    """A worker's write that waits past the server's ``statement_timeout`` (another session
    holds the row's lock) is refused as that (exit 8, one line), not as a lost lease: the
    worker still holds its lease and the row, and the same write goes through afterwards."""
    setup = batch_of(postgres_schema, 1)
    a = PostgresLedger.open(postgres_schema)
    worker, _ = a.register_worker(60)
    [job] = a.lease_jobs(batches=["b"], states=QUEUED, limit=1)
    a.conn.execute("SET statement_timeout = 200")  # as a DBA's role or database setting would
    with psycopg.connect(postgres_schema) as blocker:  # a transaction left open on the row
        blocker.execute("SELECT id FROM jobs WHERE id = %s FOR UPDATE", (job.id,))
        with pytest.raises(LedgerRefused) as refused:
            a.move(job.id, JobState.QUEUED, JobState.SUBMITTING, submitting_at=1.0)
    message = str(refused.value)
    assert not isinstance(refused.value, LeaseLost) and refused.value.exit_code == 8
    assert "refused a statement (canceling statement due to statement timeout)" in message
    assert "\n" not in message and message.endswith("then `floraq resume`")
    [row] = setup.query("SELECT lease_owner, state FROM jobs WHERE id = ?", (job.id,))
    assert row == {"lease_owner": worker, "state": "queued"}
    assert a.renew_lease(60) is not None  # the lease is live: nothing passed to another worker
    a.move(job.id, JobState.QUEUED, JobState.SUBMITTING, submitting_at=1.0)
    assert setup.job(job.id).state is JobState.SUBMITTING
    for ledger in (setup, a):
        ledger.close()
