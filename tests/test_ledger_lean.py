"""The lean ledger (step 0009): status totals kept by triggers, moves told by the job row."""

from __future__ import annotations

import json
import random
import sqlite3
from decimal import Decimal
from pathlib import Path

from ledgers import AnyLedger, NewLedger
from sqlite_utils import Database
from test_ledger import new_job

from floraq.core.lifecycle import JobState
from floraq.export import Columns, csv_record, json_record
from floraq.ledger import Ledger
from floraq.ledger.migrations import migrations
from floraq.ledger.sqlite import SqliteLedger
from floraq.review import status_of

PRICES = [Decimal("0.05"), Decimal("0.1"), Decimal("0.333333"), Decimal("1.25")]


def _open(new_ledger: NewLedger) -> AnyLedger:
    led = new_ledger()
    for name in ("b", "c"):
        led.save_batch(
            name, manifest_path=None, output_dir=f"/o/{name}", concurrency=None,
            max_cost=None, retry_failed_runs=1,
        )  # fmt: skip
    return led


def _step(led: AnyLedger, rng: random.Random, job_id: int, step: int) -> None:
    """One random operation of the kinds the runner, retry and resume perform."""
    job = led.job(job_id)
    roll = rng.random()
    if job.state is JobState.QUEUED:
        if roll < 0.1:
            led.move(job.id, JobState.QUEUED, JobState.REJECTED, error_code="invalid_row")
        else:
            led.claim(job.id, at=1.0, quote=rng.choice(PRICES), key_fingerprint=None, cap=None)
    elif job.state is JobState.SUBMITTING:
        new = rng.choice([JobState.SUBMITTED, JobState.QUEUED, JobState.UNKNOWN_OUTCOME])
        led.move(job.id, JobState.SUBMITTING, new, run_id=f"run_{step}")
    elif job.state is JobState.SUBMITTED:
        new = JobState.COMPLETED if roll < 0.7 else JobState.FAILED
        led.move(job.id, JobState.SUBMITTED, new, charged_cost=rng.choice([None, *PRICES]))
    elif job.state is JobState.COMPLETED and job.charged_cost is None and roll < 0.4:
        led.update(job.id, charged_cost=rng.choice(PRICES))  # a late charge
    elif job.state is JobState.COMPLETED:
        led.move(job.id, job.state, JobState.DOWNLOADED if roll < 0.8 else JobState.EXPIRED)
    elif job.state is JobState.DOWNLOADED:
        led.move(job.id, JobState.DOWNLOADED, JobState.COMPLETED)  # a file went missing
    else:
        led.new_attempt(job.id, job.state, attempt=job.attempt + 1,
                        idempotency_key=f"fq1_{job.id}_{step}")  # fmt: skip


def test_status_totals_equal_a_full_recount_after_random_operations(
    new_ledger: NewLedger,
) -> None:
    """Moves, late charges, rejections, new attempts over two batches: the trigger-kept
    totals `status` reads always equal the O(rows) recount."""
    rng = random.Random(14)
    led = _open(new_ledger)
    led.insert_jobs(new_job(n) for n in range(1, 31))
    led.insert_jobs(new_job(n, batch="c", key=f"fq1_c{n}") for n in range(31, 46))
    for step in range(700):
        _step(led, rng, rng.randint(1, 45), step)
        if step % 7 == 0:
            assert led.state_counts(["b", "c"]) == led.state_counts_recomputed(["b", "c"]), step
            assert led.quotes(["b", "c"]) == led.quotes_recomputed(["b", "c"]), step
    totals = led.state_counts(["b", "c"])
    assert totals == led.state_counts_recomputed(["b", "c"])
    assert sum(t.n for t in totals) == 45 and len({t.state for t in totals}) >= 5
    assert any(t.unsettled for t in totals) and any(t.charged for t in totals)
    quotes = led.quotes(["b", "c"])
    assert quotes == led.quotes_recomputed(["b", "c"])
    assert len(quotes) > 4 and any(q.differs for q in quotes)  # several prices, off-quote


def test_a_usual_run_writes_no_event_and_its_trail_is_still_told(new_ledger: NewLedger) -> None:
    """queued → submitting → submitted → completed → downloaded: no event rows; the trail
    comes from the job row, and the first move off the path writes it out for good."""
    led = _open(new_ledger)
    led.insert_jobs([new_job(1)])
    assert led.claim(1, at=10.0, quote=Decimal("0.05"), key_fingerprint="fp", cap=None)
    led.move(1, JobState.SUBMITTING, JobState.SUBMITTED, run_id="run_1", submitted_at=11.0)
    led.record_outputs(1, [("image", "imageUrl", "https://media.test/1.png")])
    led.move(1, JobState.SUBMITTED, JobState.COMPLETED, completed_at=12.0,
             charged_cost=Decimal("0.05"))  # fmt: skip
    led.output_downloaded(1, "image", path="/o/1.png", size=3, sha256="ab", content_type=None)
    led.move(1, JobState.COMPLETED, JobState.DOWNLOADED)
    assert led.query("SELECT kind FROM events") == []
    told = led.history(1)
    assert [e["kind"] for e in told] == [
        "queued", "queued->submitting", "submitting->submitted", "submitted->completed",
        "completed->downloaded",
    ]  # fmt: skip
    assert [e["at"] for e in told[1:4]] == [10.0, 11.0, 12.0]
    assert told[2]["detail"]["run_id"] == "run_1"
    assert told[3]["detail"]["charged_cost"] == Decimal("0.05")

    led.refetch(1, ["image"])  # off the path: the trail goes to `events`, then this move
    kinds = [e["kind"] for e in led.query("SELECT kind FROM events ORDER BY id")]
    assert kinds == [e["kind"] for e in told] + ["downloaded->completed"]
    assert [e["kind"] for e in led.history(1)] == kinds
    detail = json.loads(led.query("SELECT detail FROM events WHERE kind = 'queued'")[0]["detail"])
    assert detail == {"location": new_job(1).location, "from_row": True}


def _old_ledger(path: Path) -> None:
    """A ledger as floraq wrote it before step 0009: an event per move, rows in every state."""
    conn = sqlite3.connect(path)
    migrations.apply(Database(conn), stop_before="0009_lean")
    conn.execute("INSERT INTO batches (name, manifest_path, output_dir, concurrency,"
                 " retry_failed_runs, created_at, updated_at, max_cost_micros)"
                 " VALUES ('old', 'm.yaml', '/out', 2, 1, 1.0, 1.0, 900000)")  # fmt: skip
    conn.execute("INSERT INTO techniques VALUES ('t', '{}', 1.0, 50000)")
    rows = [  # state, estimated, charged, prior charged, prior unsettled
        ("downloaded", 50000, 50000, 100000, 0),
        ("submitted", 50000, None, 0, 0),
        ("completed", 100000, None, 0, 1),
        ("failed", 50000, 20000, 0, 0),
        ("queued", 50000, None, 0, 0),
        ("unknown_outcome", 50000, None, 0, 0),
        ("expired", 70000, 70000, 0, 0),
    ]
    for n, (state, estimated, charged, prior, unsettled) in enumerate(rows, 1):
        conn.execute(
            "INSERT INTO jobs (batch, technique, job_number, row_number, location, row_key,"
            " inputs, inputs_digest, idempotency_key, state, run_id, estimated_micros,"
            " charged_micros, prior_charged_micros, prior_unsettled, updated_at) VALUES"
            " ('old', 't', 1, ?, ?, ?, ?, 'd', ?, ?, ?, ?, ?, ?, ?, 5.0)",
            (n, f"m.yaml: row {n}", f"r{n}", json.dumps({"prompt": f"p {n}"}), f"fq1_{n}",
             state, None if state == "queued" else f"run_{n}", estimated, charged, prior,
             unsettled),
        )  # fmt: skip
        conn.execute(
            "INSERT INTO events (at, job_id, batch, kind, detail) VALUES (?, ?, 'old',"
            " 'queued', ?)",
            (float(n), n, json.dumps({"location": f"m.yaml: row {n}"})),
        )
    conn.execute(
        "INSERT INTO outputs (job_id, output_id, type, url, url_seen_at, state, path, bytes,"
        " sha256) VALUES (1, 'image', 'imageUrl', 'https://m/1.png', 2.0, 'downloaded',"
        " '/out/t/r1/image.png', 3, 'ab')"
    )
    conn.commit()
    conn.close()


def _seen(led: SqliteLedger) -> tuple[object, ...]:
    """What status and export show of batch 'old' (computed from the rows themselves)."""
    views = led.job_views(["old"])
    columns = Columns(inputs=("prompt",), outputs=("image",))
    return (
        led.state_counts_recomputed(["old"]),
        led.problem_rows(["old"]),
        led.quotes_recomputed(["old"]),
        [csv_record(v, columns) for v in views],
        [json_record(v) for v in views],
        led.committed_cost("old"),
    )


def test_an_old_ledger_shows_the_same_status_and_export_after_migrating(tmp_path: Path) -> None:
    """Step 0009 on a ledger with rows in every state: status, export, cost and the audit
    trail read the same before and after; the totals table starts from the real figures."""
    path = tmp_path / "floraq.db"
    _old_ledger(path)
    before_conn = sqlite3.connect(path, isolation_level=None)
    before = SqliteLedger(before_conn)  # not migrated: reads the old schema as it is
    seen_before = _seen(before)
    trail_before = before.query("SELECT * FROM events ORDER BY id")
    before_conn.close()

    led = Ledger.open(path)
    assert not migrations.pending(led.db)
    assert _seen(led) == seen_before
    assert led.state_counts(["old"]) == seen_before[0]
    assert led.quotes(["old"]) == seen_before[2]
    status = status_of(led, ["old"])
    assert status.total("unknown_outcome", "completed", "expired") == 3
    assert sum(c.unsettled for c in status.counts) == 3  # unknown; completed and its prior
    assert led.query("SELECT * FROM events ORDER BY id") == trail_before
    assert [e["kind"] for e in led.history(1)] == ["queued"]  # logged: events only
    assert led.query("SELECT queued_at FROM jobs WHERE id = 3") == [{"queued_at": 3.0}]


def test_the_frozen_finished_states_of_the_quote_totals_match_the_lifecycle() -> None:
    """The quote triggers' finished states (frozen in step 0009) are today's RUN_FINISHED:
    a new finished state needs a step that rebuilds them."""
    from floraq.core.lifecycle import RUN_FINISHED
    from floraq.ledger.totals_sql import FINISHED_0009

    assert {s.strip(" '") for s in FINISHED_0009.split(",")} == {s.value for s in RUN_FINISHED}
