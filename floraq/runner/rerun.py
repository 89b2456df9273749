"""A failed run: record its failure, and try it again when the failure says it may pass.

Which failures are worth a new attempt is ``core.failures.classify_failure``'s decision
(tier ``retry_now``); how many a batch allows is its ``retry_failed_runs``. A new attempt
gets a new idempotency key, so FLORA creates a new run, and keeps the failed run's charge.
"""

from __future__ import annotations

import functools

from floraq.api import RunInfo
from floraq.core.failures import FailureTier, classify_failure
from floraq.core.keys import idempotency_key
from floraq.core.lifecycle import JobState
from floraq.ledger import JobRecord
from floraq.runner.context import RunContext


async def failed(ctx: RunContext, job: JobRecord, info: RunInfo, polls: int) -> JobRecord | None:
    """Commit the failure; the job re-queued as a new attempt, or None when it stays failed."""
    tier = classify_failure(info.error_code, info.error_message)
    await ctx.move(
        job,
        JobState.SUBMITTED,
        JobState.FAILED,
        remote_status=info.status,
        progress=info.progress,
        error_code=info.error_code or "failed",
        error_message=info.error_message or "the run failed without a message",
        failure_tier=tier.value,
        charged_cost=info.charged_cost,
        polls=polls,
    )
    ctx.progress.advance(JobState.FAILED)
    allowed = ctx.batches[job.batch].retry_failed_runs
    if tier is not FailureTier.RETRY_NOW or job.auto_retries >= allowed:
        return None
    # Queued even when submitting is paused: `resume` then sends the new attempt.
    attempt = job.attempt + 1
    key = idempotency_key(
        batch=job.batch, technique=job.technique, inputs=job.inputs, attempt=attempt
    )
    # new_attempt keeps the failed run's charge (and its history) in the ledger.
    await ctx.committer.commit(
        functools.partial(
            ctx.ledger.new_attempt,
            job.id,
            JobState.FAILED,
            attempt=attempt,
            idempotency_key=key,
            auto_retries=job.auto_retries + 1,
        )
    )
    return ctx.ledger.job(job.id)
