"""The loop: submit, poll and download with bounded concurrency, one task per job.

Every job is driven by one asyncio task from wherever the ledger says it stands
(``queued``, ``submitting``, ``submitted`` or ``completed``) to a final state, so a
restarted process simply starts the same tasks again. A task never holds more
than one POST in flight for its key. Transitions go through a group committer:
everything the tasks decided in one turn of the event loop lands in one
transaction (one fsync), and a task continues only once its transition is on disk.

When the client gives up on a step (a POST, a poll, a download) after its own
retries, the task pauses and tries the step again, up to ``JOB_ROUNDS`` times, before
it leaves the job for a later ``resume``. A 401/403 stops every task at once; a 402
or the cost cap stops only new POSTs, and a POST that has not left yet is withdrawn.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field, replace
from decimal import Decimal
from pathlib import Path
from typing import Any, Protocol, TypeVar

from floraq.api import FloraClient, RunInfo
from floraq.core.failures import FailureTier, classify_failure
from floraq.core.keys import idempotency_key
from floraq.core.lifecycle import JobState
from floraq.core.money import ZERO
from floraq.core.polling import (
    PollPolicy,
    earliest_remaining,
    next_poll_delay,
    typical_duration,
)
from floraq.core.submission import (
    JOB_ROUNDS,
    MOVES,
    Action,
    Outcome,
    PostResult,
    Record,
    Situation,
    Tally,
    decide,
)
from floraq.core.technique import Technique
from floraq.core.validation import SAFE_NAME, run_inputs
from floraq.crashpoints import CrashPoints
from floraq.downloads import Downloaded, Downloader
from floraq.errors import (
    ApiError,
    AuthError,
    DownloadError,
    DownloadExpired,
    DownloadRefused,
    IdempotencyDuplicate,
    InputRejected,
    InsufficientCredits,
    NotFound,
    NotSent,
    RateLimited,
    ServerError,
    TransportError,
)
from floraq.ledger import JobRecord, Ledger

IN_FLIGHT_STATES = (JobState.SUBMITTING, JobState.SUBMITTED, JobState.COMPLETED)
T = TypeVar("T")
PAGE_SIZE = 500
COST_RECHECKS = 3  # re-reads of a completed run whose charged_cost has not settled yet
EXPIRED_REPOLLS = 2  # fresh-URL re-polls before an output is declared expired
ROUND_PAUSE = 10.0  # seconds before the first such round; doubles each round (x time_scale)


class Progress(Protocol):
    """Where the runner reports what happened (the console draws it)."""

    def advance(self, what: str, n: int = 1) -> None: ...


class _NoProgress:
    def advance(self, what: str, n: int = 1) -> None:
        pass


@dataclass(frozen=True, slots=True)
class BatchPlan:
    """What the runner needs to know about one batch."""

    name: str
    output_dir: Path
    max_cost: Decimal | None
    retry_failed_runs: int


@dataclass(frozen=True, slots=True)
class RunnerConfig:
    concurrency: int = 8  # HTTP requests in flight (API and downloads each)
    max_outstanding: int = 100  # runs submitted and not yet finished
    wait: bool = True  # False: submit and return (`submit --no-wait`)
    idempotency_window: float = 7200.0
    window_margin: float = 600.0
    time_scale: float = 1.0
    key_fingerprint: str | None = None  # of the API key in use (core.keys.api_key_fingerprint)
    # Polls of one run in one process before it is left for the next `resume` (~5.5 h at
    # the 5 s interval): a run FLORA never finishes must not hold the ledger lock forever.
    max_polls: int = 4000


@dataclass(slots=True)
class RunReport:
    """How the loop ended; the batch layer turns it into an exit code."""

    paused: set[str] = field(default_factory=set)  # "insufficient_credits", "budget"
    auth_error: AuthError | None = None
    incomplete: int = 0  # jobs left in flight because of network trouble
    posts: int = 0
    polls: int = 0
    downloads: int = 0


class GroupCommitter:
    """Collect the transitions decided in one loop turn and commit them together.

    The common path runs every op of the turn in one transaction without savepoints; only
    if one raises is the turn rolled back and re-run with a savepoint per op, so a bad op
    cannot undo its neighbours. Ops are ledger calls only, so running one again is safe.
    """

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self._pending: list[tuple[Callable[[], Any], asyncio.Future[Any]]] = []
        self._scheduled = False

    async def commit(self, op: Callable[[], T]) -> T:
        """Run ``op`` in the next group commit; its result once the commit is on disk."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._pending.append((op, future))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self.flush)
        return await asyncio.shield(future)

    def flush(self) -> None:
        """Commit everything pending now (also called on shutdown)."""
        self._scheduled = False
        pending, self._pending = self._pending, []
        if not pending:
            return
        try:
            outcomes = self._together(pending)
        except _OpFailed:
            outcomes = None
        except BaseException as e:
            self._settle(pending, [e] * len(pending))
            raise
        if outcomes is None:
            try:
                outcomes = self._one_by_one(pending)
            except BaseException as e:
                self._settle(pending, [e] * len(pending))
                raise
        self._settle(pending, outcomes)

    def _together(self, pending: list[tuple[Callable[[], Any], asyncio.Future[Any]]]) -> list[Any]:
        """Every op in one transaction; _OpFailed (all rolled back) if any op raises."""
        results: list[Any] = []
        with self.ledger.transaction():
            for op, _ in pending:
                try:
                    results.append(_Done(op()))
                except Exception as e:
                    raise _OpFailed from e
        return results

    def _one_by_one(
        self, pending: list[tuple[Callable[[], Any], asyncio.Future[Any]]]
    ) -> list[Any]:
        """Every op in its own savepoint of one transaction: a failing op is undone alone."""
        outcomes: list[Any] = []
        with self.ledger.transaction():
            for op, _ in pending:
                try:
                    with self.ledger.savepoint():
                        outcomes.append(_Done(op()))
                except Exception as e:
                    outcomes.append(e)
        return outcomes

    @staticmethod
    def _settle(
        pending: list[tuple[Callable[[], Any], asyncio.Future[Any]]], outcomes: list[Any]
    ) -> None:
        for (_, future), outcome in zip(pending, outcomes, strict=True):
            if future.done():
                continue
            if isinstance(outcome, _Done):
                future.set_result(outcome.value)
            else:
                future.set_exception(outcome)


@dataclass(frozen=True, slots=True)
class _Done:
    """An op's result (a wrapper, so an op may return an exception object as a value)."""

    value: Any


class _OpFailed(Exception):
    """One op of a group commit raised: the group is re-run op by op."""


class Runner:
    """Drive every active job of some batches to a final state (or a safe stop)."""

    def __init__(
        self,
        *,
        ledger: Ledger,
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
    ) -> None:
        self.ledger = ledger
        self.client = client
        self.downloader = downloader
        self.techniques = techniques
        self.batches = batches
        self.config = config
        self.progress: Progress = progress or _NoProgress()
        self.crash = crash or CrashPoints(None)
        self.clock = clock
        self.sleep = sleep
        self.rand = rand
        self.report = RunReport()
        self.committer = GroupCommitter(ledger)
        self.paused_batches: set[str] = set()  # reached their cost cap: no new claims
        self.stop_all = False  # credentials refused: nothing more may be sent
        self._bug: Exception | None = None  # a bug stopped the loop: raised once all is saved
        self.out_of_credits = False  # a 402: the workspace cannot pay for any new run
        self._tasks: set[asyncio.Task[None]] = set()
        scale = config.time_scale
        self.poll_policy = PollPolicy().scaled(scale)
        self.durations: dict[str, deque[float]] = {
            slug: deque(ledger.typical_durations(slug), maxlen=50) for slug in techniques
        }
        # From started_at: how long runs take once they have a slot (learned in this process).
        self.run_times: dict[str, deque[float]] = {}

    # -- the loop ---------------------------------------------------------------------

    async def run(self) -> RunReport:
        names = list(self.batches)
        self._expire_stale_intents(names)
        slots = asyncio.Semaphore(self.config.max_outstanding)
        tasks = self._tasks
        try:
            for states in (IN_FLIGHT_STATES, (JobState.QUEUED,)):
                after = 0
                while not self.stop_all:
                    page = self.ledger.jobs(
                        batches=names, states=states, after_id=after, limit=PAGE_SIZE
                    )
                    if not page:
                        break
                    after = page[-1].id
                    for job in page:
                        if job.state is JobState.QUEUED and self._submitting_stopped(job.batch):
                            continue
                        if not self.config.wait and job.state in (
                            JobState.SUBMITTED,
                            JobState.COMPLETED,
                        ):
                            continue  # --no-wait: only send; `resume` polls and downloads
                        await slots.acquire()
                        if self.stop_all:
                            slots.release()
                            break
                        task = asyncio.create_task(self._drive_guarded(job, slots))
                        tasks.add(task)
                        task.add_done_callback(tasks.discard)
            while tasks:
                await asyncio.wait(set(tasks))
        finally:
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)
            self.committer.flush()
        if self._bug is not None:
            raise self._bug  # every transition so far is committed; `resume` continues
        return self.report

    async def _drive_guarded(self, job: JobRecord, slots: asyncio.Semaphore) -> None:
        try:
            await self._drive(job)
        except AuthError as e:
            self.report.auth_error = self.report.auth_error or e
            self._stop_everything()
        except Exception as e:  # a bug in floraq: stop safely, then let it be seen
            self._bug = self._bug or e
            self._stop_everything()
        finally:
            slots.release()

    def _stop_everything(self) -> None:
        """Credentials refused: no task may send anything more. Each one's state is on disk."""
        if self.stop_all:
            return  # already done: a second cancel would interrupt their last commits
        self.stop_all = True
        me = asyncio.current_task()
        for task in self._tasks:
            if task is not me:
                task.cancel()

    async def _drive(self, job: JobRecord) -> None:
        """Move one job as far as it can go: submit, poll, download.

        Each step hands back the job as it committed it, so the ledger is not read again.
        """
        while True:
            claimed = False
            if job.state is JobState.QUEUED:
                intent = await self._claim(job)
                if intent is None:
                    return
                job, claimed = intent, True
            first: RunInfo | None = None
            if job.state is JobState.SUBMITTING:
                sent = await self._submit(job, claimed=claimed)
                if sent is None or not self.config.wait:
                    return
                job, first = sent
            if job.state is JobState.SUBMITTED:
                job = await self._poll_until_done(job, first)
                if job.state is JobState.QUEUED:
                    continue  # a failed run's new attempt
            if job.state is JobState.COMPLETED:
                await self._download(job)
            return

    # -- submit -------------------------------------------------------------------------

    def _submitting_stopped(self, batch: str) -> bool:
        """No new intent for this batch (a claim already inside the cap may still be sent)."""
        return self._posting_stopped() or batch in self.paused_batches

    def _posting_stopped(self) -> bool:
        """No POST may leave at all, not even for an intent already committed."""
        return self.stop_all or self.out_of_credits

    async def _claim(self, job: JobRecord) -> JobRecord | None:
        """Reserve the quote and commit the intent in one ledger transaction.

        None when this batch may not submit now (stopped, or the quote would pass its cap).
        """
        if self._submitting_stopped(job.batch):
            return None
        cost = self._run_cost(job)
        at = self.clock()
        claim = functools.partial(
            self.ledger.claim,
            job.id,
            at=at,
            quote=cost,
            key_fingerprint=self.config.key_fingerprint,
            cap=self.batches[job.batch].max_cost,
        )
        try:
            claimed = await self.committer.commit(claim)
        except asyncio.CancelledError:
            # The intent may land anyway (commits are shielded); nothing was sent: take it back.
            await self.committer.commit(functools.partial(self._take_back, job.id))
            raise
        if not claimed:
            self._pause(job.batch, "budget")
            return None
        self.crash("after_intent_commit")
        return replace(
            job,
            state=JobState.SUBMITTING,
            submitting_at=at,
            estimated_cost=cost,
            key_fingerprint=self.config.key_fingerprint,
        )

    def _take_back(self, job_id: int) -> None:
        """Undo an intent nothing was sent for (if the claim landed): back to queued."""
        if self.ledger.job(job_id).state is JobState.SUBMITTING:
            self.ledger.move(job_id, JobState.SUBMITTING, JobState.QUEUED)

    def _release_quote(self, job: JobRecord) -> None:
        """Nothing to do: the move out of `submitting` releases it in the ledger."""

    async def _submit(self, job: JobRecord, *, claimed: bool) -> tuple[JobRecord, RunInfo] | None:
        """POST the run (same key on every retry); commit its id the moment it arrives.

        Returns the job as committed (``submitted``) and the create answer. What each
        answer means is decided by ``core.submission.decide``; this runs the checks and
        the POST, hands it the facts and applies its outcome.

        ``claimed``: this process committed the intent and has sent nothing for it yet,
        so a POST withdrawn now can go back to ``queued`` without any risk.
        """
        inputs, invalid = self._inputs(job)
        tally = Tally(doubt=not claimed)  # an earlier process's intent may have made a run
        while True:
            checks = Situation(
                result=PostResult.NONE_YET,
                claimed=claimed,
                tally=tally,
                key_changed=self._key_changed(job),
                invalid_row=invalid,
                window_passed=self._window_passed(job),
            )
            outcome, answer = decide(checks), _NO_ANSWER
            if outcome.action is Action.POST:
                answer = await self._post(job, inputs)
                outcome = decide(answer.situation(checks, posting_stopped=self._posting_stopped()))
            done = await self._apply(job, outcome, answer)
            if outcome.reraise:
                assert answer.error is not None
                raise answer.error
            if outcome.action is not Action.RETRY:
                return done
            tally = outcome.tally
            await self._pause_round(tally.rounds)

    def _inputs(self, job: JobRecord) -> tuple[list[dict[str, str]], str | None]:
        """The run's inputs, or why a row re-queued by hand no longer fits its technique."""
        technique = self.techniques[job.technique]
        try:
            return run_inputs(job.inputs, technique), None
        except ValueError as e:
            return [], str(e)

    async def _post(self, job: JobRecord, inputs: list[dict[str, str]]) -> _Answer:
        """One create_run call (the client retries inside it), classified, never raised."""
        left = False  # the first attempt was let go: a run may exist for this key

        def proceed() -> bool:
            nonlocal left
            if self._posting_stopped():
                return False
            left = True
            return True

        self.report.posts += 1
        try:
            info = await self.client.create_run(
                job.technique,
                inputs=inputs,
                idempotency_key=job.idempotency_key,
                proceed=proceed,
            )
        except _CLASSIFIED as e:
            if isinstance(e, NotSent):
                self.report.posts -= 1
            return _Answer.of(e, left=left)
        return _Answer(PostResult.ANSWERED, left=left, info=info)

    async def _apply(
        self, job: JobRecord, outcome: Outcome, answer: _Answer
    ) -> tuple[JobRecord, RunInfo] | None:
        """The one place a submission outcome becomes runner flags, the quote and a ledger write."""
        error = answer.error
        if outcome.stop_everything:
            assert isinstance(error, AuthError)
            self.report.auth_error = self.report.auth_error or error
            self._stop_everything()  # before any await: no other POST may leave now
        if outcome.credits_ran_out:
            self.out_of_credits = True
            self.report.paused.add("insufficient_credits")
        if outcome.incomplete:
            self.report.incomplete += 1  # a kept intent: `resume` re-POSTs this key
        if outcome.release_quote:
            self._release_quote(job)
        if outcome.action is Action.SUBMITTED:
            assert answer.info is not None
            return await self._record_run(job, answer.info)
        new = MOVES.get(outcome.action)
        if outcome.record is Record.ANSWER_IN_FULL:
            assert isinstance(error, ApiError) and new is not None
            await self._fail(job, JobState.SUBMITTING, new, error, tier=outcome.tier)
            return None
        fields = _error_fields(outcome, error)
        if new is not None:
            await self._move(job, JobState.SUBMITTING, new, **fields)
        elif fields:
            await self._note(job, **fields)  # the state stays: the status shows the error
        return None

    async def _record_run(self, job: JobRecord, info: RunInfo) -> tuple[JobRecord, RunInfo]:
        """Commit the run id before anything else: a lost id cannot be looked up."""
        self.crash("after_post_before_commit")
        at = self.clock()
        await self._move(
            job,
            JobState.SUBMITTING,
            JobState.SUBMITTED,
            run_id=info.run_id,
            poll_url=info.poll_url,
            remote_status=info.status,
            progress=info.progress,
            remote_created_at=info.created_at,
            submitted_at=at,
            request_id=info.request_id,
            error_code=None,
            error_message=None,
            error_fields=None,
            failure_tier=None,
        )
        self.progress.advance("submitted")
        done = replace(
            job,
            state=JobState.SUBMITTED,
            run_id=info.run_id,
            poll_url=info.poll_url,
            submitted_at=at,
        )
        return done, info

    # -- poll ---------------------------------------------------------------------------

    async def _poll_until_done(self, job: JobRecord, first: RunInfo | None) -> JobRecord:
        """Poll until the run completes or fails; the job as it then stands.

        Still ``submitted`` when polling gave up for now; ``queued`` (a new attempt) when a
        failed run is tried again.
        """
        assert job.run_id is not None
        polls = job.polls
        info = first
        submitted = job.submitted_at or self.clock()
        rounds = 0
        pending_polls = 0  # poll answers in a row that said `pending`
        predicted_end: float | None = None  # on our clock: the soonest the last answer allows
        while info is None or not _is_finished(info):
            typical = typical_duration(
                list(self.durations.get(job.technique, ())), self.poll_policy
            )
            now = self.clock()
            remaining = None if predicted_end is None else max(0.0, predicted_end - now)
            delay = next_poll_delay(
                self.poll_policy,
                polls=polls,
                elapsed=now - submitted,
                typical=typical,
                rand=self.rand(),
                pending_polls=pending_polls,
                remaining=remaining,
                run_typical=typical_duration(
                    list(self.run_times.get(job.technique, ())), self.poll_policy
                )
                if pending_polls
                else None,
            )
            await self.sleep(delay)
            try:
                info = await self.client.get_run(job.technique, job.run_id, poll_url=job.poll_url)
            except NotFound as e:
                await self._fail(
                    job, JobState.SUBMITTED, JobState.FAILED, e, tier=FailureTier.REPORT
                )
                return replace(job, state=JobState.FAILED)
            except (TransportError, ApiError):
                rounds += 1
                if rounds > JOB_ROUNDS:
                    self.report.incomplete += 1
                    return job
                await self._pause_round(rounds)
                continue
            polls += 1
            self.report.polls += 1
            if polls - job.polls >= self.config.max_polls and not _is_finished(info):
                self.report.incomplete += 1  # still `submitted`: the next resume polls on
                await self.committer.commit(
                    functools.partial(self.ledger.update, job.id, polls=polls)
                )
                return replace(job, polls=polls)
            pending_polls = pending_polls + 1 if info.status == "pending" else 0
            answered = self.clock()
            left = self._remaining(info, submitted, answered)
            predicted_end = None if left is None else answered + left
        if info.status == "completed":
            await self._completed(job, info, polls)
            return replace(job, state=JobState.COMPLETED, polls=polls)
        retry = await self._failed(job, info, polls)
        return retry or replace(job, state=JobState.FAILED, polls=polls)

    def _remaining(self, info: RunInfo, submitted: float, now: float) -> float | None:
        """When a running run can end at the soonest, from its progress (seconds from now).

        The server's clock is mapped onto ours by its ``created_at`` and our ``submitted``
        (both taken at the POST), so a skewed server clock does not matter.
        """
        if info.status != "running" or info.started_at is None or info.created_at is None:
            return None
        started = submitted + (info.started_at - info.created_at) / 1000.0
        return earliest_remaining(progress=info.progress, running_for=now - started)

    async def _completed(self, job: JobRecord, info: RunInfo, polls: int) -> None:
        charged = info.charged_cost
        for _ in range(COST_RECHECKS):
            if charged is not None:
                break
            await self.sleep(self.poll_policy.min_interval)
            try:
                again = await self.client.get_run(job.technique, info.run_id, poll_url=job.poll_url)
            except (TransportError, ApiError):
                break
            self.report.polls += 1
            polls += 1
            charged = again.charged_cost
            info = again if again.outputs else info
        if info.created_at is not None and info.completed_at is not None:
            self.durations.setdefault(job.technique, deque(maxlen=50)).append(
                (info.completed_at - info.created_at) / 1000.0
            )
        if info.started_at is not None and info.completed_at is not None:
            self.run_times.setdefault(job.technique, deque(maxlen=50)).append(
                (info.completed_at - info.started_at) / 1000.0
            )

        def record() -> None:
            self.ledger.record_outputs(job.id, ((o.output_id, o.type, o.url) for o in info.outputs))
            self.ledger.move(
                job.id,
                JobState.SUBMITTED,
                JobState.COMPLETED,
                remote_status=info.status,
                progress=info.progress,
                charged_cost=charged,
                remote_completed_at=info.completed_at,
                completed_at=self.clock(),
                polls=polls,
            )

        await self.committer.commit(record)
        self.progress.advance("completed")

    async def _failed(self, job: JobRecord, info: RunInfo, polls: int) -> JobRecord | None:
        tier = classify_failure(info.error_code, info.error_message)
        await self._move(
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
        self.progress.advance("failed")
        allowed = self.batches[job.batch].retry_failed_runs
        if tier is not FailureTier.RETRY_NOW or job.auto_retries >= allowed:
            return None
        # Queued even when submitting is paused: `resume` then sends the new attempt.
        attempt = job.attempt + 1
        key = idempotency_key(
            batch=job.batch, technique=job.technique, inputs=job.inputs, attempt=attempt
        )
        # new_attempt keeps the failed run's charge (and its history) in the ledger.
        await self.committer.commit(
            functools.partial(
                self.ledger.new_attempt,
                job.id,
                JobState.FAILED,
                attempt=attempt,
                idempotency_key=key,
                auto_retries=job.auto_retries + 1,
            )
        )
        return self.ledger.job(job.id)

    # -- download -----------------------------------------------------------------------

    async def _download(self, job: JobRecord) -> None:
        """Fetch every output not yet on disk; re-poll for fresh URLs when one has expired."""
        folder = self.batches[job.batch].output_dir / safe_segment(job.technique)
        folder = folder / safe_segment(job.row_key)
        repolls = 0
        rounds = 0
        last_error = ""
        while True:
            expired = False
            gave_up = False
            for output in self.ledger.outputs(job.id):
                if output.state == "downloaded":
                    continue
                try:
                    got = await self.downloader.download(
                        output.url,
                        dest_stem=folder / safe_segment(output.output_id),
                        output_type=output.type,
                    )
                except (DownloadExpired, DownloadRefused) as e:
                    # Ask the run for fresh URLs; never re-run it. Plain http:// is never fetched.
                    expired, last_error = True, str(e)
                    continue
                except (DownloadError, TransportError):
                    gave_up = True
                    continue
                self.report.downloads += 1
                await self.committer.commit(
                    functools.partial(self._record_download, job.id, output.output_id, got)
                )
                self.progress.advance("downloaded")
            if gave_up:
                rounds += 1
                if rounds > JOB_ROUNDS:
                    self.report.incomplete += 1
                    return
                await self._pause_round(rounds)
                continue
            if not expired:
                await self._move(job, JobState.COMPLETED, JobState.DOWNLOADED)
                return
            if repolls >= EXPIRED_REPOLLS or job.run_id is None:
                await self.committer.commit(functools.partial(self._expire, job, last_error))
                return
            repolls += 1
            try:
                fresh = await self.client.get_run(job.technique, job.run_id, poll_url=job.poll_url)
            except (TransportError, ApiError):
                self.report.incomplete += 1  # the stored URLs stay; `resume` tries again
                return
            self.report.polls += 1
            await self.committer.commit(
                functools.partial(
                    self.ledger.record_outputs,
                    job.id,
                    [(o.output_id, o.type, o.url) for o in fresh.outputs],
                )
            )

    def _record_download(self, job_id: int, output_id: str, got: Downloaded) -> None:
        self.ledger.output_downloaded(
            job_id,
            output_id,
            path=str(got.path),
            size=got.bytes,
            sha256=got.sha256,
            content_type=got.content_type,
        )

    def _expire(self, job: JobRecord, error: str) -> None:
        for output in self.ledger.outputs(job.id):
            if output.state != "downloaded":
                self.ledger.output_expired(job.id, output.output_id, error)
        self.ledger.move(
            job.id,
            JobState.COMPLETED,
            JobState.EXPIRED,
            error_code="output_expired",
            error_message=error,
        )

    # -- helpers ------------------------------------------------------------------------

    def _window_passed(self, job: JobRecord) -> bool:
        """Re-sending this intent's key now could create a second run (FLORA forgot the key)."""
        started = job.submitting_at if job.submitting_at is not None else self.clock()
        return self.clock() - started > self.config.idempotency_window - self.config.window_margin

    async def _pause_round(self, rounds: int) -> None:
        """The wait before trying a step again after the client gave up on it."""
        await self.sleep(ROUND_PAUSE * 2.0 ** (rounds - 1) * self.config.time_scale)

    def _key_changed(self, job: JobRecord) -> bool:
        """Was this row's intent committed under another API key than ours?"""
        mine = self.config.key_fingerprint
        return bool(job.key_fingerprint and mine and job.key_fingerprint != mine)

    async def _note(self, job: JobRecord, **fields: Any) -> None:
        """Record an error on a job that keeps its state (the status shows it)."""
        await self.committer.commit(functools.partial(self.ledger.update, job.id, **fields))

    async def _move(self, job: JobRecord, current: JobState, new: JobState, **fields: Any) -> None:
        await self.committer.commit(lambda: self.ledger.move(job.id, current, new, **fields))

    async def _fail(
        self,
        job: JobRecord,
        current: JobState,
        new: JobState,
        error: ApiError,
        *,
        tier: FailureTier | None = None,
    ) -> None:
        fields: dict[str, Any] = {
            "error_code": error.code,
            "error_message": error.message,
            "request_id": error.request_id,
        }
        if error.fields:
            fields["error_fields"] = json.dumps(error.fields, sort_keys=True)
        if tier is not None:
            fields["failure_tier"] = tier.value
        await self._move(job, current, new, **fields)
        self.progress.advance(new.value)

    def _pause(self, batch: str, reason: str) -> None:
        self.paused_batches.add(batch)
        self.report.paused.add(reason)

    def _run_cost(self, job: JobRecord) -> Decimal:
        technique = self.techniques.get(job.technique)
        return technique.run_cost if technique else (job.estimated_cost or ZERO)

    def _expire_stale_intents(self, batches: Iterable[str]) -> None:
        """Intents older than the key window can never be re-sent safely."""
        limit = self.clock() - (self.config.idempotency_window - self.config.window_margin)
        stale = [
            job
            for job in self.ledger.jobs(
                batches=list(batches), states=[JobState.SUBMITTING], limit=10**9
            )
            if (job.submitting_at or 0) < limit
        ]
        with self.ledger.transaction():
            for job in stale:
                self.ledger.move(
                    job.id,
                    JobState.SUBMITTING,
                    JobState.UNKNOWN_OUTCOME,
                    error_code="idempotency_window_passed",
                    error_message="an earlier POST may have created a run, and its idempotency"
                    " key has expired: re-sending could pay twice. Check FLORA, then"
                    " `floraq retry --unknown`",
                )


@dataclass(frozen=True, slots=True)
class _Answer:
    """What one create_run call came to, as the facts ``core.submission.decide`` reads."""

    result: PostResult
    left: bool  # the first attempt was let go
    info: RunInfo | None = None
    error: BaseException | None = None
    unanswered: bool = False
    status: int = 0
    repeated: bool = False

    @staticmethod
    def of(error: BaseException, *, left: bool) -> _Answer:
        result = next(r for kind, r in _RESULT_BY_ERROR if isinstance(error, kind))
        reply = error if isinstance(error, (ApiError, AuthError)) else None
        return _Answer(
            result,
            left=left,
            error=error,
            unanswered=reply is not None and bool(reply.unanswered),
            status=reply.status if reply is not None else 0,
            repeated=isinstance(error, ServerError) and bool(error.repeated),
        )

    def situation(self, checks: Situation, *, posting_stopped: bool) -> Situation:
        """The checks that let the POST go, with what it came to."""
        return replace(
            checks,
            result=self.result,
            left=self.left,
            unanswered=self.unanswered,
            status=self.status,
            repeated=self.repeated,
            posting_stopped=posting_stopped,
        )


_NO_ANSWER = _Answer(PostResult.NONE_YET, left=False)

# First match wins: subclasses before ApiError, whose other statuses (408, 413...) come last.
_RESULT_BY_ERROR: tuple[tuple[type[BaseException], PostResult], ...] = (
    (asyncio.CancelledError, PostResult.CANCELLED),
    (NotSent, PostResult.NOT_SENT),
    (IdempotencyDuplicate, PostResult.DUPLICATE),
    (InsufficientCredits, PostResult.INSUFFICIENT_CREDITS),
    (InputRejected, PostResult.INPUT_REJECTED),
    (NotFound, PostResult.NOT_FOUND),
    (AuthError, PostResult.AUTH_REFUSED),
    (ServerError, PostResult.SERVER_ERROR),
    (TransportError, PostResult.TRANSPORT_ERROR),
    (RateLimited, PostResult.RATE_LIMITED),
    (ApiError, PostResult.OTHER_STATUS),
)
_CLASSIFIED = tuple(kind for kind, _ in _RESULT_BY_ERROR)


def _error_fields(outcome: Outcome, error: BaseException | None) -> dict[str, Any]:
    """The error columns a move (or a note) writes, as the outcome's ``record`` says."""
    if outcome.record is Record.OWN:
        assert outcome.error_code is not None
        return {"error_code": outcome.error_code.value, "error_message": outcome.error_message}
    if outcome.record is Record.ANSWER:
        assert isinstance(error, (ApiError, AuthError))
        return {
            "error_code": error.code,
            "error_message": error.message,
            "request_id": error.request_id,
        }
    return {}


def _is_finished(info: RunInfo) -> bool:
    """Finished only by status (never by progress); `completed` must carry its outputs."""
    return info.status == "failed" or (info.status == "completed" and bool(info.outputs))


def safe_segment(name: str) -> str:
    """A path segment from a name we do not fully control (output ids come from the server)."""
    if SAFE_NAME.fullmatch(name) and name not in (".", ".."):
        return name
    return "x" + hashlib.sha256(name.encode("utf-8")).hexdigest()[:16]
