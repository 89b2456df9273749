"""Poll one submitted run until it finishes, then record it: outputs, late charges, durations.

When to poll next is ``core.polling``'s decision; this module only sleeps, asks and
commits. A run that completes without a settled charge is asked again a few times
(``COST_RECHECKS``); what each finished run took is learned for the next schedules.
"""

from __future__ import annotations

import functools
from dataclasses import replace

from floraq.api import RunInfo, RunStatus
from floraq.core.failures import FailureTier
from floraq.core.lifecycle import JobState
from floraq.core.polling import earliest_remaining, next_poll_delay, typical_duration
from floraq.core.submission import JOB_ROUNDS
from floraq.core.text import one_line
from floraq.errors import ApiError, NotFound, TransportError
from floraq.ledger import JobRecord
from floraq.runner.context import RunContext
from floraq.runner.rerun import failed

COST_RECHECKS = 3  # re-reads of a completed run whose charged_cost has not settled yet
# Seconds after the POST (x time_scale) that odd answers (an unknown status, `completed`
# without outputs) are still polled for; then the row becomes a problem for a person.
ODD_ANSWER_GRACE = 1800.0


async def poll_until_done(ctx: RunContext, job: JobRecord, first: RunInfo | None) -> JobRecord:
    """Poll until the run completes or fails; the job as it then stands.

    Still ``submitted`` when polling gave up for now; ``queued`` (a new attempt) when a
    failed run is tried again.
    """
    assert job.run_id is not None
    polls = job.polls
    info = first
    submitted = job.submitted_at or ctx.clock()
    rounds = 0
    pending_polls = 0  # poll answers in a row that said `pending`
    predicted_end: float | None = None  # on our clock: the soonest the last answer allows
    while info is None or not is_finished(info):
        await ctx.sleep(_delay(ctx, job, polls, submitted, pending_polls, predicted_end))
        try:
            info = await ctx.client.get_run(job.technique, job.run_id, poll_url=job.poll_url)
        except NotFound as e:
            await ctx.fail(job, JobState.SUBMITTED, JobState.FAILED, e, tier=FailureTier.REPORT)
            return replace(job, state=JobState.FAILED)
        except (TransportError, ApiError):
            rounds += 1
            if rounds > JOB_ROUNDS:
                ctx.report.incomplete += 1
                return job
            await ctx.pause_round(rounds)
            continue
        polls += 1
        ctx.report.polls += 1
        if polls - job.polls >= ctx.config.max_polls and not is_finished(info):
            ctx.report.incomplete += 1  # still `submitted`: the next resume polls on
            await ctx.committer.commit(functools.partial(ctx.ledger.update, job.id, polls=polls))
            return replace(job, polls=polls)
        odd = odd_answer(info)
        if odd is not None and ctx.clock() - submitted >= ODD_ANSWER_GRACE * ctx.config.time_scale:
            await _give_up_on_odd_answers(ctx, job, info, odd, polls, ctx.clock() - submitted)
            return replace(job, state=JobState.UNKNOWN_OUTCOME, polls=polls)
        pending_polls = pending_polls + 1 if info.status == RunStatus.PENDING else 0
        answered = ctx.clock()
        left = _remaining(info, submitted, answered)
        predicted_end = None if left is None else answered + left
    if info.status == RunStatus.COMPLETED:
        await _completed(ctx, job, info, polls)
        return replace(job, state=JobState.COMPLETED, polls=polls)
    retry = await failed(ctx, job, info, polls)
    return retry or replace(job, state=JobState.FAILED, polls=polls)


def _delay(
    ctx: RunContext,
    job: JobRecord,
    polls: int,
    submitted: float,
    pending_polls: int,
    predicted_end: float | None,
) -> float:
    """How long to wait before the next poll, as ``core.polling`` schedules it."""
    policy = ctx.poll_policy
    typical = typical_duration(list(ctx.durations.get(job.technique, ())), policy)
    now = ctx.clock()
    remaining = None if predicted_end is None else max(0.0, predicted_end - now)
    run_typical = (
        typical_duration(list(ctx.run_times.get(job.technique, ())), policy)
        if pending_polls
        else None
    )
    return next_poll_delay(
        policy,
        polls=polls,
        elapsed=now - submitted,
        typical=typical,
        rand=ctx.rand(),
        pending_polls=pending_polls,
        remaining=remaining,
        run_typical=run_typical,
    )


def _remaining(info: RunInfo, submitted: float, now: float) -> float | None:
    """When a running run can end at the soonest, from its progress (seconds from now).

    The server's clock is mapped onto ours by its ``created_at`` and our ``submitted``
    (both taken at the POST), so a skewed server clock does not matter.
    """
    if info.status != RunStatus.RUNNING or info.started_at is None or info.created_at is None:
        return None
    started = submitted + (info.started_at - info.created_at) / 1000.0
    return earliest_remaining(progress=info.progress, running_for=now - started)


async def _completed(ctx: RunContext, job: JobRecord, info: RunInfo, polls: int) -> None:
    """Commit the outputs and the charge (asked again while unsettled); learn the durations."""
    charged = info.charged_cost
    for _ in range(COST_RECHECKS):
        if charged is not None:
            break
        await ctx.sleep(ctx.poll_policy.min_interval)
        try:
            again = await ctx.client.get_run(job.technique, info.run_id, poll_url=job.poll_url)
        except (TransportError, ApiError):
            break
        ctx.report.polls += 1
        polls += 1
        charged = again.charged_cost
        info = again if again.outputs else info
    if charged is not None and charged != job.estimated_cost:
        ctx.prices.doubt(job.technique)  # charged off-quote: the price may have moved
    if info.created_at is not None and info.completed_at is not None:
        ctx.learn(ctx.durations, job.technique, (info.completed_at - info.created_at) / 1000.0)
    if info.started_at is not None and info.completed_at is not None:
        ctx.learn(ctx.run_times, job.technique, (info.completed_at - info.started_at) / 1000.0)

    def record() -> None:
        ctx.ledger.record_outputs(job.id, ((o.output_id, o.type, o.url) for o in info.outputs))
        ctx.ledger.move(
            job.id,
            JobState.SUBMITTED,
            JobState.COMPLETED,
            remote_status=info.status,
            progress=info.progress,
            charged_cost=charged,
            remote_completed_at=info.completed_at,
            completed_at=ctx.clock(),
            polls=polls,
        )

    await ctx.committer.commit(record)
    ctx.progress.advance(JobState.COMPLETED)


def odd_answer(info: RunInfo) -> str | None:
    """The error code for an answer that says neither "working on it" nor "done", or None.

    A status floraq does not know (``"COMPLETED"``, ``"cancelled"``) or ``completed`` with
    no outputs can be a passing state; for longer than ``ODD_ANSWER_GRACE`` it is not.
    """
    if not isinstance(info.status, RunStatus):
        return "run_status_unknown"
    if info.status == RunStatus.COMPLETED and not info.outputs:
        return "completed_without_outputs"
    return None


async def _give_up_on_odd_answers(
    ctx: RunContext, job: JobRecord, info: RunInfo, code: str, polls: int, waited: float
) -> None:
    """Stop polling a run whose answers make no sense: a problem row, the answer kept.

    ``unknown_outcome`` keeps its quote committed (FLORA may have charged the run) and
    is never re-sent on its own; the person reading `floraq status` decides.
    """
    raw = one_line(info.raw.decode("utf-8", "replace"), limit=500)
    await ctx.move(
        job,
        JobState.SUBMITTED,
        JobState.UNKNOWN_OUTCOME,
        remote_status=one_line(str(info.status), limit=100),
        error_code=code,
        error_message=f"FLORA still answered {raw} {waited:.0f} s after the POST;"
        " check the run in FLORA, then `floraq retry --unknown` if it should run again",
        charged_cost=info.charged_cost,
        polls=polls,
    )
    ctx.progress.advance(JobState.UNKNOWN_OUTCOME)


def is_finished(info: RunInfo) -> bool:
    """Finished only by status (never by progress); `completed` must carry its outputs."""
    return info.status == RunStatus.FAILED or (
        info.status == RunStatus.COMPLETED and bool(info.outputs)
    )
