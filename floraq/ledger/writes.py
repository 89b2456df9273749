"""The ledger's writes (SQL both backends run): batches, techniques, jobs queued and moved, outputs.

Every method joins an open transaction (the runner's group commit) or opens its own.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from decimal import Decimal
from typing import Any, Unpack

from floraq.core.lifecycle import USUAL_MOVES, JobState, OutputState, check_transition
from floraq.core.money import to_micros
from floraq.errors import LeaseLost, LedgerError
from floraq.ledger.base import chunks
from floraq.ledger.lean_rows import REBUILT, location_parts
from floraq.ledger.reads import SqliteReads
from floraq.ledger.records import JobFields, NewJob, column_values
from floraq.ledger.totals import USUAL_COLUMNS, usual_events

_INSERT_ROWS = 500  # jobs per INSERT statement (15 parameters each, well under the limit)

# Written on every poll: not worth an event each.
_QUIET_FIELDS = frozenset({"polls", "progress"})


class SqliteWrites(SqliteReads):
    """Everything that writes one thing."""

    # -- batches and techniques ---------------------------------------------------

    def save_batch(
        self,
        name: str,
        *,
        manifest_path: str | None,
        output_dir: str,
        concurrency: int | None,
        max_cost: Decimal | None,
        retry_failed_runs: int,
    ) -> None:
        now = self.clock()
        cap = None if max_cost is None else to_micros(max_cost)
        with self.transaction():
            before = self.conn.execute(
                "SELECT output_dir FROM batches WHERE name = ?", (name,)
            ).fetchone()
            if before is not None and before[0] != output_dir:
                self._pin_paths(name)
            self.conn.execute(
                """
                INSERT INTO batches (name, manifest_path, output_dir, concurrency,
                    max_cost_micros, retry_failed_runs, created_at, updated_at)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?)
                ON CONFLICT (name) DO UPDATE SET manifest_path = excluded.manifest_path,
                    output_dir = excluded.output_dir, concurrency = excluded.concurrency,
                    max_cost_micros = excluded.max_cost_micros,
                    retry_failed_runs = excluded.retry_failed_runs,
                    updated_at = excluded.updated_at
                """,
                (name, manifest_path, output_dir, concurrency, cap, retry_failed_runs, now, now),
            )

    def save_technique(self, slug: str, definition: Mapping[str, Any], run_cost: Decimal) -> None:
        with self.transaction():
            self.conn.execute(
                """
                INSERT INTO techniques (slug, definition, run_cost_micros, fetched_at)
                VALUES (?, ?, ?, ?)
                ON CONFLICT (slug) DO UPDATE SET definition = excluded.definition,
                    run_cost_micros = excluded.run_cost_micros, fetched_at = excluded.fetched_at
                """,
                (slug, json.dumps(definition, sort_keys=True), to_micros(run_cost), self.clock()),
            )

    # -- jobs -------------------------------------------------------------------------

    def insert_jobs(self, jobs: Iterable[NewJob]) -> int:
        """Queue new jobs in one transaction; rows already in the ledger are left alone.

        Many rows per statement and no event row each: the row's ``queued_at`` and
        ``location`` are what the "queued" event said (``logged = 0``, see ``move``).
        """
        now = self.clock()
        jobs = list(jobs)
        inserted = 0
        with self.transaction():
            rows = [
                (*values, JobState.QUEUED.value, cost, now, now)
                for values, cost in self._lean_rows(jobs)
            ]
            for part in chunks(rows, _INSERT_ROWS):
                cur = self.conn.execute(
                    "INSERT INTO jobs (batch, technique, job_number, row_number, csv_line,"
                    " location, row_key, inputs, inputs_digest, idempotency_key, state,"
                    " estimated_micros, queued_at, updated_at, logged) VALUES "
                    + ", ".join(["(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0)"] * len(part))
                    + " ON CONFLICT DO NOTHING RETURNING id",
                    [value for row in part for value in row],
                )
                inserted += len(cur.fetchall())
        return inserted

    def _lean_rows(self, jobs: list[NewJob]) -> Iterator[tuple[tuple[Any, ...], int]]:
        """Each job's first ten columns as stored (``lean_rows``), and its quote in micros."""
        parts = [location_parts(j.location, j.row_number, j.csv_line) for j in jobs]
        wanted: dict[tuple[str, int], tuple[str, str]] = {}
        for job, found in zip(jobs, parts, strict=True):
            if found is not None:
                wanted.setdefault((job.batch, job.job_number), found)
        sources = self._job_sources(wanted) if wanted else {}
        for job, found in zip(jobs, parts, strict=True):
            location, text, digest = self._lean_job(job)
            if found is not None and sources.get((job.batch, job.job_number)) == found:
                location = REBUILT
            yield (
                (job.batch, job.technique, job.job_number, job.row_number, job.csv_line,
                 location, job.row_key, text, digest, job.idempotency_key),
                to_micros(job.estimated_cost),
            )  # fmt: skip

    def move(
        self, job_id: int, current: JobState, new: JobState, **fields: Unpack[JobFields]
    ) -> None:
        """Move a job between states (checked), setting ``fields``; joins any open transaction.

        Leaving a state whose quote is committed releases the quote: the ledger's committed
        cost follows the state, so there is no separate release.
        """
        check_transition(current, new)
        columns = self._lean_columns(job_id, column_values(fields))
        assignments = "".join(f", {name} = ?" for name in columns)
        fence, held = self._fence()
        told = (current, new) in USUAL_MOVES
        with self.transaction():
            if not told:
                self._write_back(job_id)
            row = self.conn.execute(
                f"UPDATE jobs SET state = ?, updated_at = ?{assignments}"
                f" WHERE id = ? AND state = ?{fence} RETURNING logged",
                [new.value, self.clock(), *columns.values(), job_id, current.value, *held],
            ).fetchone()
            if row is None:
                if fence:
                    raise LeaseLost(f"job {job_id}: this worker's lease on it is gone")
                raise LedgerError(
                    f"job {job_id} was not in state {current} (another process changed it?)"
                )
            if row[0]:
                detail = {k: v for k, v in fields.items() if k not in _QUIET_FIELDS}
                self._event(job_id, None, f"{current}->{new}", detail)

    def _write_back(self, job_id: int) -> None:
        """The events of a job's moves along the usual path, from its row, then ``logged``.

        Called before a move off that path (or a new attempt) changes what the row says.
        Each event has the time its column kept and the values the row holds now, marked
        ``from_row``; a job already logged is left alone.
        """
        row = self.conn.execute(
            f"SELECT {USUAL_COLUMNS} FROM jobs j WHERE j.id = ? AND j.logged = 0", (job_id,)
        ).fetchone()
        if row is None:
            return
        for kind, at, detail in usual_events(self.whole(row)):
            self._event(job_id, row["batch"] if kind == "queued" else None, kind, detail, at=at)
        self.conn.execute("UPDATE jobs SET logged = 1 WHERE id = ?", (job_id,))

    def update(self, job_id: int, **fields: Unpack[JobFields]) -> None:
        """Record progress that does not change the state (polls, progress, late cost)."""
        columns = self._lean_columns(job_id, column_values(fields))
        assignments = "".join(f", {name} = ?" for name in columns)
        fence, held = self._fence()
        with self.transaction():
            cur = self.conn.execute(
                f"UPDATE jobs SET updated_at = ?{assignments} WHERE id = ?{fence}",
                [self.clock(), *columns.values(), job_id, *held],
            )
            if fence and cur.rowcount != 1:
                raise LeaseLost(f"job {job_id}: this worker's lease on it is gone")

    def claim(
        self,
        job_id: int,
        *,
        at: float,
        quote: Decimal,
        key_fingerprint: str | None,
        cap: Decimal | None,
    ) -> bool:
        """Reserve ``quote`` against the batch's cap and commit the intent, in one transaction.

        False (and nothing written) when the batch's committed cost plus the quote would
        pass ``cap``. Several processes sharing a ledger cannot overspend: the check and
        the write hold the same lock (SQLite's write lock; PostgreSQL's lock on the batch
        row, so concurrent claimers of one batch take turns).
        """
        with self.transaction():
            row = self.conn.execute(
                "SELECT b.committed_micros FROM jobs j JOIN batches b ON b.name = j.batch"
                f" WHERE j.id = ?{self._LOCK_BATCH}",
                (job_id,),
            ).fetchone()
            if row is None:
                raise LedgerError(f"no job {job_id} in the ledger")
            if cap is not None and int(row[0]) + to_micros(quote) > to_micros(cap):
                return False
            self.move(
                job_id,
                JobState.QUEUED,
                JobState.SUBMITTING,
                submitting_at=at,
                estimated_cost=quote,
                key_fingerprint=key_fingerprint,
            )
        return True

    def event(self, job_id: int | None, batch: str | None, kind: str, detail: Any = None) -> None:
        with self.transaction():
            self._event(job_id, batch, kind, detail)

    def _event(
        self,
        job_id: int | None,
        batch: str | None,
        kind: str,
        detail: Any,
        *,
        at: float | None = None,
    ) -> None:
        self.conn.execute(
            "INSERT INTO events (at, job_id, batch, kind, detail) VALUES (?, ?, ?, ?, ?)",
            (
                self.clock() if at is None else at,
                job_id,
                batch,
                kind,
                None if detail is None else json.dumps(detail, sort_keys=True, default=_plain),
            ),
        )

    # -- outputs ----------------------------------------------------------------------

    def record_outputs(self, job_id: int, outputs: Iterable[tuple[str, str, str]]) -> None:
        """Store (output_id, type, url) as seen on the latest poll; fresh URLs replace old ones."""
        now = self.clock()
        with self.transaction():
            self.conn.executemany(
                """
                INSERT INTO outputs (job_id, output_id, type, url, url_seen_at, state)
                VALUES (?, ?, ?, ?, ?, ?)
                ON CONFLICT (job_id, output_id) DO UPDATE SET url = excluded.url,
                    type = excluded.type, url_seen_at = excluded.url_seen_at,
                    state = CASE WHEN outputs.state = ? THEN excluded.state
                        ELSE outputs.state END
                """,
                [
                    (
                        job_id,
                        oid,
                        kind,
                        url,
                        now,
                        OutputState.PENDING.value,
                        OutputState.EXPIRED.value,
                    )
                    for oid, kind, url in outputs
                ],
            )

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
        fence, held = self._fence("job_id")
        with self.transaction():
            path = self._stored_path(job_id, output_id, path)
            cur = self.conn.execute(
                f"""
                UPDATE outputs SET state = ?, path = ?, bytes = ?, sha256 = ?,
                    content_type = ?, downloaded_at = ?, error = NULL
                WHERE job_id = ? AND output_id = ?{fence}
                """,
                (
                    OutputState.DOWNLOADED.value,
                    path,
                    size,
                    sha256,
                    content_type,
                    self.clock(),
                    job_id,
                    output_id,
                    *held,
                ),
            )
            if fence and cur.rowcount != 1:
                raise LeaseLost(f"job {job_id}: this worker's lease on it is gone")

    def output_expired(self, job_id: int, output_id: str, error: str) -> None:
        self._set_output(job_id, output_id, OutputState.EXPIRED, error=error)

    def output_missing(self, job_id: int, output_id: str) -> None:
        """A downloaded file is gone or changed on disk: fetch it again."""
        self._set_output(job_id, output_id, OutputState.PENDING)

    def _set_output(
        self, job_id: int, output_id: str, state: OutputState, *, error: str | None = None
    ) -> None:
        set_error = ", error = ?" if error is not None else ""
        with self.transaction():
            self.conn.execute(
                f"UPDATE outputs SET state = ?{set_error} WHERE job_id = ? AND output_id = ?",
                [state.value, *([error] if error is not None else []), job_id, output_id],
            )


def _plain(value: object) -> str:
    """The event log's text for what JSON has no type for (an amount stays exact: ``0.05``)."""
    if isinstance(value, Decimal):
        return f"{value.normalize():f}"
    return str(value)
