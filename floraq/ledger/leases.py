"""Workers and leases on a PostgreSQL ledger: many processes, one batch, no row driven twice.

A worker registers a row in ``workers``; its lease is that row's ``lease_until``, renewed by
its heartbeat. It leases a page of jobs with ``FOR UPDATE SKIP LOCKED`` (unleased rows, or
rows whose owner's lease has passed) by writing its id into ``jobs.lease_owner``. Every
move it then commits is fenced (``_fence``): the same statement checks that the row is
still its own and its lease still live, so a worker that stalled past its lease cannot
write over the worker that took its rows; that refusal (``LeaseLost``) is the only lost
lease: a statement the server refuses on a live session (a ``statement_timeout``) is
``LedgerRefused``, a broken session ``LedgerConnectionLost``. Every time is the server's clock
(``clock_timestamp()``), never a worker's: machines whose clocks disagree still agree on
who holds what.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from floraq.core.lifecycle import ACTIVE, JobState
from floraq.ledger.attempts import LedgerAttempts
from floraq.ledger.base import marks, values
from floraq.ledger.lean_rows import in_states
from floraq.ledger.records import JobRecord

NOW = "EXTRACT(EPOCH FROM clock_timestamp())::float8"  # the server's clock, epoch seconds
# A live lease: the worker ``?`` whose lease_until is still ahead of the server's clock.
_LIVE = f"EXISTS (SELECT 1 FROM workers lw WHERE lw.id = ? AND lw.lease_until > {NOW})"


@dataclass(frozen=True, slots=True)
class WorkerView:
    """A worker as ``status`` shows it: where it runs, what it holds, when it last beat."""

    id: str
    host: str
    pid: int
    rows: int  # active rows it leases
    heartbeat_at: float  # server clock, epoch seconds
    heartbeat_age: float  # seconds since then (server clock)
    lease_left: float  # seconds (server clock); negative once its lease has passed

    @property
    def expired(self) -> bool:
        return self.lease_left <= 0


class PgLeases(LedgerAttempts):
    """The lease half of the PostgreSQL ledger: register, renew, lease, fence, release."""

    worker: str | None = None  # this process's worker id while its runner runs

    def _fence(self, job_id_column: str = "id") -> tuple[str, list[Any]]:
        """Only a row this worker leases, while its lease is live (checked in the write)."""
        if self.worker is None:
            return "", []
        if job_id_column == "id":
            return f" AND lease_owner = ? AND {_LIVE}", [self.worker, self.worker]
        return (
            f" AND EXISTS (SELECT 1 FROM jobs fj WHERE fj.id = {job_id_column}"
            f" AND fj.lease_owner = ?) AND {_LIVE}",
            [self.worker, self.worker],
        )

    def register_worker(self, lease_seconds: float) -> tuple[str, float]:
        """A new worker with a live lease: its id, and the seconds its lease has left.

        Workers long dead that lease nothing active are tidied away first.
        """
        worker = uuid.uuid4().hex
        active = values(ACTIVE)
        with self.transaction():
            self.conn.execute(
                "UPDATE jobs SET lease_owner = NULL WHERE lease_owner IN (SELECT id FROM"
                f" workers WHERE lease_until < {NOW}) AND state NOT IN ({marks(active)})",
                active,
            )
            self.conn.execute(
                f"DELETE FROM workers w WHERE w.lease_until < {NOW} AND NOT EXISTS"
                " (SELECT 1 FROM jobs j WHERE j.lease_owner = w.id)"
            )
            self.conn.execute(
                "INSERT INTO workers (id, host, pid, started_at, heartbeat_at, lease_until)"
                f" VALUES (?, ?, ?, {NOW}, {NOW}, {NOW} + ?)",
                (worker, socket.gethostname(), os.getpid(), lease_seconds),
            )
        # A worker stopped inside a transaction (SIGSTOP, a stalled VM) would hold its row
        # locks and block every other worker: the server ends such a session after half a
        # lease, and with it the locks. This worker then finds its lease gone.
        idle_ms = max(int(lease_seconds * 500), 500)
        self.conn.execute(f"SET idle_in_transaction_session_timeout = {idle_ms}")
        self.worker = worker
        return worker, lease_seconds

    def new_attempt(
        self,
        job_id: int,
        current: JobState,
        *,
        attempt: int,
        idempotency_key: str,
        auto_retries: int = 0,
    ) -> None:
        """As every ledger's; a row re-queued by a command (``retry``), not by a worker's
        own task, is handed back too, so any worker may take its new attempt."""
        with self.transaction():
            super().new_attempt(
                job_id,
                current,
                attempt=attempt,
                idempotency_key=idempotency_key,
                auto_retries=auto_retries,
            )
            if self.worker is None:
                self.conn.execute("UPDATE jobs SET lease_owner = NULL WHERE id = ?", (job_id,))

    def renew_lease(self, lease_seconds: float) -> float | None:
        """Push the lease ``lease_seconds`` past the server's now; None if it had passed.

        A lease that passed is never revived: another worker may already hold its rows.
        """
        assert self.worker is not None
        with self.transaction():
            row = self.conn.execute(
                f"UPDATE workers SET heartbeat_at = {NOW}, lease_until = {NOW} + ?"
                f" WHERE id = ? AND lease_until > {NOW} RETURNING lease_until - {NOW}",
                (lease_seconds, self.worker),
            ).fetchone()
        return None if row is None else float(row[0])

    def lease_jobs(
        self, *, batches: Sequence[str], states: Iterable[JobState], limit: int
    ) -> list[JobRecord]:
        """Lease up to ``limit`` rows in ``states`` nobody live holds, in id order.

        Rows another worker is leasing at this instant are skipped, not waited for; rows
        this worker already holds are not handed out again.
        """
        assert self.worker is not None
        state_list = values(states)
        if not batches or not state_list or limit <= 0:
            return []
        with self.transaction():
            return self._all(
                JobRecord,
                f"""
                UPDATE jobs SET lease_owner = ? WHERE id IN (
                    SELECT j.id FROM jobs j
                    WHERE j.batch IN ({marks(batches)}) AND {in_states(state_list, "j.state")}
                      AND j.lease_owner IS DISTINCT FROM ?
                      AND NOT EXISTS (SELECT 1 FROM workers w
                          WHERE w.id = j.lease_owner AND w.lease_until > {NOW})
                      AND {_LIVE}
                    ORDER BY j.id LIMIT ? FOR UPDATE OF j SKIP LOCKED)
                RETURNING *
                """,
                [self.worker, *batches, *state_list, self.worker, self.worker, limit],
            )

    def left_elsewhere(
        self,
        *,
        batches: Sequence[str],
        states: Iterable[JobState],
        queued_batches: Sequence[str],
        after: float,
    ) -> int:
        """Rows this worker may still have to drive, though none is its own: in ``states``
        (of ``batches``), or queued (of ``queued_batches``), and held by no live worker (no
        owner: one that ended handed them back; or an owner whose lease passed), or by a
        worker that has not beaten for ``after`` seconds (it may be dead: once its lease
        passes they are this worker's to take)."""
        state_list = values(states)
        wanted = []
        params: list[Any] = []
        if batches and state_list:
            wanted.append(f"(j.batch IN ({marks(batches)}) AND {in_states(state_list, 'j.state')})")
            params += [*batches, *state_list]
        if queued_batches:
            queued = [JobState.QUEUED.value]
            wanted.append(
                f"(j.batch IN ({marks(queued_batches)}) AND {in_states(queued, 'j.state')})"
            )
            params += [*queued_batches, *queued]
        if not wanted:
            return 0
        row = self.conn.execute(
            f"SELECT COUNT(*) FROM jobs j LEFT JOIN workers w ON w.id = j.lease_owner"
            f" WHERE ({' OR '.join(wanted)}) AND j.lease_owner IS DISTINCT FROM ?"
            f" AND (w.id IS NULL OR w.lease_until <= {NOW} OR w.heartbeat_at < {NOW} - ?)",
            [*params, self.worker, after],
        ).fetchone()
        return int(row[0])

    def active_rows(self, batches: Sequence[str]) -> tuple[int, int]:
        """Active rows of ``batches``: (held by a worker whose lease is live, held by none).

        One read, so a row that moves meanwhile is counted once, in one or the other.
        """
        active = values(ACTIVE)
        if not batches:
            return 0, 0
        row = self.conn.execute(
            f"SELECT COUNT(w.id), COUNT(*) - COUNT(w.id) FROM jobs j LEFT JOIN workers w"
            f" ON w.id = j.lease_owner AND w.lease_until > {NOW}"
            f" WHERE j.batch IN ({marks(batches)}) AND {in_states(active, 'j.state')}",
            [*batches, *active],
        ).fetchone()
        return int(row[0]), int(row[1])

    def release_worker(self) -> None:
        """Hand back every row this worker leases and remove it (a clean exit)."""
        if self.worker is None:
            return
        worker, self.worker = self.worker, None
        with self.transaction():
            self.conn.execute("UPDATE jobs SET lease_owner = NULL WHERE lease_owner = ?", (worker,))
            self.conn.execute("DELETE FROM workers WHERE id = ?", (worker,))

    def workers(self, batches: Sequence[str]) -> list[WorkerView]:
        """Every worker registered on this ledger, with the active rows of ``batches`` it leases."""
        active = values(ACTIVE)
        where = f"j.batch IN ({marks(batches)})" if batches else "FALSE"
        rows = self.conn.execute(
            f"SELECT w.id, w.host, w.pid, w.heartbeat_at, {NOW} - w.heartbeat_at AS age,"
            f" w.lease_until - {NOW} AS lease_left,"
            f" COUNT(j.id) AS n FROM workers w LEFT JOIN jobs j ON j.lease_owner = w.id"
            f" AND {in_states(active, 'j.state')} AND {where}"
            " GROUP BY w.id, w.host, w.pid, w.heartbeat_at, w.lease_until ORDER BY w.started_at",
            [*active, *batches],
        ).fetchall()
        return [
            WorkerView(
                id=r["id"],
                host=r["host"],
                pid=int(r["pid"]),
                rows=int(r["n"]),
                heartbeat_at=float(r["heartbeat_at"]),
                heartbeat_age=float(r["age"]),
                lease_left=float(r["lease_left"]),
            )
            for r in rows
        ]
