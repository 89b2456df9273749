"""What starts a row again or fetches its files again: several writes in one transaction.

Shared by both backends (the SQL runs on SQLite and PostgreSQL alike).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from floraq.core.lifecycle import JobState, OutputState
from floraq.ledger.assets import LedgerAssets
from floraq.ledger.lean_rows import OUTPUT_PATH, OUTPUTS_JOINED
from floraq.ledger.records import JobFields

# A new attempt starts without any of these: they describe the run of the old one.
_ATTEMPT_FIELDS: JobFields = {
    "run_id": None,
    "poll_url": None,
    "remote_status": None,
    "progress": None,
    "error_code": None,
    "error_message": None,
    "error_fields": None,
    "failure_tier": None,
    "request_id": None,
    "charged_cost": None,
    "submitting_at": None,
    "submitted_at": None,
    "completed_at": None,
    "remote_created_at": None,
    "remote_completed_at": None,
    "remote_started_at": None,
}


class LedgerAttempts(LedgerAssets):
    """New attempts and re-fetches, on top of the single writes."""

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
        ``attempt_archived``); what its run was charged moves to ``prior_charged_micros``
        so every total still counts it, and a charge never reported makes totals a floor.
        """
        with self.transaction():
            self._write_back(job_id)  # the usual moves' events before the archive's
            job = self.job(job_id)
            row = self.conn.execute(
                "SELECT request_id, error_code, error_message FROM jobs WHERE id = ?", (job_id,)
            ).fetchone()
            outputs = [
                dict(o)
                for o in self.conn.execute(
                    f"SELECT o.output_id, o.type, o.url, o.state, {OUTPUT_PATH} AS path,"
                    f" o.bytes, o.sha256 FROM {OUTPUTS_JOINED} WHERE o.job_id = ? ORDER BY o.id",
                    (job_id,),
                )
            ]
            maybe_charged = job.run_id is not None or current is JobState.UNKNOWN_OUTCOME
            unsettled = (
                job.charged_cost is None and maybe_charged and current is not JobState.FAILED
            )
            history = {
                "attempt": job.attempt,
                "state": job.state.value,
                "idempotency_key": job.idempotency_key,
                "run_id": job.run_id,
                **dict(row),
                "estimated_cost": job.estimated_cost,
                "charged_cost": job.charged_cost,
            }
            self._event(job_id, job.batch, "attempt_archived", {**history, "outputs": outputs})
            self.conn.execute("DELETE FROM outputs WHERE job_id = ?", (job_id,))
            self.conn.execute(
                "UPDATE jobs SET prior_charged_micros = prior_charged_micros"
                " + COALESCE(charged_micros, 0), prior_unsettled = prior_unsettled + ?"
                " WHERE id = ?",
                (int(unsettled), job_id),
            )
            fields: JobFields = {
                **_ATTEMPT_FIELDS,
                "attempt": attempt,
                "idempotency_key": idempotency_key,
                "auto_retries": auto_retries,
                "polls": 0,
            }
            self.move(job_id, current, JobState.QUEUED, **fields)

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
        return self.refetch_unfetched(batches, [JobState.EXPIRED])

    def refetch_unfetched(self, batches: Sequence[str], states: Sequence[JobState]) -> int:
        """Give every job in ``states`` (expired, download_failed) with a run id another
        download of the same run: back to completed, its unfetched outputs pending.

        Never a new run: the old one completed and was charged. Returns how many jobs.
        """
        count = 0
        with self.transaction():
            for job in self.jobs(batches=batches, states=states, limit=10**9):
                if job.run_id is None:
                    continue
                self.conn.execute(
                    "UPDATE outputs SET state = ? WHERE job_id = ? AND state = ?",
                    (OutputState.PENDING.value, job.id, OutputState.EXPIRED.value),
                )
                self.move(
                    job.id,
                    job.state,
                    JobState.COMPLETED,
                    error_code=None,
                    error_message=None,
                )
                count += 1
        return count
