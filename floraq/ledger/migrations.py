"""The ledger's schema, as numbered, append-only steps.

Never edit a step that has shipped: add the next one. ``tests/test_ledger.py``
migrates a blank database and every earlier schema to the latest.
"""

from __future__ import annotations

from floraq.errors import LedgerError
from floraq.ledger import lean_step
from floraq.ledger.sqlite_utils_lean import Database, Migrations
from floraq.ledger.totals_sql import (
    TOTALS_COLUMNS,
    TOTALS_SQL,
    TOTALS_WATCHED,
    off_quote,
    quotes_add,
    quotes_remove,
    totals_add,
    totals_remove,
)

migrations = Migrations("floraq")


# The first schema, statement by statement, exactly as it shipped (REAL money columns and
# all: later steps change it, this one never does).
_INITIAL_SCHEMA: tuple[str, ...] = (
    """
        CREATE TABLE batches (
            name TEXT PRIMARY KEY,
            manifest_path TEXT,
            output_dir TEXT NOT NULL,
            concurrency INTEGER,
            max_cost REAL,
            retry_failed_runs INTEGER NOT NULL DEFAULT 1,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL
        )
        """,
    """
        CREATE TABLE techniques (
            slug TEXT PRIMARY KEY,
            definition TEXT NOT NULL,      -- the API's JSON, as cached
            run_cost REAL NOT NULL,
            fetched_at REAL NOT NULL
        )
        """,
    """
        CREATE TABLE jobs (
            id INTEGER PRIMARY KEY,
            batch TEXT NOT NULL REFERENCES batches(name),
            technique TEXT NOT NULL,
            job_number INTEGER NOT NULL,
            row_number INTEGER NOT NULL,
            csv_line INTEGER,
            location TEXT NOT NULL,
            row_key TEXT NOT NULL,          -- names the output folder
            inputs TEXT NOT NULL,           -- canonical JSON: input id -> value
            inputs_digest TEXT NOT NULL,
            attempt INTEGER NOT NULL DEFAULT 1,
            idempotency_key TEXT NOT NULL UNIQUE,
            state TEXT NOT NULL,
            run_id TEXT,
            poll_url TEXT,
            remote_status TEXT,
            progress REAL,
            error_code TEXT,
            error_message TEXT,
            error_fields TEXT,
            failure_tier TEXT,
            request_id TEXT,
            estimated_cost REAL,
            charged_cost REAL,
            auto_retries INTEGER NOT NULL DEFAULT 0,
            polls INTEGER NOT NULL DEFAULT 0,
            submitting_at REAL,             -- when the current intent was committed
            submitted_at REAL,
            completed_at REAL,              -- when we saw it completed (local clock)
            remote_created_at INTEGER,      -- the API's created_at, epoch ms
            remote_completed_at INTEGER,    -- the API's completed_at, epoch ms
            updated_at REAL NOT NULL,
            UNIQUE (batch, technique, row_key)
        )
        """,
    "CREATE INDEX jobs_batch_state ON jobs (batch, state)",
    "CREATE INDEX jobs_state ON jobs (state)",
    """
        CREATE TABLE outputs (
            id INTEGER PRIMARY KEY,
            job_id INTEGER NOT NULL REFERENCES jobs(id),
            output_id TEXT NOT NULL,
            type TEXT NOT NULL,
            url TEXT NOT NULL,
            url_seen_at REAL NOT NULL,
            state TEXT NOT NULL DEFAULT 'pending',   -- pending | downloaded | expired
            path TEXT,
            bytes INTEGER,
            sha256 TEXT,
            content_type TEXT,
            downloaded_at REAL,
            error TEXT,
            UNIQUE (job_id, output_id)
        )
        """,
    """
        CREATE TABLE events (
            id INTEGER PRIMARY KEY,
            at REAL NOT NULL,
            job_id INTEGER,
            batch TEXT,
            kind TEXT NOT NULL,
            detail TEXT
        )
        """,
    "CREATE INDEX events_job ON events (job_id)",
)


@migrations(name="0001_initial")
def m0001_initial(db: Database) -> None:
    for statement in _INITIAL_SCHEMA:
        db.execute(statement)


@migrations(name="0002_attempt_costs")
def m0002_attempt_costs(db: Database) -> None:
    # What earlier attempts of a row cost: `retry` starts a new attempt with a fresh
    # charged_cost, and the money the old run took must still count in every total.
    db.execute("ALTER TABLE jobs ADD COLUMN prior_charged_cost REAL NOT NULL DEFAULT 0")
    # Earlier attempts that may have been charged but never said so (an unsettled charge,
    # an unknown outcome): while any is > 0 the row's charged total is only a floor.
    db.execute("ALTER TABLE jobs ADD COLUMN prior_unsettled INTEGER NOT NULL DEFAULT 0")


@migrations(name="0003_key_fingerprint")
def m0003_key_fingerprint(db: Database) -> None:
    # FLORA keeps idempotency keys per API key: an intent sent under one key must never be
    # re-sent under another. A short hash of the key (never the key) tells them apart.
    db.execute("ALTER TABLE jobs ADD COLUMN key_fingerprint TEXT")
    # Which batches already fill an output folder (checked before every submit).
    db.execute("CREATE INDEX jobs_technique_row_key ON jobs (technique, row_key)")


# Frozen with this step (a later change to the lifecycle adds a step): the states whose
# quote counts against the cap, as core.lifecycle.QUOTE_COMMITTED had them.
_COMMITTED_0004 = (
    "'submitting', 'submitted', 'completed', 'downloaded', 'expired', 'unknown_outcome'"
)


def _committed(row: str, states: str = _COMMITTED_0004) -> str:
    """What one job adds to its batch's committed cost, in micro-dollars (SQL), counting
    the quote of a row in one of ``states`` (a frozen list: each step keeps its own)."""
    return (
        f"({row}.prior_charged_micros + CASE WHEN {row}.charged_micros IS NOT NULL"
        f" THEN {row}.charged_micros WHEN {row}.state IN ({states})"
        f" THEN COALESCE({row}.estimated_micros, 0) ELSE 0 END)"
    )


_MONEY_0004 = {
    "jobs": ("estimated_cost", "charged_cost", "prior_charged_cost"),
    "batches": ("max_cost",),
    "techniques": ("run_cost",),
}


@migrations(name="0004_money_micros")
def m0004_money_micros(db: Database) -> None:
    # Money as integer micro-dollars: REAL sums drift (1,000 x 0.1 != 100). Each REAL is
    # rounded once here; the new columns say their unit, the old ones go.
    for table, columns in _MONEY_0004.items():
        for old in columns:
            new = old.removesuffix("_cost") + ("_cost_micros" if table != "jobs" else "_micros")
            kind = "INTEGER NOT NULL DEFAULT 0" if old == "prior_charged_cost" else "INTEGER"
            db.execute(f"ALTER TABLE {table} ADD COLUMN {new} {kind}")
            db.execute(
                f"UPDATE {table} SET {new} = CAST(ROUND({old} * 1000000) AS INTEGER)"
                f" WHERE {old} IS NOT NULL"
            )
            db.execute(f"ALTER TABLE {table} DROP COLUMN {old}")
    # The cap's figure per batch, kept by triggers in the same transaction as every job
    # write that changes it: a claim reads one row instead of summing the whole batch.
    db.execute("ALTER TABLE batches ADD COLUMN committed_micros INTEGER NOT NULL DEFAULT 0")
    db.execute(
        f"UPDATE batches SET committed_micros = COALESCE((SELECT SUM({_committed('jobs')})"
        " FROM jobs WHERE jobs.batch = batches.name), 0)"
    )
    _create_counter_triggers(db, _COMMITTED_0004)


def _create_counter_triggers(db: Database, states: str) -> None:
    """The three triggers that keep ``batches.committed_micros``, for this state list."""
    for event, delta in (
        ("INSERT", _committed("NEW", states)),
        ("DELETE", f"0 - {_committed('OLD', states)}"),  # a row that goes takes its amount
        ("UPDATE", f"{_committed('NEW', states)} - {_committed('OLD', states)}"),
    ):
        watch = (
            " OF state, estimated_micros, charged_micros, prior_charged_micros"
            if event == "UPDATE"
            else ""
        )
        batch = "OLD" if event == "DELETE" else "NEW"
        db.execute(
            f"CREATE TRIGGER jobs_committed_{event.lower()} AFTER {event}{watch} ON jobs"
            f" WHEN {delta} != 0 BEGIN UPDATE batches SET committed_micros ="
            f" committed_micros + {delta} WHERE name = {batch}.batch; END"
        )


# Step 0004's list and the state a failed download leaves (its run completed, was charged
# or still owes its charge: it counts at its quote until then, as an expired row does).
_COMMITTED_0005 = _COMMITTED_0004 + ", 'download_failed'"


@migrations(name="0005_download_failed")
def m0005_download_failed(db: Database) -> None:
    # No row is in the new state yet, so the counter's figure stands; only the triggers
    # change, in the same transaction, so no write sees them half-replaced.
    for event in ("insert", "delete", "update"):
        db.execute(f"DROP TRIGGER IF EXISTS jobs_committed_{event}")
    _create_counter_triggers(db, _COMMITTED_0005)


@migrations(name="0006_leases")
def m0006_leases(db: Database) -> None:
    # Workers sharing one PostgreSQL ledger lease rows (``floraq.ledger.leases``). SQLite
    # keeps one process per ledger and never fills these; they exist so both backends
    # have the same schema. Times are the database server's clock, epoch seconds.
    db.execute(
        "CREATE TABLE workers (id TEXT PRIMARY KEY, host TEXT NOT NULL, pid INTEGER NOT NULL,"
        " started_at REAL NOT NULL, heartbeat_at REAL NOT NULL, lease_until REAL NOT NULL)"
    )
    db.execute("ALTER TABLE jobs ADD COLUMN lease_owner TEXT")
    db.execute("CREATE INDEX jobs_lease_owner ON jobs (lease_owner)")


@migrations(name="0007_api_limits")
def m0007_api_limits(db: Database) -> None:
    # FLORA's rate limits are per workspace: one row per API host and workspace, shared by
    # every worker, holds the pause after a 429 and the concurrency learned (floraq.core.
    # limits). `workspace` is "key:<fingerprint>" until a manifest names a workspace id;
    # never the key. Times are epoch seconds of the ledger's clock (on PostgreSQL, the
    # server's).
    db.execute(
        """
        CREATE TABLE api_limits (
            api_host TEXT NOT NULL,
            workspace TEXT NOT NULL,
            paused_until REAL,
            concurrency INTEGER,
            recent_429s INTEGER NOT NULL DEFAULT 0,
            updated_at REAL NOT NULL,
            PRIMARY KEY (api_host, workspace)
        )
        """
    )


_ASSETS_0008 = """
    CREATE TABLE assets (
        sha256 TEXT NOT NULL,           -- the content: one asset per content and workspace
        workspace_id TEXT NOT NULL,
        state TEXT NOT NULL,            -- core.local_files.AssetState
        source_path TEXT NOT NULL,      -- the last file seen holding this content
        size INTEGER NOT NULL,
        content_type TEXT NOT NULL,
        attempt INTEGER NOT NULL DEFAULT 1,
        idempotency_key TEXT NOT NULL,  -- of POST /assets, from content, workspace, attempt
        renewals INTEGER NOT NULL DEFAULT 0,  -- reservations renewed with retry
        asset_id TEXT,                  -- committed the moment POST /assets answers
        url TEXT,                       -- what a run takes as the input value
        upload TEXT,                    -- the reservation as JSON (url, form fields, expiry)
        failure_message TEXT,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        ready_at REAL,
        checked_at REAL,                -- when FLORA last said it is ready
        PRIMARY KEY (sha256, workspace_id)
    )
    """


@migrations(name="0008_assets")
def m0008_assets(db: Database) -> None:
    # Local files as inputs (issue 11): each content uploaded once per workspace, its
    # intent on disk before POST /assets; the batch remembers the workspace it uploads to.
    db.execute(_ASSETS_0008)
    db.execute("ALTER TABLE batches ADD COLUMN workspace_id TEXT")


# -- 0009: a lean ledger ------------------------------------------------------------------


@migrations(name="0009_lean")
def m0009_lean(db: Database) -> None:
    # When the row was queued: with it (and the other *_at columns), the job row itself
    # tells a job's moves along the usual path, which then need no event rows.
    db.execute("ALTER TABLE jobs ADD COLUMN queued_at REAL")
    db.execute(
        "UPDATE jobs SET queued_at = (SELECT MIN(e.at) FROM events e"
        " WHERE e.job_id = jobs.id AND e.kind = 'queued')"
    )
    # 1: every move of the job has its event (all rows queued before this step). 0: the
    # moves along the usual path are told by the row; the first other move writes them out.
    db.execute("ALTER TABLE jobs ADD COLUMN logged INTEGER NOT NULL DEFAULT 1")
    # No query uses these (EXPLAIN QUERY PLAN: state is always asked with its batch, and
    # folders of other batches are found through UNIQUE (batch, technique, row_key)).
    db.execute("DROP INDEX IF EXISTS jobs_state")
    db.execute("DROP INDEX IF EXISTS jobs_technique_row_key")
    # `status` totals per batch, technique and state, kept by triggers in the same
    # transaction as every job write: status reads a few rows instead of every job.
    columns = ", ".join(f"{c} INTEGER NOT NULL DEFAULT 0" for c in TOTALS_COLUMNS)
    db.execute(
        f"CREATE TABLE state_totals (batch TEXT NOT NULL, technique TEXT NOT NULL,"
        f" state TEXT NOT NULL, {columns}, PRIMARY KEY (batch, technique, state))"
    )
    sums = ", ".join(f"SUM({sql.format(r='jobs')})" for _, sql in TOTALS_SQL)
    db.execute(
        f"INSERT INTO state_totals (batch, technique, state, {', '.join(TOTALS_COLUMNS)})"
        f" SELECT batch, technique, state, {sums} FROM jobs GROUP BY batch, technique, state"
    )
    # The quotes `status` compares with today's run_cost, counted the same way.
    db.execute(
        "CREATE TABLE quote_totals (batch TEXT NOT NULL, technique TEXT NOT NULL,"
        " quote INTEGER NOT NULL, n INTEGER NOT NULL DEFAULT 0,"
        " differs INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (batch, technique, quote))"
    )
    db.execute(
        f"INSERT INTO quote_totals (batch, technique, quote, n, differs)"
        f" SELECT batch, technique, estimated_micros, COUNT(*), SUM({off_quote('jobs')})"
        " FROM jobs WHERE estimated_micros IS NOT NULL"
        " GROUP BY batch, technique, estimated_micros"
    )
    add = f"{totals_add('NEW')}; {quotes_add('NEW')}"
    remove = f"{totals_remove('OLD')}; {quotes_remove('OLD')}"
    for event, body in (("INSERT", add), ("DELETE", remove), ("UPDATE", f"{remove}; {add}")):
        watch = f" OF {TOTALS_WATCHED}" if event == "UPDATE" else ""
        db.execute(
            f"CREATE TRIGGER jobs_totals_{event.lower()} AFTER {event}{watch} ON jobs"
            f" BEGIN {body}; END"
        )


@migrations(name="0010_polling")
def m0010_polling(db: Database) -> None:
    # When each run started by the API's clock (epoch ms): how long runs take once they
    # have a slot, without the wait in the queue, is what the next night's poll schedule
    # starts from (core.poll_aim.first_look).
    db.execute("ALTER TABLE jobs ADD COLUMN remote_started_at INTEGER")


@migrations(name="0011_lean_rows")
def m0011_lean_rows(db: Database) -> None:
    # Rows store only what cannot be rebuilt (floraq.ledger.lean_rows; the step: lean_step).
    for statement in lean_step.statements(identity="INTEGER PRIMARY KEY"):
        db.execute(statement)


# Every step this floraq knows, in order: a ledger that has applied one not listed here was
# written by a newer floraq, and is refused rather than half-understood.
MIGRATION_NAMES: tuple[str, ...] = tuple(m.name for m in migrations.pending(Database(memory=True)))


def refuse_if_foreign(
    tables: list[str], applied: list[str], *, bookkeeping: str, shown: str, kind: str
) -> None:
    """A LedgerError unless these tables and applied steps are a floraq ledger we can read.

    Shared by both backends. Not ours: tables but no floraq steps (another program's
    database, pointed at by mistake; the migrations table ``bookkeeping`` alone is a first
    start cut short), or a step this floraq does not know (a newer floraq wrote it).
    ``kind`` names the database ("SQLite database", "PostgreSQL database").
    """
    others = sorted(set(tables) - {bookkeeping})
    if others and not applied:
        listed = ", ".join(others[:5]) + (", ..." if len(others) > 5 else "")
        where = "file" if kind.startswith("SQLite") else "database"
        raise LedgerError(
            f"{shown} is a {kind} but not a floraq ledger (its tables: {listed});"
            f" it was left untouched: point --ledger / FLORAQ_LEDGER at another {where}"
        )
    unknown = [name for name in applied if name not in MIGRATION_NAMES]
    if unknown:
        raise LedgerError(
            f"the ledger {shown} was written by a newer floraq (schema step {unknown[0]} is"
            " unknown to this one); it was left untouched: upgrade floraq to use it"
        )
