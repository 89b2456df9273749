"""The SQLite ledger: the source of truth for every batch, job, run and output.

WAL with ``synchronous=FULL``: a commit is on disk when it returns, because a lost
run id can mean paying for the run twice after a power cut. Writes happen in
``BEGIN IMMEDIATE`` transactions (take the write lock up front, never upgrade
half-way). Every job move is checked against the lifecycle table and appended to
``events``. No API key is ever written here.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlite_utils import Database

from floraq.core.lifecycle import JobState, check_transition
from floraq.errors import LedgerError
from floraq.lock import ensure_private_dir
from floraq.migrations import migrations

BUSY_TIMEOUT_MS = 10_000

# Columns a move may set, so a typo in the runner fails loudly instead of silently.
_MOVE_FIELDS = frozenset(
    {
        "run_id",
        "poll_url",
        "remote_status",
        "progress",
        "error_code",
        "error_message",
        "error_fields",
        "failure_tier",
        "request_id",
        "estimated_cost",
        "charged_cost",
        "auto_retries",
        "polls",
        "submitting_at",
        "submitted_at",
        "completed_at",
        "remote_created_at",
        "remote_completed_at",
        "attempt",
        "idempotency_key",
        "key_fingerprint",
    }
)


@dataclass(frozen=True, slots=True)
class NewJob:
    """A validated row, ready to be queued."""

    batch: str
    technique: str
    job_number: int
    row_number: int
    csv_line: int | None
    location: str
    row_key: str
    inputs: Mapping[str, str]
    inputs_digest: str
    idempotency_key: str
    estimated_cost: float


@dataclass(frozen=True, slots=True)
class JobRecord:
    """One job as the runner sees it."""

    id: int
    batch: str
    technique: str
    location: str
    row_key: str
    inputs: Mapping[str, str]
    inputs_digest: str
    attempt: int
    idempotency_key: str
    state: JobState
    run_id: str | None
    poll_url: str | None
    estimated_cost: float | None
    charged_cost: float | None
    submitting_at: float | None
    submitted_at: float | None
    completed_at: float | None
    auto_retries: int
    polls: int
    key_fingerprint: str | None = None  # of the API key the intent was committed under

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> JobRecord:
        return cls(
            id=row["id"],
            batch=row["batch"],
            technique=row["technique"],
            location=row["location"],
            row_key=row["row_key"],
            inputs=json.loads(row["inputs"]),
            inputs_digest=row["inputs_digest"],
            attempt=row["attempt"],
            idempotency_key=row["idempotency_key"],
            state=JobState(row["state"]),
            run_id=row["run_id"],
            poll_url=row["poll_url"],
            estimated_cost=row["estimated_cost"],
            charged_cost=row["charged_cost"],
            submitting_at=row["submitting_at"],
            submitted_at=row["submitted_at"],
            completed_at=row["completed_at"],
            auto_retries=row["auto_retries"],
            polls=row["polls"],
            key_fingerprint=row["key_fingerprint"],
        )


@dataclass(frozen=True, slots=True)
class OutputRecord:
    job_id: int
    output_id: str
    type: str
    url: str
    url_seen_at: float
    state: str  # pending | downloaded | expired
    path: str | None
    bytes: int | None
    sha256: str | None


class Ledger:
    """Owns the SQLite file: migrates on open, every transition atomic."""

    def __init__(self, conn: sqlite3.Connection, *, clock: Callable[[], float] = time.time) -> None:
        self.conn = conn
        self.conn.row_factory = sqlite3.Row
        self.db = Database(conn)
        self.clock = clock
        self.commits = 0

    @classmethod
    def open(cls, path: Path, *, clock: Callable[[], float] = time.time) -> Ledger:
        """Open (creating user-only if new) and migrate the ledger at ``path``."""
        ensure_private_dir(path.parent)
        if not path.exists():
            os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
        try:
            conn = sqlite3.connect(path, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000)
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA foreign_keys = ON")
        except sqlite3.DatabaseError as e:
            raise LedgerError(f"cannot open the ledger {path}: {e}") from None
        if mode != "wal":
            raise LedgerError(f"the ledger {path} cannot use WAL mode (got {mode})")
        ledger = cls(conn, clock=clock)
        ledger.migrate()
        for suffix in ("-wal", "-shm"):
            side = path.with_name(path.name + suffix)
            if side.exists():
                side.chmod(0o600)
        return ledger

    @classmethod
    def open_readonly(cls, path: Path) -> Ledger | None:
        """Open an existing, up-to-date ledger for reading only; None if there is none yet."""
        if not path.exists():
            return None
        try:
            conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            ledger = cls(conn)
            if migrations.pending(ledger.db):
                conn.close()
                return None
        except sqlite3.DatabaseError as e:
            raise LedgerError(f"cannot read the ledger {path}: {e}") from None
        return ledger

    @classmethod
    def in_memory(cls, *, clock: Callable[[], float] = time.time) -> Ledger:
        ledger = cls(sqlite3.connect(":memory:", isolation_level=None), clock=clock)
        ledger.migrate()
        return ledger

    def migrate(self) -> None:
        try:
            migrations.apply(self.db)
        except sqlite3.DatabaseError as e:
            raise LedgerError(f"cannot migrate the ledger: {e}") from None

    def close(self) -> None:
        self.conn.close()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """One ``BEGIN IMMEDIATE`` transaction; nested calls join the outer one."""
        if self.conn.in_transaction:
            yield
            return
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")
        self.commits += 1

    def integrity_ok(self) -> bool:
        return bool(self.conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok")

    # -- batches and techniques ---------------------------------------------------

    def save_batch(
        self,
        name: str,
        *,
        manifest_path: str | None,
        output_dir: str,
        concurrency: int | None,
        max_cost: float | None,
        retry_failed_runs: int,
    ) -> None:
        now = self.clock()
        with self.transaction():
            self.conn.execute(
                """
                INSERT INTO batches (name, manifest_path, output_dir, concurrency, max_cost,
                                     retry_failed_runs, created_at, updated_at)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?)
                ON CONFLICT (name) DO UPDATE SET manifest_path = excluded.manifest_path,
                    output_dir = excluded.output_dir, concurrency = excluded.concurrency,
                    max_cost = excluded.max_cost, retry_failed_runs = excluded.retry_failed_runs,
                    updated_at = excluded.updated_at
                """,
                (
                    name,
                    manifest_path,
                    output_dir,
                    concurrency,
                    max_cost,
                    retry_failed_runs,
                    now,
                    now,
                ),
            )

    def batch(self, name: str) -> dict[str, Any] | None:
        row = self.conn.execute("SELECT * FROM batches WHERE name = ?", (name,)).fetchone()
        return dict(row) if row else None

    def batch_names(self) -> list[str]:
        return [r[0] for r in self.conn.execute("SELECT name FROM batches ORDER BY created_at")]

    def save_technique(self, slug: str, definition: Mapping[str, Any], run_cost: float) -> None:
        with self.transaction():
            self.conn.execute(
                """
                INSERT INTO techniques (slug, definition, run_cost, fetched_at) VALUES (?, ?, ?, ?)
                ON CONFLICT (slug) DO UPDATE SET definition = excluded.definition,
                    run_cost = excluded.run_cost, fetched_at = excluded.fetched_at
                """,
                (slug, json.dumps(definition, sort_keys=True), run_cost, self.clock()),
            )

    def techniques_used(self, batches: Sequence[str]) -> list[str]:
        """The technique slugs the jobs of these batches run."""
        if not batches:
            return []
        marks = ",".join("?" * len(batches))
        rows = self.conn.execute(
            f"SELECT DISTINCT technique FROM jobs WHERE batch IN ({marks}) ORDER BY technique",
            list(batches),
        )
        return [r[0] for r in rows]

    def technique(self, slug: str) -> dict[str, Any] | None:
        row = self.conn.execute(
            "SELECT definition FROM techniques WHERE slug = ?", (slug,)
        ).fetchone()
        return dict(json.loads(row[0])) if row else None

    # -- jobs -------------------------------------------------------------------------

    def existing_rows(self, batch: str, technique: str, row_keys: Sequence[str]) -> dict[str, str]:
        """row_key -> inputs_digest for the rows of this batch and technique already known."""
        found: dict[str, str] = {}
        for start in range(0, len(row_keys), 500):
            chunk = list(row_keys[start : start + 500])
            marks = ",".join("?" * len(chunk))
            for row in self.conn.execute(
                f"SELECT row_key, inputs_digest FROM jobs WHERE batch = ? AND technique = ?"
                f" AND row_key IN ({marks})",
                [batch, technique, *chunk],
            ):
                found[row[0]] = row[1]
        return found

    def folders_of_other_batches(
        self, batch: str, output_dir: str, technique: str, row_keys: Sequence[str]
    ) -> dict[str, str]:
        """row_key -> the other batch whose outputs already live in that folder."""
        found: dict[str, str] = {}
        for start in range(0, len(row_keys), 500):
            chunk = list(row_keys[start : start + 500])
            marks = ",".join("?" * len(chunk))
            for row in self.conn.execute(
                f"SELECT j.row_key, j.batch FROM jobs j JOIN batches b ON b.name = j.batch"
                f" WHERE b.output_dir = ? AND j.batch != ? AND j.technique = ?"
                f" AND j.row_key IN ({marks})",
                [output_dir, batch, technique, *chunk],
            ):
                found.setdefault(row[0], row[1])
        return found

    def insert_jobs(self, jobs: Iterable[NewJob]) -> int:
        """Queue new jobs in one transaction; rows already in the ledger are left alone."""
        now = self.clock()
        inserted = 0
        with self.transaction():
            for job in jobs:
                cur = self.conn.execute(
                    """
                    INSERT OR IGNORE INTO jobs (batch, technique, job_number, row_number, csv_line,
                        location, row_key, inputs, inputs_digest, idempotency_key, state,
                        estimated_cost, updated_at)
                    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                    """,
                    (
                        job.batch,
                        job.technique,
                        job.job_number,
                        job.row_number,
                        job.csv_line,
                        job.location,
                        job.row_key,
                        json.dumps(dict(job.inputs), sort_keys=True, ensure_ascii=False),
                        job.inputs_digest,
                        job.idempotency_key,
                        JobState.QUEUED.value,
                        job.estimated_cost,
                        now,
                    ),
                )
                if cur.rowcount:
                    inserted += 1
                    self._event(cur.lastrowid, job.batch, "queued", {"location": job.location})
        return inserted

    def jobs(
        self,
        *,
        batches: Sequence[str],
        states: Iterable[JobState],
        after_id: int = 0,
        limit: int = 500,
    ) -> list[JobRecord]:
        """A page of jobs in the given states, in id order (for streaming through big batches)."""
        state_list = [s.value for s in states]
        if not batches or not state_list:
            return []
        rows = self.conn.execute(
            f"SELECT * FROM jobs WHERE batch IN ({','.join('?' * len(batches))})"
            f" AND state IN ({','.join('?' * len(state_list))}) AND id > ?"
            " ORDER BY id LIMIT ?",
            [*batches, *state_list, after_id, limit],
        ).fetchall()
        return [JobRecord.from_row(r) for r in rows]

    def job(self, job_id: int) -> JobRecord:
        row = self.conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise LedgerError(f"no job {job_id} in the ledger")
        return JobRecord.from_row(row)

    def move(self, job_id: int, current: JobState, new: JobState, **fields: Any) -> None:
        """Move a job between states (checked), setting ``fields``; joins any open transaction."""
        check_transition(current, new)
        unknown = set(fields) - _MOVE_FIELDS
        if unknown:
            raise ValueError(f"not job fields: {sorted(unknown)}")
        now = self.clock()
        assignments = ", ".join(f"{name} = ?" for name in fields)
        sql = f"UPDATE jobs SET state = ?, updated_at = ?{', ' if fields else ''}{assignments}"
        with self.transaction():
            cur = self.conn.execute(
                sql + " WHERE id = ? AND state = ?",
                [new.value, now, *fields.values(), job_id, current.value],
            )
            if cur.rowcount != 1:
                raise LedgerError(
                    f"job {job_id} was not in state {current} (another process changed it?)"
                )
            detail = {k: v for k, v in fields.items() if k not in ("polls", "progress")}
            self._event(job_id, None, f"{current}->{new}", detail)

    def update(self, job_id: int, **fields: Any) -> None:
        """Record progress that does not change the state (polls, progress, late cost)."""
        unknown = set(fields) - _MOVE_FIELDS
        if unknown:
            raise ValueError(f"not job fields: {sorted(unknown)}")
        assignments = ", ".join(f"{name} = ?" for name in fields)
        with self.transaction():
            self.conn.execute(
                f"UPDATE jobs SET updated_at = ?, {assignments} WHERE id = ?",
                [self.clock(), *fields.values(), job_id],
            )

    def event(self, job_id: int | None, batch: str | None, kind: str, detail: Any = None) -> None:
        with self.transaction():
            self._event(job_id, batch, kind, detail)

    def _event(self, job_id: int | None, batch: str | None, kind: str, detail: Any) -> None:
        self.conn.execute(
            "INSERT INTO events (at, job_id, batch, kind, detail) VALUES (?, ?, ?, ?, ?)",
            (
                self.clock(),
                job_id,
                batch,
                kind,
                None if detail is None else json.dumps(detail, sort_keys=True, default=str),
            ),
        )

    # -- outputs ----------------------------------------------------------------------

    def record_outputs(self, job_id: int, outputs: Iterable[tuple[str, str, str]]) -> None:
        """Store (output_id, type, url) as seen on the latest poll; fresh URLs replace old ones."""
        now = self.clock()
        with self.transaction():
            for output_id, output_type, url in outputs:
                self.conn.execute(
                    """
                    INSERT INTO outputs (job_id, output_id, type, url, url_seen_at)
                    VALUES (?, ?, ?, ?, ?)
                    ON CONFLICT (job_id, output_id) DO UPDATE SET url = excluded.url,
                        type = excluded.type, url_seen_at = excluded.url_seen_at,
                        state = CASE WHEN state = 'expired' THEN 'pending' ELSE state END
                    """,
                    (job_id, output_id, output_type, url, now),
                )

    def outputs(self, job_id: int) -> list[OutputRecord]:
        rows = self.conn.execute(
            "SELECT * FROM outputs WHERE job_id = ? ORDER BY id", (job_id,)
        ).fetchall()
        return [
            OutputRecord(
                job_id=r["job_id"],
                output_id=r["output_id"],
                type=r["type"],
                url=r["url"],
                url_seen_at=r["url_seen_at"],
                state=r["state"],
                path=r["path"],
                bytes=r["bytes"],
                sha256=r["sha256"],
            )
            for r in rows
        ]

    def output_downloaded(
        self,
        job_id: int,
        output_id: str,
        *,
        path: str,
        size: int,
        sha256: str,
        content_type: str | None,
    ) -> None:
        with self.transaction():
            self.conn.execute(
                """
                UPDATE outputs SET state = 'downloaded', path = ?, bytes = ?, sha256 = ?,
                    content_type = ?, downloaded_at = ?, error = NULL
                WHERE job_id = ? AND output_id = ?
                """,
                (path, size, sha256, content_type, self.clock(), job_id, output_id),
            )

    def output_expired(self, job_id: int, output_id: str, error: str) -> None:
        with self.transaction():
            self.conn.execute(
                "UPDATE outputs SET state = 'expired', error = ?"
                " WHERE job_id = ? AND output_id = ?",
                (error, job_id, output_id),
            )

    def output_missing(self, job_id: int, output_id: str) -> None:
        """A downloaded file is gone or changed on disk: fetch it again."""
        with self.transaction():
            self.conn.execute(
                "UPDATE outputs SET state = 'pending' WHERE job_id = ? AND output_id = ?",
                (job_id, output_id),
            )

    # -- reading for status -------------------------------------------------------------

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        return [dict(r) for r in self.conn.execute(sql, params).fetchall()]

    def committed_cost(self, batch: str) -> float:
        """What a batch has spent or may be spending: the figure its cost cap guards.

        Charged runs count at their charge (earlier attempts included); runs in flight,
        finished runs whose charge has not settled, and unknown outcomes (a run may
        exist) count at their quote.
        """
        row = self.conn.execute(
            """
            SELECT COALESCE(SUM(prior_charged_cost + CASE
                WHEN charged_cost IS NOT NULL THEN charged_cost
                WHEN state IN ('submitting', 'submitted', 'completed', 'downloaded',
                               'expired', 'unknown_outcome')
                    THEN COALESCE(estimated_cost, 0)
                ELSE 0 END), 0)
            FROM jobs WHERE batch = ?
            """,
            (batch,),
        ).fetchone()
        return float(row[0])

    def state_counts(self, batches: Sequence[str]) -> list[dict[str, Any]]:
        """Rows, quotes, charges and unsettled charges per batch, technique and state."""
        if not batches:
            return []
        marks = ",".join("?" * len(batches))
        return self.query(
            f"""
            SELECT batch, technique, state, COUNT(*) AS n,
                COALESCE(SUM(estimated_cost), 0) AS estimated,
                COALESCE(SUM(COALESCE(charged_cost, 0) + prior_charged_cost), 0) AS charged,
                SUM(prior_unsettled + CASE WHEN state = 'unknown_outcome' OR (state IN
                    ('completed', 'downloaded', 'expired') AND charged_cost IS NULL)
                    THEN 1 ELSE 0 END) AS unsettled
            FROM jobs WHERE batch IN ({marks})
            GROUP BY batch, technique, state ORDER BY batch, technique, state
            """,
            list(batches),
        )

    def problem_rows(self, batches: Sequence[str]) -> list[dict[str, Any]]:
        """Every failed, rejected, unknown or expired row, with what support will ask for."""
        if not batches:
            return []
        marks = ",".join("?" * len(batches))
        return self.query(
            f"""
            SELECT batch, technique, location, state, run_id, error_code, error_message,
                error_fields, failure_tier, request_id, attempt
            FROM jobs WHERE batch IN ({marks}) AND state IN ('failed', 'rejected',
                'unknown_outcome', 'expired')
            ORDER BY id
            """,
            list(batches),
        )

    def job_id_for_key(self, key: str) -> int:
        row = self.conn.execute("SELECT id FROM jobs WHERE idempotency_key = ?", (key,)).fetchone()
        if row is None:
            raise LedgerError(f"no job with idempotency key {key}")
        return int(row[0])

    def typical_durations(self, technique: str, limit: int = 50) -> list[float]:
        """Creation-to-completion seconds of this technique's recent runs, by the API's clock."""
        rows = self.conn.execute(
            """
            SELECT (remote_completed_at - remote_created_at) / 1000.0 FROM jobs
            WHERE technique = ? AND remote_completed_at IS NOT NULL
                AND remote_created_at IS NOT NULL
            ORDER BY id DESC LIMIT ?
            """,
            (technique, limit),
        ).fetchall()
        return [float(r[0]) for r in rows if r[0] is not None and r[0] >= 0]

    # -- attempts, exports, reports, verification ----------------------------------------

    def new_attempt(
        self,
        job_id: int,
        current: JobState,
        *,
        attempt: int,
        idempotency_key: str,
        auto_retries: int = 0,
    ) -> None:
        """Re-queue a finished job as a new attempt with a new key, in one transaction.

        The old attempt's run id, error, costs and outputs go to ``events`` (kind
        ``attempt_archived``); what its run was charged moves to ``prior_charged_cost`` so
        every total still counts it, and a charge never reported makes totals a floor.
        """
        with self.transaction():
            row = self.conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                raise LedgerError(f"no job {job_id} in the ledger")
            outputs = [
                dict(o)
                for o in self.conn.execute(
                    "SELECT output_id, type, url, state, path, bytes, sha256 FROM outputs"
                    " WHERE job_id = ? ORDER BY id",
                    (job_id,),
                )
            ]
            charged = row["charged_cost"]
            maybe_charged = row["run_id"] is not None or current is JobState.UNKNOWN_OUTCOME
            unsettled = int(charged is None and maybe_charged and current is not JobState.FAILED)
            history = {
                key: row[key]
                for key in (
                    "attempt",
                    "state",
                    "idempotency_key",
                    "run_id",
                    "request_id",
                    "error_code",
                    "error_message",
                    "estimated_cost",
                    "charged_cost",
                )
            }
            self._event(job_id, row["batch"], "attempt_archived", {**history, "outputs": outputs})
            self.conn.execute("DELETE FROM outputs WHERE job_id = ?", (job_id,))
            self.conn.execute(
                "UPDATE jobs SET prior_charged_cost = prior_charged_cost + ?,"
                " prior_unsettled = prior_unsettled + ? WHERE id = ?",
                (charged or 0.0, unsettled, job_id),
            )
            self.move(
                job_id,
                current,
                JobState.QUEUED,
                attempt=attempt,
                idempotency_key=idempotency_key,
                **dict.fromkeys(_ATTEMPT_FIELDS),
                auto_retries=auto_retries,
                polls=0,
            )

    def job_views(
        self,
        batches: Sequence[str],
        *,
        states: Iterable[JobState] | None = None,
        technique: str | None = None,
        after_id: int = 0,
        limit: int = 500,
    ) -> list[JobView]:
        """A page of jobs with their outputs, in id order, for exports and reports."""
        if not batches:
            return []
        sql = f"SELECT * FROM jobs WHERE batch IN ({','.join('?' * len(batches))}) AND id > ?"
        params: list[Any] = [*batches, after_id]
        if states is not None:
            values = [s.value for s in states]
            sql += f" AND state IN ({','.join('?' * len(values))})"
            params += values
        if technique is not None:
            sql += " AND technique = ?"
            params.append(technique)
        rows = self.conn.execute(sql + " ORDER BY id LIMIT ?", [*params, limit]).fetchall()
        outputs: dict[int, list[OutputRecord]] = {r["id"]: [] for r in rows}
        if rows:
            marks = ",".join("?" * len(rows))
            for o in self.conn.execute(
                f"SELECT * FROM outputs WHERE job_id IN ({marks}) ORDER BY id",
                [r["id"] for r in rows],
            ):
                outputs[o["job_id"]].append(_output_record(o))
        return [JobView.from_row(r, tuple(outputs[r["id"]])) for r in rows]

    def input_ids(self, batches: Sequence[str], technique: str | None = None) -> list[str]:
        """Every input id the rows of these batches use, in the order techniques declare them."""
        return self._port_ids(batches, technique, "inputs")

    def output_ids(self, batches: Sequence[str], technique: str | None = None) -> list[str]:
        """Every output id these batches' techniques declare or their runs returned."""
        return self._port_ids(batches, technique, "outputs")

    def _port_ids(self, batches: Sequence[str], technique: str | None, kind: str) -> list[str]:
        slugs = [technique] if technique is not None else self.techniques_used(batches)
        found: list[str] = []
        for slug in slugs:
            definition = self.technique(slug) or {}
            found += [str(p["id"]) for p in definition.get(kind) or [] if isinstance(p, dict)]
        if not batches:
            return list(dict.fromkeys(found))
        marks = ",".join("?" * len(batches))
        only = " AND j.technique = ?" if technique is not None else ""
        params = [*batches, *([technique] if technique is not None else [])]
        if kind == "inputs":
            sql = (
                f"SELECT DISTINCT k.key FROM jobs j, json_each(j.inputs) k"
                f" WHERE j.batch IN ({marks}){only}"
            )
        else:
            sql = (
                f"SELECT DISTINCT o.output_id FROM outputs o JOIN jobs j ON j.id = o.job_id"
                f" WHERE j.batch IN ({marks}){only}"
            )
        seen = sorted(r[0] for r in self.conn.execute(sql, params))
        return list(dict.fromkeys([*found, *seen]))

    def quotes(self, batches: Sequence[str]) -> list[dict[str, Any]]:
        """Per batch and technique: each price its rows were quoted at, and today's run_cost.

        ``differs`` counts settled runs whose charge is not their quote.
        """
        if not batches:
            return []
        marks = ",".join("?" * len(batches))
        return self.query(
            f"""
            SELECT j.batch, j.technique, j.estimated_cost AS quote, COUNT(*) AS n,
                t.run_cost AS run_cost,
                SUM(CASE WHEN j.charged_cost IS NOT NULL AND j.state IN
                    ('completed', 'downloaded', 'expired')
                    AND ABS(j.charged_cost - COALESCE(j.estimated_cost, 0)) > 1e-9
                    THEN 1 ELSE 0 END) AS differs
            FROM jobs j LEFT JOIN techniques t ON t.slug = j.technique
            WHERE j.batch IN ({marks}) AND j.estimated_cost IS NOT NULL
            GROUP BY j.batch, j.technique, j.estimated_cost
            ORDER BY j.batch, j.technique, MIN(j.id)
            """,
            batches,
        )

    def last_activity(self) -> dict[str, float]:
        """Batch name -> the latest time anything about it changed (epoch seconds)."""
        return {
            r[0]: float(r[1])
            for r in self.conn.execute(
                "SELECT b.name, MAX(b.updated_at, COALESCE(MAX(j.updated_at), 0))"
                " FROM batches b LEFT JOIN jobs j ON j.batch = b.name GROUP BY b.name"
            )
        }

    def downloaded_by_url(self) -> dict[str, str]:
        """Output URL -> local path of every downloaded file (the report's local inputs).

        A row whose input is an earlier run's output URL can show that file beside its
        own output.
        """
        rows = self.conn.execute(
            "SELECT url, path FROM outputs WHERE state = 'downloaded' AND path IS NOT NULL"
        )
        return {r[0]: r[1] for r in rows}

    def downloaded_files(
        self, batches: Sequence[str], *, after_id: int = 0, limit: int = 500
    ) -> list[StoredFile]:
        """A page of outputs recorded as on disk, in id order (for `verify`)."""
        if not batches:
            return []
        rows = self.conn.execute(
            f"""
            SELECT o.id, o.job_id, o.output_id, o.path, o.bytes, o.sha256, j.batch,
                j.technique, j.row_key, j.location
            FROM outputs o JOIN jobs j ON j.id = o.job_id
            WHERE j.batch IN ({",".join("?" * len(batches))}) AND o.state = 'downloaded'
                AND o.path IS NOT NULL AND o.id > ?
            ORDER BY o.id LIMIT ?
            """,
            [*batches, after_id, limit],
        ).fetchall()
        return [StoredFile(**dict(r)) for r in rows]

    def refetch(self, job_id: int, output_ids: Iterable[str]) -> bool:
        """Mark outputs to fetch again and move their downloaded job back to completed.

        False (nothing changed) if the job is no longer downloaded.
        """
        with self.transaction():
            row = self.conn.execute("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None or row[0] != JobState.DOWNLOADED.value:
                return False
            for output_id in output_ids:
                self.output_missing(job_id, output_id)
            self.move(job_id, JobState.DOWNLOADED, JobState.COMPLETED)
        return True

    def refetch_expired(self, batches: Sequence[str]) -> int:
        """Give every expired job with a run id another download (fresh URLs by re-polling)."""
        count = 0
        with self.transaction():
            for job in self.jobs(batches=batches, states=[JobState.EXPIRED], limit=10**9):
                if job.run_id is None:
                    continue
                self.conn.execute(
                    "UPDATE outputs SET state = 'pending' WHERE job_id = ? AND state = 'expired'",
                    (job.id,),
                )
                self.move(
                    job.id,
                    JobState.EXPIRED,
                    JobState.COMPLETED,
                    error_code=None,
                    error_message=None,
                )
                count += 1
        return count


# A new attempt starts without any of these: they describe the run of the old one.
_ATTEMPT_FIELDS = (
    "run_id",
    "poll_url",
    "remote_status",
    "progress",
    "error_code",
    "error_message",
    "error_fields",
    "failure_tier",
    "request_id",
    "charged_cost",
    "submitting_at",
    "submitted_at",
    "completed_at",
    "remote_created_at",
    "remote_completed_at",
)


def _output_record(r: Mapping[str, Any]) -> OutputRecord:
    return OutputRecord(
        job_id=r["job_id"],
        output_id=r["output_id"],
        type=r["type"],
        url=r["url"],
        url_seen_at=r["url_seen_at"],
        state=r["state"],
        path=r["path"],
        bytes=r["bytes"],
        sha256=r["sha256"],
    )


@dataclass(frozen=True, slots=True)
class JobView:
    """One row as an export or a report shows it: inputs, run, error, costs, outputs."""

    id: int
    batch: str
    technique: str
    location: str
    row_key: str
    inputs: Mapping[str, str]
    attempt: int
    state: JobState
    run_id: str | None
    error_code: str | None
    error_message: str | None
    request_id: str | None
    estimated_cost: float | None
    charged_cost: float | None  # this attempt's charge; None while not reported
    prior_charged_cost: float  # what earlier attempts of this row were charged
    outputs: tuple[OutputRecord, ...]

    @property
    def total_charged(self) -> float | None:
        """What this row has cost over every attempt; None if nothing is known yet."""
        if self.charged_cost is None and not self.prior_charged_cost:
            return None
        return round((self.charged_cost or 0.0) + self.prior_charged_cost, 6)

    @classmethod
    def from_row(cls, row: Mapping[str, Any], outputs: tuple[OutputRecord, ...]) -> JobView:
        return cls(
            id=row["id"],
            batch=row["batch"],
            technique=row["technique"],
            location=row["location"],
            row_key=row["row_key"],
            inputs=json.loads(row["inputs"]),
            attempt=row["attempt"],
            state=JobState(row["state"]),
            run_id=row["run_id"],
            error_code=row["error_code"],
            error_message=row["error_message"],
            request_id=row["request_id"],
            estimated_cost=row["estimated_cost"],
            charged_cost=row["charged_cost"],
            prior_charged_cost=row["prior_charged_cost"],
            outputs=outputs,
        )


@dataclass(frozen=True, slots=True)
class StoredFile:
    """An output the ledger says is on disk, with what it must hash to."""

    id: int
    job_id: int
    output_id: str
    path: str
    bytes: int | None
    sha256: str | None
    batch: str
    technique: str
    row_key: str
    location: str


class SeenRows:
    """Idempotency keys and output folders a manifest check has met so far, on disk.

    A million-row manifest would need hundreds of MB as Python sets; this keeps them in a
    private temporary SQLite database (SQLite spills it to a temp file), so the check's
    memory stays flat however many rows it reads. Ask about a chunk, then add it.
    """

    def __init__(self) -> None:
        self.conn = sqlite3.connect("", isolation_level=None)  # "": private, temporary
        self.conn.execute("PRAGMA journal_mode = OFF")
        self.conn.execute("PRAGMA synchronous = OFF")
        self.conn.execute("CREATE TABLE keys (key TEXT PRIMARY KEY) WITHOUT ROWID")
        self.conn.execute(
            "CREATE TABLE folders (technique TEXT, folder TEXT, location TEXT,"
            " PRIMARY KEY (technique, folder)) WITHOUT ROWID"
        )

    def __enter__(self) -> SeenRows:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.conn.close()

    def known_keys(self, keys: Sequence[str]) -> set[str]:
        """Which of ``keys`` were added before."""
        found: set[str] = set()
        for part in _chunks(list(dict.fromkeys(keys))):
            marks = ", ".join("?" * len(part))
            rows = self.conn.execute(f"SELECT key FROM keys WHERE key IN ({marks})", part)
            found.update(key for (key,) in rows)
        return found

    def folder_owners(self, technique: str, folders: Sequence[str]) -> dict[str, str]:
        """folder -> location of the row that claimed it first, for ``folders`` already added."""
        owners: dict[str, str] = {}
        for part in _chunks(list(dict.fromkeys(folders))):
            marks = ", ".join("?" * len(part))
            rows = self.conn.execute(
                f"SELECT folder, location FROM folders WHERE technique = ? AND folder IN ({marks})",
                [technique, *part],
            )
            owners.update(rows)
        return owners

    def add(self, keys: Iterable[str], folders: Iterable[tuple[str, str, str]]) -> None:
        """Remember keys and (technique, folder, location) claims; the first claim stays."""
        self.conn.execute("BEGIN")
        self.conn.executemany("INSERT OR IGNORE INTO keys VALUES (?)", ((k,) for k in keys))
        self.conn.executemany("INSERT OR IGNORE INTO folders VALUES (?, ?, ?)", folders)
        self.conn.execute("COMMIT")


def _chunks(items: list[str], size: int = 900) -> Iterator[list[str]]:
    """Slices small enough for SQLite's limit on bound parameters."""
    for start in range(0, len(items), size):
        yield items[start : start + size]
