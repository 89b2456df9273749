"""Poll one submitted run until it finishes, then record it: outputs, late charges, durations.

When to poll next is the core's decision (``core.poll_aim`` from what the answers say:
progress, ``started_at``, ``pending``; ``core.polling`` when nothing better is known);
this module keeps what the answers said, sleeps, takes a token of the shared budget
(``runner.poll_gate``), asks and commits. A run that completes without a settled charge is
asked again a few times (``COST_RECHECKS``); what each finished run took (its duration,
its run time, how good its prediction was, when it freed a slot) is learned for the next
schedules.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace

from floraq.api import RunInfo, RunStatus
from floraq.core.failures import FailureTier
from floraq.core.lifecycle import JobState
from floraq.core.poll_aim import (
    aim_running,
    completion_rate,
    first_look,
    head_start,
    plan_pending,
    prediction_trust,
    progress_window,
    queue_start,
)
from floraq.core.poll_budget import PollRank, budget_rate, rank
from floraq.core.polling import MIN_SAMPLES, next_poll_delay, typical_duration
from floraq.core.submission import JOB_ROUNDS
from floraq.core.text import one_line
from floraq.errors import ApiError, NotFound, TransportError
from floraq.ledger import JobRecord
from floraq.runner.context import RunContext, poll_rate_floor
from floraq.runner.rerun import failed

COST_RECHECKS = 3  # re-reads of a completed run whose charged_cost has not settled yet
# Seconds after the POST (x time_scale) that odd answers (an unknown status, `completed`
# without outputs) are still polled for; then the row becomes a problem for a person.
ODD_ANSWER_GRACE = 1800.0


@dataclass(slots=True)
class _Watch:
    """What the answers so far say about when one run ends (times on our clock)."""

    position: int  # where it was sent in this process's order (the server's queue order)
    pending: bool = False  # the last poll answer said `pending`: it waits for a slot
    waited: bool = False  # some poll answer said `pending`
    pending_polls: int = 0  # poll answers in a row that said `pending`
    pending_at: float | None = None  # when the last of them came
    started: float | None = None  # when it started, once an answer said it had
    window: tuple[float, float] | None = None  # soonest and latest end the answers allow
    linear: bool | None = None  # its answers agree with linear progress (None: one answer)
    first_prediction: tuple[float, float] | None = None  # (answered at, soonest end), for trust
    created: int | None = None  # the server's created_at (epoch ms): its place in the queue
    offset: float = 0.0  # our clock minus the server's, through created_at and submitted
    pending_server: float | None = None  # when it last said `pending`, on the server's clock


async def poll_until_done(ctx: RunContext, job: JobRecord, first: RunInfo | None) -> JobRecord:
    """Poll until the run completes or fails; the job as it then stands.

    Still ``submitted`` when polling gave up for now; ``queued`` (a new attempt) when a
    failed run is tried again.
    """
    try:
        return await _poll(ctx, job, first)
    finally:
        ctx.queue.pop(job.id, None)
        ctx.server_queue.gone(job.id)


async def _poll(ctx: RunContext, job: JobRecord, first: RunInfo | None) -> JobRecord:
    assert job.run_id is not None
    polls = job.polls
    info = first
    submitted = job.submitted_at or ctx.clock()
    rounds = 0
    watch = _Watch(position=next(ctx.sent))
    _place(ctx, watch, info, submitted)
    since: float | None = None  # the first answer of this process
    while info is None or not is_finished(info):
        delay, poll_then, on_freed = _delay(ctx, job, watch, polls, submitted)
        woken = False  # by a completion, which may say more of when it starts
        if on_freed:
            woken = await ctx.server_queue.sleep_until_freed(ctx.sleep, delay)
        else:
            await ctx.sleep(delay)
        if woken or not poll_then or _not_its_turn(ctx, job, watch, polls):
            continue  # woke to think again: what other runs saw since may change the plan
        due = ctx.clock()
        await ctx.poll_gate.admit(_rank(watch, due), due)
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
        answered = ctx.clock()
        since = answered if since is None else since
        if _polled_enough(ctx, polls - job.polls, answered - since) and not is_finished(info):
            ctx.report.incomplete += 1  # still `submitted`: the next resume polls on
            await ctx.committer.commit(functools.partial(ctx.ledger.update, job.id, polls=polls))
            return replace(job, polls=polls)
        odd = odd_answer(info)
        if odd is not None and answered - submitted >= ODD_ANSWER_GRACE * ctx.config.time_scale:
            await _give_up_on_odd_answers(ctx, job, info, odd, polls, answered - submitted)
            return replace(job, state=JobState.UNKNOWN_OUTCOME, polls=polls)
        _observe(ctx, job, watch, info, submitted, answered)
    _learn_end(ctx, job, watch, info)
    if info.status == RunStatus.COMPLETED:
        await _completed(ctx, job, info, polls)
        return replace(job, state=JobState.COMPLETED, polls=polls)
    retry = await failed(ctx, job, info, polls)
    return retry or replace(job, state=JobState.FAILED, polls=polls)


def _place(ctx: RunContext, watch: _Watch, info: RunInfo | None, submitted: float) -> None:
    """Put the run in the server's queue order once an answer gives its ``created_at``."""
    if watch.created is not None or info is None or info.created_at is None:
        return
    watch.created, watch.offset = info.created_at, submitted - info.created_at / 1000.0
    ctx.server_queue.sent(info.created_at, watch.offset)


def _not_its_turn(ctx: RunContext, job: JobRecord, watch: _Watch, polls: int) -> bool:
    """A run not yet answered whose turn in the server's queue has not come by the
    completions seen (a run created before it said `pending`): it waits with them, unpolled."""
    if polls != job.polls or watch.created is None or job.id in ctx.queue:
        return False
    if not ctx.server_queue.not_started(watch.created, watch.offset, ctx.clock()):
        return False
    ctx.queue[job.id] = watch.position
    return True


def _polled_enough(ctx: RunContext, polls: int, seconds: float) -> bool:
    """Leave the run for the next `resume`: ``max_polls`` polls, or as long as they would
    take at ``max_interval`` (fewer, longer waits must not hold the ledger longer)."""
    limit = ctx.config.max_polls
    bound = limit * ctx.poll_policy.max_interval  # 0 when waits are skipped (time scale 0)
    return polls >= limit or 0 < bound <= seconds


def _observe(
    ctx: RunContext, job: JobRecord, watch: _Watch, info: RunInfo, submitted: float, now: float
) -> None:
    """Update what is known of the run's timing from one poll answer, received at ``now``.

    Read as of its arrival, not of its request: read as of the request, every predicted
    end came early by the answer's time in flight, and at time scale 0.01 (bench --quick,
    scenario 1) polls per run rose from 2.1 to 2.9-3.9 with no better p95."""
    last, watch.window = watch.window, None
    _place(ctx, watch, info, submitted)
    if info.status == RunStatus.PENDING:
        watch.pending, watch.waited = True, True
        watch.pending_polls, watch.pending_at = watch.pending_polls + 1, now
        ctx.queue[job.id] = watch.position
        if watch.created is not None:
            watch.pending_server = now - watch.offset
            ctx.server_queue.pending(job.id, watch.created, watch.pending_server)
        return
    watch.pending, watch.pending_polls = False, 0
    ctx.queue.pop(job.id, None)
    if info.status != RunStatus.RUNNING:
        return
    started = _started(ctx, watch, info)
    first_seen = watch.started is None
    watch.started = started if started is not None else (watch.started or submitted)
    if started is None:
        return
    waited = watch.waited or started - submitted > ctx.poll_policy.min_interval
    if first_seen and waited:
        ctx.starts.append((watch.position, started))  # the queue reached it then
    if watch.created is not None and info.started_at is not None:
        tolerance = ctx.poll_policy.target_latency / 2
        ctx.server_queue.running(
            job.id,
            watch.created,
            info.started_at / 1000.0,
            waited=first_seen and waited,  # its start is news only once
            tolerance=tolerance,
        )
    window = progress_window(progress=info.progress, running_for=now - started)
    if window is None:
        return
    watch.window = _narrowed(watch, last, (now + window[0], now + window[1]))
    if watch.first_prediction is None:
        watch.first_prediction = (now, now + window[0])


def _narrowed(
    watch: _Watch, last: tuple[float, float] | None, new: tuple[float, float]
) -> tuple[float, float]:
    """The end as every answer so far bounds it, if they agree with linear progress.

    Two answers that allow a common end make the run's own progress trustworthy (and the
    window narrower); two that do not mean its progress is not linear in time.
    """
    if last is None or watch.linear is False:
        return new
    soonest, latest = max(last[0], new[0]), min(last[1], new[1])
    watch.linear = soonest <= latest
    return (soonest, latest) if watch.linear else new


def _learn_end(ctx: RunContext, job: JobRecord, watch: _Watch, info: RunInfo) -> None:
    """A finished run: how fast slots free up, and how good its progress prediction was."""
    if info.completed_at is None:
        return
    ctx.completions.append(info.completed_at / 1000.0)
    ctx.server_queue.finished(job.id, info.completed_at / 1000.0)
    ctx.poll_gate.set_rate(
        budget_rate(poll_rate_floor(ctx.config), completion_rate(list(ctx.completions)))
    )
    if watch.first_prediction is None or info.created_at is None:
        return  # (with created_at, `_place` has set the run's offset)
    answered, soonest = watch.first_prediction
    ended = ctx.server_queue.on_our_clock(info.completed_at / 1000.0, watch.offset)
    if soonest - answered > 0:
        ctx.learn(ctx.trust, job.technique, (ended - answered) / (soonest - answered))


def _rank(watch: _Watch, now: float) -> PollRank:
    return rank(
        pending=watch.pending, predicted=watch.window is not None and now >= watch.window[0]
    )


def _delay(
    ctx: RunContext, job: JobRecord, watch: _Watch, polls: int, submitted: float
) -> tuple[float, bool, bool]:
    """How long to wait, whether to poll then, and whether a completion ends the wait
    early: the best estimate known, else the ramp."""
    policy = ctx.poll_policy
    now = ctx.clock()
    look = first_look(list(ctx.run_times.get(job.technique, ())), policy)
    if watch.window is not None:
        trust = prediction_trust(list(ctx.trust.get(job.technique, ())))
        if trust is None and watch.linear:
            trust = 1.0  # not yet known for the technique, but this run's answers agree
        soonest, latest = (max(0.0, end - now) for end in watch.window)
        return aim_running(policy, soonest=soonest, latest=latest, trust=trust), True, False
    fresh = polls == job.polls and watch.started is None
    if fresh and ctx.queue:
        ctx.queue[job.id] = watch.position  # others wait for a slot: so will it
    if job.id in ctx.queue:
        if watch.created is not None:  # from the completions seen, if they tell
            after = policy.max_interval if look is None else look
            planned = ctx.server_queue.plan(
                watch.created, watch.offset, watch.pending_server, now=now, after=after
            )
            if planned is not None:
                return min(planned[0], policy.pending_max), planned[1], True
        queued = _queued(ctx, watch, now)
        if queued is not None:
            start, spread = queued
            return (*plan_pending(policy, now=now, start=start, spread=spread, look=look), False)
    if look is not None and not watch.pending:
        due = (watch.started if watch.started is not None else submitted) + look
        if due - now > policy.min_interval:
            return due - now, True, False
    return _fallback(ctx, job, watch, polls, now - submitted), True, False


def _queued(ctx: RunContext, watch: _Watch, now: float) -> tuple[float, float] | None:
    """When this waiting run likely starts, and how unsure that is; None if unknown."""
    starts = list(ctx.starts)
    queued = queue_start(position=watch.position, starts=starts, not_before=watch.pending_at)
    if queued is not None or len(starts) >= MIN_SAMPLES:
        return queued
    ahead = sum(1 for position in ctx.queue.values() if position < watch.position)
    return head_start(now=now, ahead=ahead, rate=completion_rate(list(ctx.completions)))


def _fallback(ctx: RunContext, job: JobRecord, watch: _Watch, polls: int, elapsed: float) -> float:
    """``core.polling``'s schedule, from durations alone (nothing better is known yet)."""
    policy = ctx.poll_policy
    typical = typical_duration(list(ctx.durations.get(job.technique, ())), policy)
    run_typical = (
        typical_duration(list(ctx.run_times.get(job.technique, ())), policy)
        if watch.pending_polls
        else None
    )
    return next_poll_delay(
        policy,
        polls=polls,
        elapsed=elapsed,
        typical=typical,
        rand=ctx.rand(),
        pending_polls=watch.pending_polls,
        run_typical=run_typical,
    )


def _started(ctx: RunContext, watch: _Watch, info: RunInfo) -> float | None:
    """When the run started on our clock (None: the answer does not say), mapped through
    the run's ``offset`` (``_place``: a skewed server clock does not matter) or the least
    any run showed: ``submitted`` is late by however long the answer took."""
    if info.started_at is None or info.created_at is None:
        return None  # (with created_at, `_place` has set the run's offset)
    return ctx.server_queue.on_our_clock(info.started_at / 1000.0, watch.offset)


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
            remote_started_at=info.started_at,
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
