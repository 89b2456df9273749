"""Money in the ledger: exact micro-dollars, the committed-cost counter, claims, old ledgers."""

from __future__ import annotations

import json
import random
import sqlite3
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import pytest
from ledgers import AnyLedger, NewLedger
from sqlite_utils import Database
from test_ledger import new_job

from floraq import console
from floraq.core.lifecycle import QUOTE_COMMITTED, JobState
from floraq.core.money import amount
from floraq.ledger import Ledger
from floraq.ledger.migrations import _COMMITTED_0004, _COMMITTED_0005, migrations
from floraq.review import status_of

BatchLedger = Callable[..., AnyLedger]


@pytest.fixture
def batch_ledger(new_ledger: NewLedger) -> BatchLedger:
    """Opens the test's ledger (each backend) with batch ``b`` under ``max_cost``."""

    def make(*, max_cost: Decimal | None = None) -> AnyLedger:
        led = new_ledger()
        led.save_batch(
            "b", manifest_path=None, output_dir="/o", concurrency=None, max_cost=max_cost,
            retry_failed_runs=1,
        )  # fmt: skip
        return led

    return make


def settle(led: AnyLedger, job_id: int, charge: Decimal | None) -> None:
    led.move(job_id, JobState.SUBMITTING, JobState.SUBMITTED, run_id=f"run_{job_id}")
    led.move(job_id, JobState.SUBMITTED, JobState.COMPLETED, charged_cost=charge)


def test_a_thousand_charges_of_a_dime_total_exactly_100(
    capsys: pytest.CaptureFixture[str], batch_ledger: BatchLedger
) -> None:
    """1,000 charges of 0.1 (a float from JSON) add up to exactly 100 in status --json."""
    led = batch_ledger()
    led.insert_jobs(new_job(n) for n in range(1, 1001))
    for job_id in range(1, 1001):
        assert led.claim(job_id, at=1.0, quote=Decimal("0.1"), key_fingerprint=None, cap=None)
        settle(led, job_id, amount(0.1))
    status = status_of(led, ["b"])
    assert status.totals.charged == Decimal("100") and status.totals.estimated == Decimal("100")
    console.status_json(status)
    report = json.loads(capsys.readouterr().out)["batches"]["b"]
    assert (report["charged_cost"], report["estimated_cost"]) == (100, 100)
    assert repr(report["charged_cost"]) == "100.0" and not report["charged_cost_is_floor"]
    assert led.committed_cost("b") == Decimal("100")


def test_claim_past_the_cap_writes_nothing(batch_ledger: BatchLedger) -> None:
    """The cap is checked in the claim's transaction: a refused claim leaves the row queued."""
    led = batch_ledger(max_cost=Decimal("0.1"))
    led.insert_jobs([new_job(1), new_job(2), new_job(3)])
    cap = Decimal("0.1")
    assert led.claim(1, at=1.0, quote=Decimal("0.05"), key_fingerprint="fp", cap=cap)
    assert led.claim(2, at=1.0, quote=Decimal("0.05"), key_fingerprint="fp", cap=cap)
    assert not led.claim(3, at=1.0, quote=Decimal("0.05"), key_fingerprint="fp", cap=cap)
    assert [j.state for j in (led.job(1), led.job(2), led.job(3))] == [
        JobState.SUBMITTING,
        JobState.SUBMITTING,
        JobState.QUEUED,
    ]
    assert led.job(1).key_fingerprint == "fp" and led.job(1).estimated_cost == Decimal("0.05")
    # Releasing a quote is the move out of `submitting`: the third row now fits.
    led.move(2, JobState.SUBMITTING, JobState.QUEUED)
    assert led.claim(3, at=2.0, quote=Decimal("0.05"), key_fingerprint="fp", cap=cap)


def test_the_counter_equals_the_full_sum_after_random_operations(
    batch_ledger: BatchLedger,
) -> None:
    """Moves, late charges, new attempts: the kept counter always equals the O(rows) sum."""
    rng = random.Random(9)
    led = batch_ledger()
    led.insert_jobs(new_job(n) for n in range(1, 41))
    prices = [Decimal("0.05"), Decimal("0.1"), Decimal("0.333333"), Decimal("1.25")]
    for step in range(600):
        job = led.job(rng.randint(1, 40))
        roll = rng.random()
        if job.state is JobState.QUEUED:
            led.claim(job.id, at=1.0, quote=rng.choice(prices), key_fingerprint=None, cap=None)
        elif job.state is JobState.SUBMITTING:
            new = rng.choice([JobState.SUBMITTED, JobState.QUEUED, JobState.UNKNOWN_OUTCOME])
            led.move(job.id, JobState.SUBMITTING, new)
        elif job.state is JobState.SUBMITTED:
            new = JobState.COMPLETED if roll < 0.7 else JobState.FAILED
            charge = rng.choice([None, *prices])
            led.move(job.id, JobState.SUBMITTED, new, charged_cost=charge)
        elif job.state is JobState.COMPLETED and job.charged_cost is None and roll < 0.5:
            led.update(job.id, charged_cost=rng.choice(prices))  # a late charge
        elif job.state in (JobState.COMPLETED, JobState.DOWNLOADED):
            new = JobState.DOWNLOADED if job.state is JobState.COMPLETED else JobState.COMPLETED
            led.move(job.id, job.state, new)
        else:
            led.new_attempt(job.id, job.state, attempt=job.attempt + 1,
                            idempotency_key=f"fq1_{job.id}_{step}")  # fmt: skip
        assert led.committed_cost("b") == led.committed_cost_recomputed("b"), step
    assert led.committed_cost("b") > 0


def test_the_frozen_state_list_of_the_counter_matches_the_lifecycle() -> None:
    """The triggers' states (frozen in migration 0005, the latest to set them) are today's
    QUOTE_COMMITTED; 0004's list, as it shipped, lacked only `download_failed`."""
    frozen = {s.strip(" '") for s in _COMMITTED_0005.split(",")}
    assert frozen == {s.value for s in QUOTE_COMMITTED}
    shipped = {s.strip(" '") for s in _COMMITTED_0004.split(",")}
    assert shipped == frozen - {JobState.DOWNLOAD_FAILED.value}


def test_a_ledger_written_by_the_previous_schema_opens_migrates_and_resumes(
    tmp_path: Path,
) -> None:
    """REAL amounts become micro-dollars once; states, charges and the cap's figure survive."""
    path = tmp_path / "floraq.db"
    conn = sqlite3.connect(path)
    db = Database(conn)
    migrations.apply(db, stop_before="0004_money_micros")
    conn.execute("INSERT INTO batches VALUES ('old', 'm.yaml', '/out', 2, 0.3, 1, 1.0, 1.0)")
    conn.execute("INSERT INTO techniques VALUES ('portrait-enhancer', '{}', 0.05, 1.0)")
    rows = [  # state, estimated, charged, prior charged
        ("downloaded", 0.05, 0.05, 0.1),
        ("submitted", 0.05, None, 0.0),
        ("completed", 0.1, None, 0.0),
        ("failed", 0.05, 0.02, 0.0),
        ("queued", 0.05, None, 0.0),
    ]
    for n, (state, estimated, charged, prior) in enumerate(rows, 1):
        conn.execute(
            "INSERT INTO jobs (batch, technique, job_number, row_number, location, row_key,"
            " inputs, inputs_digest, idempotency_key, state, estimated_cost, charged_cost,"
            " prior_charged_cost, updated_at) VALUES ('old', 'portrait-enhancer', 1, ?, 'x',"
            " ?, '{}', 'd', ?, ?, ?, ?, ?, 1.0)",
            (n, f"r{n}", f"fq1_{n}", state, estimated, charged, prior),
        )
    conn.commit()
    conn.close()

    led = Ledger.open(path)
    assert not migrations.pending(led.db)
    jobs = [led.job(n) for n in range(1, 6)]
    assert [j.state.value for j in jobs] == [r[0] for r in rows]
    assert [j.estimated_cost for j in jobs] == [Decimal(str(r[1])) for r in rows]
    assert jobs[0].charged_cost == Decimal("0.05") and jobs[1].charged_cost is None
    view = led.job_views(["old"])[0]
    assert view.prior_charged_cost == Decimal("0.1") and view.total_charged == Decimal("0.15")
    batch = led.batch("old")
    assert batch is not None and batch.max_cost == Decimal("0.3")
    # downloaded 0.05 + 0.1 prior, submitted 0.05, completed 0.1, failed 0.02
    assert led.committed_cost("old") == Decimal("0.32") == led.committed_cost_recomputed("old")
    # Resume: the queued row's claim sees the migrated figure against the cap.
    assert not led.claim(5, at=2.0, quote=Decimal("0.05"), key_fingerprint=None, cap=Decimal("0.3"))
    assert led.claim(5, at=2.0, quote=Decimal("0.05"), key_fingerprint=None, cap=Decimal("1"))
    assert led.committed_cost("old") == Decimal("0.37")


def test_a_deleted_row_takes_its_amount_out_of_the_counter(batch_ledger: BatchLedger) -> None:
    """No floraq code deletes a job today; if one ever goes, the cap's figure follows it."""
    led = batch_ledger()
    led.insert_jobs([new_job(1), new_job(2)])
    for job_id in (1, 2):
        assert led.claim(job_id, at=1.0, quote=Decimal("0.05"), key_fingerprint="fp", cap=None)
    with led.transaction():
        led.conn.execute("DELETE FROM events WHERE job_id = 2")
        led.conn.execute("DELETE FROM jobs WHERE id = 2")
    assert led.committed_cost("b") == Decimal("0.05") == led.committed_cost_recomputed("b")
