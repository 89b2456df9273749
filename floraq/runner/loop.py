"""The loop: page through the ledger, start one task per job, and stop everything safely.

Every job is driven by one asyncio task from wherever the ledger says it stands
(``queued``, ``submitting``, ``submitted`` or ``completed``) to a final state, so a
restarted process simply starts the same tasks again. A task never holds more
than one POST in flight for its key. Transitions go through a group committer
(``runner.commit``): a task continues only once its transition is on disk.

When the client gives up on a step (a POST, a poll, a download) after its own
retries, the task pauses and tries the step again, up to ``JOB_ROUNDS`` times, before
it leaves the job for a later ``resume``. A 401/403 stops every task at once; a 402
or the cost cap stops only new POSTs, and a POST that has not left yet is withdrawn.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from functools import partial

from floraq.api import FloraClient, RunInfo
from floraq.core.lifecycle import IN_FLIGHT, JobState
from floraq.core.polling import PollPolicy
from floraq.core.technique import Technique
from floraq.crashpoints import CrashPoints
from floraq.downloads import Downloader
from floraq.errors import AuthError, LeaseLost
from floraq.ledger import JobRecord, LedgerBackend
from floraq.runner.commit import GroupCommitter
from floraq.runner.context import (
    DURATIONS_KEPT,
    BatchPlan,
    Progress,
    RunContext,
    RunnerConfig,
    RunReport,
    no_progress,
    poll_rate_floor,
)
from floraq.runner.fetch import download
from floraq.runner.gate import inputs_ready
from floraq.runner.lease import LeaseKeeper, lease_tasks
from floraq.runner.limits import SharedRate
from floraq.runner.poll import poll_until_done
from floraq.runner.poll_gate import PollGate
from floraq.runner.prices import Prices, price_ttl
from floraq.runner.submit import claim, submit

PAGE_SIZE = 500
# In-flight jobs first (their runs may exist), in the order the ledger pages them.
_PASSES: tuple[tuple[JobState, ...], ...] = (
    tuple(s for s in JobState if s in IN_FLIGHT),
    (JobState.QUEUED,),
)
_WAITED_FOR = frozenset({JobState.SUBMITTED, JobState.COMPLETED})  # skipped by --no-wait


class Runner:
    """Drive every active job of some batches to a final state (or a safe stop)."""

    def __init__(
        self,
        *,
        ledger: LedgerBackend,
        client: FloraClient,
        downloader: Downloader,
        techniques: dict[str, Technique],
        batches: dict[str, BatchPlan],
        config: RunnerConfig,
        progress: Progress | None = None,
        crash: CrashPoints | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rand: Callable[[], float] = random.random,
        shared: SharedRate | None = None,
        lease: LeaseKeeper | None = None,
    ) -> None:
        self.ctx = RunContext(
            ledger=ledger,
            client=client,
            downloader=downloader,
            techniques=techniques,
            batches=batches,
            config=config,
            progress=progress or no_progress(),
            crash=crash or CrashPoints(None),
            clock=clock,
            sleep=sleep,
            rand=rand,
            committer=GroupCommitter(ledger),
            prices=Prices(clock=clock, ttl=price_ttl(config.time_scale)),
            poll_policy=PollPolicy().scaled(config.time_scale),
            poll_gate=PollGate(rate=poll_rate_floor(config), clock=clock, sleep=sleep),
            durations={
                slug: deque(ledger.typical_durations(slug), maxlen=DURATIONS_KEPT)
                for slug in techniques
            },
            lease=lease,
            run_times={
                slug: deque(ledger.typical_run_times(slug), maxlen=DURATIONS_KEPT)
                for slug in techniques
            },
        )
        self.shared = shared

    @property
    def report(self) -> RunReport:
        return self.ctx.report

    async def run(self) -> RunReport:
        """Drive every active job; the report once every task has stopped and all is saved."""
        ctx = self.ctx
        names = list(ctx.batches)
        slots = asyncio.Semaphore(ctx.config.max_outstanding)
        sharing = self._share()
        beat: asyncio.Task[None] | None = None
        if ctx.lease is None:
            _expire_stale_intents(ctx, names)  # a worker checks each intent it leases
        else:
            ctx.lease.start()
            beat = asyncio.create_task(ctx.lease.beat(ctx.lease_lost))
        try:
            if ctx.lease is None:
                for states in _PASSES:
                    await _start_tasks(ctx, names, states, slots)
            else:
                await lease_tasks(ctx, ctx.lease, names, partial(_start, ctx, slots))
            while ctx.tasks:
                await asyncio.wait(set(ctx.tasks))
        finally:
            for task in ctx.tasks:
                task.cancel()
            if ctx.tasks:
                await asyncio.gather(*ctx.tasks, return_exceptions=True)
            if ctx.uploads is not None:
                await ctx.uploads.aclose()
            ctx.poll_gate.close()
            if beat is not None and ctx.lease is not None:
                beat.cancel()
                await asyncio.gather(beat, return_exceptions=True)
                _let_go(ctx, ctx.lease)
            else:
                ctx.committer.flush()
            await self._stop_sharing(sharing)
        if ctx.bug is not None:
            raise ctx.bug  # every transition so far is committed; `resume` continues
        if ctx.lease is not None and ctx.lease.broken is not None:
            raise ctx.lease.broken  # the ledger's connection went: not a lapse (exit 8)
        return ctx.report

    def _share(self) -> asyncio.Task[None] | None:
        """Keep the shared limits in step (``build_runner`` read them before any request)."""
        if self.shared is None:
            return None
        return asyncio.create_task(_guarded(self.ctx, self.shared.run))

    async def _stop_sharing(self, sharing: asyncio.Task[None] | None) -> None:
        if sharing is None or self.shared is None:
            return
        sharing.cancel()
        await asyncio.gather(sharing, return_exceptions=True)
        self.shared.finish()


async def _guarded(ctx: RunContext, work: Callable[[], Awaitable[None]]) -> None:
    """A bug in the sharing stops the loop as a bug in a task does."""
    try:
        await work()
    except Exception as e:
        ctx.bug = ctx.bug or e
        ctx.stop_everything()


async def _start_tasks(
    ctx: RunContext, names: list[str], states: tuple[JobState, ...], slots: asyncio.Semaphore
) -> None:
    """Page through the jobs in ``states``, one task each, at most ``max_outstanding`` live."""
    after = 0
    while not ctx.stop_all:
        if states == (JobState.QUEUED,) and all(ctx.submitting_stopped(n) for n in names):
            return  # every batch stopped (its cap, say): the rest stay queued, unread
        page = ctx.ledger.jobs(batches=names, states=states, after_id=after, limit=PAGE_SIZE)
        if not page:
            return
        after = page[-1].id
        for job in page:
            if job.state is JobState.QUEUED and ctx.submitting_stopped(job.batch):
                continue
            if not ctx.config.wait and job.state in _WAITED_FOR:
                continue  # --no-wait: only send; `resume` polls and downloads
            await slots.acquire()
            if ctx.stop_all:
                slots.release()
                break
            task = asyncio.create_task(_drive_guarded(ctx, job, slots))
            ctx.tasks.add(task)
            task.add_done_callback(ctx.tasks.discard)


def _let_go(ctx: RunContext, lease: LeaseKeeper) -> None:
    """Commit what is decided and hand the rows back; a worker whose lease is gone has
    nothing left to commit (its writes are refused) and its rows pass with the lease."""
    try:
        ctx.committer.flush()
    except Exception:
        if lease.held():
            raise
    lease.release()


async def _start(ctx: RunContext, slots: asyncio.Semaphore, job: JobRecord) -> bool:
    """One task for ``job`` once a slot is free; False (none started) if everything stopped."""
    await slots.acquire()
    if ctx.stop_all:
        slots.release()
        return False
    task = asyncio.create_task(_drive_guarded(ctx, job, slots))
    ctx.tasks.add(task)
    task.add_done_callback(ctx.tasks.discard)
    return True


async def _drive_guarded(ctx: RunContext, job: JobRecord, slots: asyncio.Semaphore) -> None:
    try:
        await _drive(ctx, job)
    except LeaseLost:
        ctx.report.rows_lost += 1  # another worker holds it now: its task ends here
    except AuthError as e:
        ctx.report.auth_error = ctx.report.auth_error or e
        ctx.stop_everything()
    except Exception as e:  # a bug in floraq: stop safely, then let it be seen
        if ctx.lease is not None and not ctx.lease.held():
            ctx.report.rows_lost += 1  # the ledger is out of reach: the lease is lost
            ctx.lease_lost()
            return
        ctx.bug = ctx.bug or e
        ctx.stop_everything()
    finally:
        ctx.claim_settled(job.id)
        slots.release()


async def _drive(ctx: RunContext, job: JobRecord) -> None:
    """Move one job as far as it can go: claim, submit, poll, download.

    Each step hands back the job as it committed it, so the ledger is not read again.
    """
    while True:
        claimed = False
        if job.state is JobState.QUEUED and not await inputs_ready(ctx, job):
            return
        if job.state is JobState.QUEUED:
            intent = await claim(ctx, job)
            ctx.claim_settled(job.id)
            if intent is None:
                return
            job, claimed = intent, True
        first: RunInfo | None = None
        if job.state is JobState.SUBMITTING:
            sent = await submit(ctx, job, claimed=claimed)
            if sent is None or not ctx.config.wait:
                return
            job, first = sent
        if job.state is JobState.SUBMITTED:
            job = await poll_until_done(ctx, job, first)
            if job.state is JobState.QUEUED:
                continue  # a failed run's new attempt
        if job.state is JobState.COMPLETED:
            await download(ctx, job)
        return


def _expire_stale_intents(ctx: RunContext, batches: Iterable[str]) -> None:
    """Intents older than the key window can never be re-sent safely."""
    config = ctx.config
    limit = ctx.clock() - (config.idempotency_window - config.window_margin)
    stale = [
        job
        for job in ctx.ledger.jobs(batches=list(batches), states=[JobState.SUBMITTING], limit=10**9)
        if (job.submitting_at or 0) < limit
    ]
    with ctx.ledger.transaction():
        for job in stale:
            ctx.ledger.move(
                job.id,
                JobState.SUBMITTING,
                JobState.UNKNOWN_OUTCOME,
                error_code="idempotency_window_passed",
                error_message="an earlier POST may have created a run, and its idempotency"
                " key has expired: re-sending could pay twice. Check FLORA, then"
                " `floraq retry --unknown`",
            )
