"""The ledger: migrations, atomic checked transitions, file permissions, no secrets."""

from __future__ import annotations

import hashlib
import sqlite3
import stat
from decimal import Decimal
from pathlib import Path

import pytest
from ledgers import AnyLedger, NewLedger

from floraq.core.lifecycle import IllegalTransition, JobState
from floraq.errors import LedgerBusy, LedgerError
from floraq.ledger import Ledger, NewJob, SeenRows
from floraq.ledger.migrations import MIGRATION_NAMES, migrations
from floraq.lock import LedgerLock


def new_job(n: int = 1, *, batch: str = "b", key: str | None = None) -> NewJob:
    return NewJob(
        batch=batch,
        technique="portrait-enhancer",
        job_number=1,
        row_number=n,
        csv_line=None,
        location=f"jobs.yaml: job 1 (portrait-enhancer), row {n}",
        row_key=f"row{n}",
        inputs={"input_image": f"https://storage.googleapis.com/x/{n}.jpg"},
        inputs_digest=f"digest{n}",
        idempotency_key=key or f"fq1_key{n}",
        estimated_cost=Decimal("0.05"),
    )


@pytest.fixture
def ledger(new_ledger: NewLedger) -> AnyLedger:
    """A ledger with batch ``b``, on each backend."""
    led = new_ledger()
    led.save_batch(
        "b",
        manifest_path=None,
        output_dir="/out",
        concurrency=None,
        max_cost=None,
        retry_failed_runs=1,
    )
    return led


def test_blank_database_migrates_to_latest(tmp_path: Path) -> None:
    """A new ledger has every table and records every migration as applied."""
    led = Ledger.open(tmp_path / "state" / "floraq.db")
    tables = {r["name"] for r in led.query("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"batches", "techniques", "jobs", "outputs", "events"} <= tables
    assert not migrations.pending(led.db)


def test_reopening_migrates_nothing_twice(tmp_path: Path) -> None:
    """Opening an up-to-date ledger again applies no migration and keeps the rows."""
    path = tmp_path / "floraq.db"
    led = Ledger.open(path)
    led.save_batch(
        "b", manifest_path=None, output_dir="/o", concurrency=2, max_cost=None, retry_failed_runs=1
    )
    led.insert_jobs([new_job()])
    led.close()
    again = Ledger.open(path)
    assert again.query("SELECT COUNT(*) AS n FROM jobs")[0]["n"] == 1
    assert len(migrations.applied(again.db)) == len(migrations._migrations)


def test_ledger_uses_wal_and_full_sync(tmp_path: Path) -> None:
    """WAL + synchronous=FULL: a committed run id survives a power cut."""
    led = Ledger.open(tmp_path / "floraq.db")
    assert led.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert led.conn.execute("PRAGMA synchronous").fetchone()[0] == 2


def test_ledger_files_are_user_only(tmp_path: Path) -> None:
    """The ledger folder is 0700 and the database, its WAL and SHM are 0600."""
    path = tmp_path / "state" / "floraq.db"
    led = Ledger.open(path)
    led.save_batch(
        "b",
        manifest_path=None,
        output_dir="/o",
        concurrency=None,
        max_cost=None,
        retry_failed_runs=1,
    )
    led.close()
    Ledger.open(path)
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    for name in ("floraq.db", "floraq.db-wal", "floraq.db-shm"):
        assert stat.S_IMODE((path.parent / name).stat().st_mode) == 0o600, name


def test_insert_is_idempotent_per_row(ledger: AnyLedger) -> None:
    """Queuing the same rows twice inserts them once."""
    assert ledger.insert_jobs([new_job(1), new_job(2)]) == 2
    assert ledger.insert_jobs([new_job(1), new_job(2), new_job(3)]) == 1


def test_move_follows_the_lifecycle(ledger: AnyLedger) -> None:
    """Allowed moves update the row and append an event."""
    ledger.insert_jobs([new_job()])
    ledger.move(1, JobState.QUEUED, JobState.SUBMITTING, submitting_at=1.0)
    ledger.move(1, JobState.SUBMITTING, JobState.SUBMITTED, run_id="j57abc")
    job = ledger.job(1)
    assert (job.state, job.run_id, job.submitting_at) == (JobState.SUBMITTED, "j57abc", 1.0)
    kinds = [e["kind"] for e in ledger.history(1)]  # the audit trail: events + the row
    assert kinds == ["queued", "queued->submitting", "submitting->submitted"]


def test_illegal_move_is_refused_with_reason(ledger: AnyLedger) -> None:
    """A job cannot be downloaded before it has a run."""
    ledger.insert_jobs([new_job()])
    with pytest.raises(IllegalTransition, match="a job in state queued cannot move to downloaded"):
        ledger.move(1, JobState.QUEUED, JobState.DOWNLOADED)
    assert ledger.job(1).state is JobState.QUEUED


def test_move_from_a_stale_state_fails(ledger: AnyLedger) -> None:
    """A move whose starting state is no longer true changes nothing."""
    ledger.insert_jobs([new_job()])
    ledger.move(1, JobState.QUEUED, JobState.SUBMITTING)
    with pytest.raises(LedgerError, match="was not in state queued"):
        ledger.move(1, JobState.QUEUED, JobState.SUBMITTING)


def test_transaction_rolls_back_as_a_whole(ledger: AnyLedger) -> None:
    """A failure inside a transaction leaves none of its writes behind."""
    ledger.insert_jobs([new_job()])
    with pytest.raises(RuntimeError), ledger.transaction():
        ledger.move(1, JobState.QUEUED, JobState.SUBMITTING)
        raise RuntimeError("boom")
    assert ledger.job(1).state is JobState.QUEUED


def test_fresh_output_urls_replace_expired_ones(ledger: AnyLedger) -> None:
    """A re-poll's URL replaces the old one and makes an expired output pending again."""
    ledger.insert_jobs([new_job()])
    ledger.record_outputs(1, [("output_image", "imageUrl", "https://a/1")])
    ledger.output_expired(1, "output_image", "403")
    ledger.record_outputs(1, [("output_image", "imageUrl", "https://a/2")])
    (out,) = ledger.outputs(1)
    assert (out.url, out.state) == ("https://a/2", "pending")


def test_typical_durations_use_the_api_clock(ledger: AnyLedger) -> None:
    """Durations come from the API's created/completed timestamps."""
    ledger.insert_jobs([new_job()])
    ledger.update(1, remote_created_at=1_000, remote_completed_at=31_000)
    assert ledger.typical_durations("portrait-enhancer") == [30.0]


def test_typical_run_times_leave_out_the_wait_for_a_slot(ledger: AnyLedger) -> None:
    """Run times go from the API's started_at (after the queue) to completed_at, across nights."""
    ledger.insert_jobs([new_job(), new_job(2)])
    ledger.update(1, remote_created_at=1_000, remote_started_at=21_000, remote_completed_at=31_000)
    ledger.update(2, remote_created_at=1_000, remote_completed_at=9_000)  # no started_at
    assert ledger.typical_run_times("portrait-enhancer") == [10.0]
    assert sorted(ledger.typical_durations("portrait-enhancer")) == [8.0, 30.0]


def test_lock_refuses_a_second_holder(tmp_path: Path) -> None:
    """A second process (here: a second lock object) gets LedgerBusy at once."""
    path = tmp_path / "floraq.db"
    with LedgerLock(path), pytest.raises(LedgerBusy, match="another floraq process"):
        LedgerLock(path).acquire()
    with LedgerLock(path):
        pass


def test_unreadable_ledger_is_a_clear_error(tmp_path: Path) -> None:
    """A file that is not SQLite gives a one-line LedgerError, not a traceback."""
    path = tmp_path / "floraq.db"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(LedgerError, match="cannot open the ledger"):
        Ledger.open(path)


def test_no_sqlite_error_escapes_as_is(tmp_path: Path) -> None:
    """sqlite3 errors on open are translated (they would print tracebacks)."""
    path = tmp_path / "floraq.db"
    path.write_bytes(b"x" * 4096)
    try:
        Ledger.open(path)
    except LedgerError as e:
        assert str(e).startswith(f"cannot open the ledger {path}")
    except sqlite3.Error as e:  # pragma: no cover - the failure this test exists for
        pytest.fail(f"raw sqlite3 error escaped: {e}")
    else:  # pragma: no cover - a garbage file must never open as a ledger
        pytest.fail("a file that is not SQLite opened as a ledger")


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_another_programs_database_is_refused_and_left_untouched(tmp_path: Path) -> None:
    """A SQLite file with tables but no floraq schema: one-line error, not a byte changed."""
    path = tmp_path / "crm.db"
    other = sqlite3.connect(path)
    other.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, email TEXT)")
    other.execute("INSERT INTO customers (email) VALUES ('a@example.com')")
    other.commit()
    other.close()
    before = _sha(path)
    for opener in (Ledger.open, Ledger.open_readonly):
        with pytest.raises(
            LedgerError,
            match=r"crm\.db is a SQLite database but not a floraq"
            r" ledger \(its tables: customers\); it was left untouched",
        ):
            opener(path)
    assert _sha(path) == before
    assert not path.with_name("crm.db-wal").exists()


def test_a_ledger_from_a_newer_floraq_is_refused_and_left_untouched(tmp_path: Path) -> None:
    """A schema step this floraq does not know means a newer floraq wrote the ledger."""
    path = tmp_path / "floraq.db"
    Ledger.open(path).close()
    conn = sqlite3.connect(path)
    conn.execute(
        "INSERT INTO _sqlite_migrations (migration_set, name, applied_at)"
        " VALUES ('floraq', '0099_from_the_future', 'later')"
    )
    conn.commit()
    conn.close()
    before = _sha(path)
    with pytest.raises(
        LedgerError,
        match=r"written by a newer floraq \(schema step"
        r" 0099_from_the_future is unknown to this one\)",
    ):
        Ledger.open(path)
    assert _sha(path) == before


def test_an_empty_database_or_one_cut_before_its_first_step_is_a_new_ledger(
    tmp_path: Path,
) -> None:
    """No tables, or only the migrations table a killed first start left: migrated as new."""
    empty = tmp_path / "empty.db"
    sqlite3.connect(empty).close()
    cut = tmp_path / "cut.db"
    conn = sqlite3.connect(cut)
    conn.execute(
        "CREATE TABLE _sqlite_migrations (id INTEGER PRIMARY KEY, migration_set TEXT,"
        " name TEXT, applied_at TEXT)"
    )
    conn.commit()
    conn.close()
    for path in (empty, cut):
        ledger = Ledger.open(path)
        assert ledger.batch_names() == []
        ledger.close()


def test_reading_an_up_to_date_ledger_writes_nothing_to_it(tmp_path: Path) -> None:
    """`open_for_reading` opens with SQLite's mode=ro: the file's bytes do not change."""
    path = tmp_path / "floraq.db"
    writer = Ledger.open(path)
    writer.save_batch(
        "b",
        manifest_path=None,
        output_dir="/out",
        concurrency=None,
        max_cost=None,
        retry_failed_runs=1,
    )
    writer.insert_jobs([new_job(1)])
    writer.close()
    before = _sha(path)
    reader = Ledger.open_for_reading(path)
    assert [j.id for j in reader.jobs(batches=["b"], states=[JobState.QUEUED])] == [1]
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        reader.conn.execute("DELETE FROM jobs")
    reader.close()
    assert _sha(path) == before


def _one_step_behind(path: Path) -> None:
    Ledger.open(path).close()
    conn = sqlite3.connect(path)
    conn.execute(
        f"DELETE FROM {migrations.migrations_table} WHERE name = ?", (MIGRATION_NAMES[-1],)
    )
    conn.commit()
    conn.close()


def test_a_read_only_ledger_that_needs_a_migration_is_refused_untouched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Simulated at the open (root ignores file modes): one line, saying to open it writable."""
    path = tmp_path / "floraq.db"
    _one_step_behind(path)
    before = _sha(path)
    monkeypatch.setattr("floraq.ledger.sqlite.writable", lambda _: False)
    with pytest.raises(LedgerError, match=r"is read-only: open it writable once"):
        Ledger.open_for_reading(path)
    assert _sha(path) == before


def test_a_writer_refuses_a_read_only_ledger_before_creating_its_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every writing command takes the lock first: it names the ledger and what can read it."""
    path = tmp_path / "floraq.db"
    Ledger.open(path).close()
    monkeypatch.setattr("floraq.lock.writable", lambda _: False)
    with pytest.raises(LedgerError, match=r"floraq\.db is read-only \(.*\): `status`"):
        LedgerLock(path).acquire()
    assert not path.with_name("floraq.db.lock").exists()


def test_seen_rows_remember_every_value_across_runs_on_disk(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Values that went to disk as sorted runs are still found; the first claim keeps its place."""
    from floraq.ledger import seen as seen_module

    monkeypatch.setattr(seen_module, "_BUFFERED", 7)  # a run every 7 values
    with SeenRows() as seen:
        for start in range(0, 100, 10):
            keys = [f"k{n}" for n in range(start, start + 10)]
            assert seen.known_keys(keys) == set()
            claims = [("tech", f"f{n}", f"row {n}") for n in range(start, start + 10)]
            assert seen.folder_owners("tech", [f for _, f, _ in claims]) == {}
            seen.add(keys, claims)
        assert seen.known_keys(["k0", "k55", "k99", "k100", "nope"]) == {"k0", "k55", "k99"}
        seen.add([], [("tech", "f3", "a later row")])  # a second claim does not replace
        assert seen.folder_owners("tech", ["f3", "f98", "f100"]) == {
            "f3": "row 3",
            "f98": "row 98",
        }
        assert seen.folder_owners("other", ["f3"]) == {}
