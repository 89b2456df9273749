"""Lean rows (step 0011): only what cannot be rebuilt is stored; every read gets it whole."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from ledgers import AnyLedger, NewLedger
from sqlite_utils import Database

from floraq.core.keys import row_keys
from floraq.core.lifecycle import JobState
from floraq.export import Columns, csv_record, json_record
from floraq.ledger import Ledger, NewJob, PostgresLedger, pg_schema
from floraq.ledger.migrations import migrations
from floraq.ledger.sqlite import SqliteLedger
from floraq.review import status_of
from floraq.status_view import status_document

BASE = "https://api.test/api/v1"
STEM = "/m/jobs.yaml: job 1 (portrait-enhancer)"


def _job(n: int, *, location: str | None = None, digest: str | None = None) -> NewJob:
    inputs = {"input_image": f"https://storage.googleapis.com/x/{n}.jpg"}
    keys = row_keys(batch="b", technique="portrait-enhancer", inputs=inputs)
    return NewJob(
        batch="b",
        technique="portrait-enhancer",
        job_number=1,
        row_number=n,
        csv_line=n + 1,
        location=location or f"{STEM}, row {n} (rows.csv line {n + 1})",
        row_key=f"row{n}",
        inputs=inputs,
        inputs_digest=digest or keys.inputs_digest,
        idempotency_key=keys.idempotency_key,
        estimated_cost=Decimal("0.05"),
    )


def _ledger(new_ledger: NewLedger) -> AnyLedger:
    led = new_ledger()
    led.save_batch(
        "b", manifest_path="/m/jobs.yaml", output_dir="/out", concurrency=None,
        max_cost=None, retry_failed_runs=1,
    )  # fmt: skip
    return led


def _run(led: AnyLedger, job_id: int, *, poll_url: str, fingerprint: str, path: str) -> None:
    """A row along the usual path to downloaded, as the runner records it."""
    run_id = f"run_{job_id}"
    assert led.claim(job_id, at=1.0, quote=Decimal("0.05"), key_fingerprint=fingerprint, cap=None)
    led.move(job_id, JobState.SUBMITTING, JobState.SUBMITTED, run_id=run_id, poll_url=poll_url)
    led.record_outputs(job_id, [("image", "imageUrl", f"https://media.test/{job_id}.png")])
    led.move(job_id, JobState.SUBMITTED, JobState.COMPLETED, charged_cost=Decimal("0.05"))
    led.output_downloaded(job_id, "image", path=path, size=3, sha256="ab", content_type=None)
    led.move(job_id, JobState.COMPLETED, JobState.DOWNLOADED)


def test_built_values_are_stored_short_and_read_whole(new_ledger: NewLedger) -> None:
    """Location, digest, poll URL, fingerprint and output path in their built form take
    (almost) no bytes, and every read hands back the values the runner wrote."""
    led = _ledger(new_ledger)
    job = _job(1)
    led.insert_jobs([job])
    poll = f"{BASE}/techniques/portrait-enhancer/runs/run_1"
    _run(led, 1, poll_url=poll, fingerprint="fp1", path="/out/portrait-enhancer/row1/image.png")
    [raw] = led.query("SELECT location, inputs_digest, poll_url, key_fingerprint FROM jobs")
    assert raw == {"location": "", "inputs_digest": "", "poll_url": None, "key_fingerprint": ""}
    assert led.query("SELECT path FROM outputs") == [{"path": "*.png"}]

    record = led.job(1)
    assert (record.location, record.inputs_digest) == (job.location, job.inputs_digest)
    assert (record.poll_url, record.key_fingerprint) == (poll, "fp1")
    assert led.jobs(batches=["b"], states=[JobState.DOWNLOADED]) == [record]
    whole = "/out/portrait-enhancer/row1/image.png"
    assert [o.path for o in led.outputs(1)] == [whole]
    [view] = led.job_views(["b"])
    assert view.location == job.location and view.outputs[0].path == whole
    [stored] = led.downloaded_files(["b"])
    assert (stored.path, stored.location) == (whole, job.location)
    assert led.downloaded_by_url() == {"https://media.test/1.png": whole}
    assert led.existing_rows("b", "portrait-enhancer", ["row1"]) == {"row1": job.inputs_digest}
    trail = led.history(1)
    assert trail[0]["detail"]["location"] == job.location
    assert trail[1]["detail"]["key_fingerprint"] == "fp1"
    assert trail[2]["detail"]["poll_url"] == poll


def test_values_not_in_their_built_form_are_stored_as_given(new_ledger: NewLedger) -> None:
    """A poll URL on another host or path, a location with another stem, a digest of
    something else, a file outside output_dir, a second API key: each kept whole."""
    led = _ledger(new_ledger)
    led.insert_jobs([_job(1), _job(2, location="elsewhere: row 2", digest="d2")])
    led.insert_jobs([_job(3, location="/other/jobs.yaml: job 1 (x), row 3 (rows.csv line 4)")])
    other_host = "https://poll.other.test/runs/run_2"
    _run(led, 1, poll_url=f"{BASE}/techniques/portrait-enhancer/runs/run_1", fingerprint="fp1",
         path="/out/portrait-enhancer/row1/image.png")  # fmt: skip
    _run(led, 2, poll_url=other_host, fingerprint="fp2", path="/elsewhere/image.png")
    led.insert_jobs([_job(4)])
    _run(led, 4, poll_url="x", fingerprint="fp1", path="/out/portrait-enhancer/other/image.png")
    raw = led.query(
        "SELECT location, inputs_digest, poll_url, key_fingerprint FROM jobs ORDER BY id"
    )
    assert raw[1] == {"location": "elsewhere: row 2", "inputs_digest": "d2",
                      "poll_url": other_host, "key_fingerprint": "fp2"}  # fmt: skip
    assert raw[2]["location"].startswith("/other/")
    two = led.job(2)
    assert (two.location, two.inputs_digest, two.poll_url, two.key_fingerprint) == (
        "elsewhere: row 2", "d2", other_host, "fp2",
    )  # fmt: skip
    assert led.job(3).location == _job(3, location=raw[2]["location"]).location
    assert [o.path for o in led.outputs(2)] == ["/elsewhere/image.png"]
    assert [o.path for o in led.outputs(4)] == ["/out/portrait-enhancer/other/image.png"]
    paths = led.query("SELECT path FROM outputs ORDER BY id")
    assert [p["path"] for p in paths] == [
        "*.png", "/elsewhere/image.png", "portrait-enhancer/other/image.png",
    ]  # fmt: skip


def test_a_moved_output_dir_keeps_the_files_where_they_were(new_ledger: NewLedger) -> None:
    """The batch saved again with another output_dir: files downloaded before stay at
    their old paths (made whole before the folder changes); new ones go under the new."""
    led = _ledger(new_ledger)
    led.insert_jobs([_job(1)])
    _run(led, 1, poll_url="x", fingerprint="fp", path="/out/portrait-enhancer/row1/image.png")
    led.save_batch(
        "b", manifest_path="/m/jobs.yaml", output_dir="/new", concurrency=None,
        max_cost=None, retry_failed_runs=1,
    )  # fmt: skip
    assert [o.path for o in led.outputs(1)] == ["/out/portrait-enhancer/row1/image.png"]


# -- an 0010 ledger migrated ---------------------------------------------------------------


def _ledger_at_0010(path: Path) -> None:
    """A SQLite ledger as floraq wrote it at step 0010: every value whole."""
    conn = sqlite3.connect(path)
    migrations.apply(Database(conn), stop_before="0011_lean_rows")
    _fill_0010(conn.execute)
    conn.commit()
    conn.close()


def _fill_0010(execute: Callable[..., Any]) -> None:
    """Rows in several states, with outputs, an event and a problem, in 0010's columns."""
    execute(
        "INSERT INTO batches (name, manifest_path, output_dir, retry_failed_runs, created_at,"
        " updated_at) VALUES ('old', '/m/jobs.yaml', '/out', 1, 1.0, 1.0)"
    )
    execute(
        "INSERT INTO techniques (slug, definition, fetched_at, run_cost_micros)"
        " VALUES ('t', '{}', 1.0, 50000)"
    )
    for n, state in enumerate(("downloaded", "failed", "downloaded", "queued"), 1):
        run = None if state == "queued" else f"run_{n}"
        execute(
            "INSERT INTO jobs (batch, technique, job_number, row_number, csv_line, location,"
            " row_key, inputs, inputs_digest, idempotency_key, state, run_id, poll_url,"
            " request_id, error_code, key_fingerprint, estimated_micros, charged_micros,"
            " submitting_at, submitted_at, completed_at, queued_at, updated_at, logged)"
            " VALUES ('old', 't', 1, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 50000, ?,"
            " 2.0, 3.0, 4.0, 1.0, 5.0, ?)",
            (n, n + 1, f"{STEM}, row {n} (rows.csv line {n + 1})", f"r{n}",
             json.dumps({"prompt": f"p {n}"}), f"digest{n}", f"fq1_{n}", state, run,
             run and f"{BASE}/techniques/t/runs/{run}", run and f"req_{n}",
             "boom" if state == "failed" else None, run and "fp", 50000 if run else None,
             int(n == 3)),
        )  # fmt: skip
    execute(
        "INSERT INTO events (at, job_id, batch, kind, detail) VALUES (1.0, 3, 'old', 'queued', ?)",
        (json.dumps({"location": f"{STEM}, row 3 (rows.csv line 4)"}),),
    )
    for n in (1, 3):
        execute(
            "INSERT INTO outputs (job_id, output_id, type, url, url_seen_at, state, path,"
            " bytes, sha256, downloaded_at) VALUES (?, 'image', 'imageUrl', ?, 2.0,"
            " 'downloaded', ?, 3, 'ab', 4.5)",
            (n, f"https://m/{n}.png", f"/out/t/r{n}/image.png"),
        )


def _shown(led: AnyLedger) -> dict[str, Any]:
    """What `status --json`, `export` (CSV and JSONL), `verify` and `history` read."""
    views = led.job_views(["old"])
    columns = Columns(inputs=tuple(led.input_ids(["old"])), outputs=tuple(led.output_ids(["old"])))
    return {
        "status": status_document(status_of(led, ["old"])),
        "csv": [csv_record(v, columns) for v in views],
        "jsonl": [json_record(v) for v in views],
        "files": led.downloaded_files(["old"]),
        "jobs": led.jobs(batches=["old"], states=list(JobState)),
        "history": [led.history(n) for n in range(1, 5)],
    }


def test_a_ledger_at_0010_migrates_and_reads_the_same(tmp_path: Path) -> None:
    path = tmp_path / "floraq.db"
    _ledger_at_0010(path)
    conn = sqlite3.connect(path, isolation_level=None)
    before = _shown(SqliteLedger(conn))  # not migrated: the old schema read as it is
    conn.close()

    led = Ledger.open(path)
    assert not migrations.pending(led.db)
    assert _shown(led) == before
    assert before["files"][0].path == "/out/t/r1/image.png"
    assert led.query("SELECT path FROM outputs ORDER BY id")[0] == {"path": "t/r1/image.png"}
    led.save_batch(
        "b", manifest_path="/m/jobs.yaml", output_dir="/out", concurrency=None,
        max_cost=None, retry_failed_runs=1,
    )  # fmt: skip
    led.insert_jobs([_job(9)])  # new rows of an old ledger are lean
    assert led.query("SELECT location FROM jobs WHERE row_number = 9") == [{"location": ""}]


def test_a_postgres_ledger_at_0010_migrates_and_reads_the_same(
    postgres_schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The PostgreSQL twin of step 0011 on a ledger at 0010: the same reads, paths made
    relative."""
    steps = pg_schema.STEPS
    assert steps[-1][0] == "0011_lean_rows"
    monkeypatch.setattr(pg_schema, "STEPS", steps[:-1])
    led = PostgresLedger.open(postgres_schema)
    try:
        with led.transaction():
            _fill_0010(led.conn.execute)
        before = _shown(led)
        monkeypatch.setattr(pg_schema, "STEPS", steps)
        led.migrate()
        assert pg_schema.pending(pg_schema.applied_steps(led.pg)) == []
        assert _shown(led) == before
        assert before["files"][0].path == "/out/t/r1/image.png"
        paths = led.query("SELECT path FROM outputs ORDER BY id")
        assert paths[0] == {"path": "t/r1/image.png"}
    finally:
        led.close()


def test_pages_of_jobs_use_the_batch_and_state_index_or_the_id_order() -> None:
    """The batch-and-state index leaves downloaded rows out (most of a finished batch):
    pages of other states still seek it, and pages of downloaded rows read in id order
    (never a sort of the whole batch per page)."""
    from floraq.ledger.lean_rows import in_batches, in_states

    led = Ledger.in_memory()

    def plan(states: list[str]) -> str:
        sql = (
            f"EXPLAIN QUERY PLAN SELECT * FROM jobs WHERE {in_batches(['b'], states)}"
            f" AND {in_states(states)} AND id > ? ORDER BY id LIMIT ?"
        )
        return " | ".join(r[3] for r in led.conn.execute(sql, ["b", *states, 0, 500]))

    assert "USING INDEX jobs_batch_state" in plan(["queued", "submitted"])
    assert plan(["downloaded"]) == "SEARCH jobs USING INTEGER PRIMARY KEY (rowid>?)"
    [index] = led.query("SELECT sql FROM sqlite_master WHERE name = 'jobs_batch_state'")
    assert index["sql"].endswith("WHERE state != 'downloaded'")
