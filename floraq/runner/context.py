"""What every runner step shares: the ledger, the edges, the plans, the report, the stop flags.

The steps (``submit``, ``poll``, ``rerun``, ``fetch``) are functions of a ``RunContext``
rather than methods of one class, so each can be read alone; the small helpers here are
the ones more than one step needs (a committed move, a pause between rounds, stopping).
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import json
import math
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, Protocol

from floraq.api import FloraClient
from floraq.core.failures import FailureTier
from floraq.core.lifecycle import JobState
from floraq.core.money import ZERO
from floraq.core.polling import PollPolicy
from floraq.core.technique import Technique
from floraq.crashpoints import CrashPoints
from floraq.downloads import Downloader
from floraq.errors import ApiError, AuthError, DiskError
from floraq.ledger import JobRecord, LedgerBackend
from floraq.runner.assets import AssetUploads
from floraq.runner.commit import GroupCommitter
from floraq.runner.lease import LeaseKeeper
from floraq.runner.poll_gate import PollGate
from floraq.runner.poll_queue import ServerQueue
from floraq.runner.prices import Prices

ROUND_PAUSE = 10.0  # seconds before the first such round; doubles each round (x time_scale)
DURATIONS_KEPT = 50  # run durations remembered per technique for the poll schedule
# Polls of one run in one process before it is left for the next `resume` (~5.5 h at
# the 5 s interval): a run FLORA never finishes must not hold the ledger lock forever.
DEFAULT_MAX_POLLS = 4000
# The poll budget's floor, in polls per real second for the whole loop (core.poll_budget):
# it grows with the rate runs complete at, so it binds only when many runs wait at once.
DEFAULT_POLL_RATE = 20.0


def poll_rate_floor(config: RunnerConfig) -> float:
    """The poll budget's floor on the loop's clock (time scale 0: no waits, so no cap)."""
    if config.time_scale <= 0:
        return math.inf
    return config.poll_rate / config.time_scale


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
    workspace_id: str | None = None  # where its local files are uploaded


@dataclass(frozen=True, slots=True)
class RunnerConfig:
    concurrency: int = 8  # HTTP requests in flight (API and downloads each)
    max_outstanding: int = 100  # runs submitted and not yet finished
    wait: bool = True  # False: submit and return (`submit --no-wait`)
    idempotency_window: float = 7200.0
    window_margin: float = 600.0
    time_scale: float = 1.0
    key_fingerprint: str | None = None  # of the API key in use (core.keys.api_key_fingerprint)
    max_polls: int = DEFAULT_MAX_POLLS
    poll_rate: float = DEFAULT_POLL_RATE  # polls per real second at least (x 1/time_scale)


@dataclass(slots=True)
class RunReport:
    """How the loop ended; the batch layer turns it into an exit code."""

    paused: set[str] = field(default_factory=set)  # "insufficient_credits", "budget"
    auth_error: AuthError | None = None
    disk_error: DiskError | None = None  # the first write the disk refused: downloads stopped
    incomplete: int = 0  # jobs left in flight because of network trouble
    posts: int = 0
    polls: int = 0
    downloads: int = 0
    price_checks: int = 0  # GETs of a technique to re-check its run_cost mid-batch
    lease_lost: bool = False  # a PostgreSQL worker's heartbeat failed: it stopped sending
    rows_lost: int = 0  # rows whose task stopped because another worker holds them now


@dataclass(slots=True, kw_only=True)
class RunContext:
    """One run of the loop: its collaborators, what it has learned, and whether to stop."""

    ledger: LedgerBackend
    client: FloraClient
    downloader: Downloader
    techniques: dict[str, Technique]
    batches: dict[str, BatchPlan]
    config: RunnerConfig
    progress: Progress
    crash: CrashPoints
    clock: Callable[[], float]
    sleep: Callable[[float], Awaitable[None]]
    rand: Callable[[], float]
    committer: GroupCommitter
    poll_policy: PollPolicy
    # From created_at: how long runs of each technique take (seeded from the ledger).
    durations: dict[str, deque[float]]
    prices: Prices  # when each technique's run_cost is due a check (runner.prices)
    poll_gate: PollGate  # the shared poll budget: every poll takes a token (runner.poll_gate)
    # From started_at: how long runs take once they have a slot (learned in this process).
    run_times: dict[str, deque[float]] = field(default_factory=dict)
    # Real remaining time over predicted soonest remaining time (core.poll_aim.prediction_trust).
    trust: dict[str, deque[float]] = field(default_factory=dict)
    # The API's completed_at of recent finished runs, in seconds: how fast slots free up.
    completions: deque[float] = field(default_factory=lambda: deque(maxlen=DURATIONS_KEPT))
    # Runs whose last answer said `pending` (job id -> send position), and the (send
    # position, start on our clock) of recent runs seen started after waiting: how fast
    # the server's queue moves.
    queue: dict[int, int] = field(default_factory=dict)
    starts: deque[tuple[int, float]] = field(default_factory=lambda: deque(maxlen=DURATIONS_KEPT))
    sent: itertools.count[int] = field(default_factory=itertools.count)  # send positions
    server_queue: ServerQueue = field(default_factory=ServerQueue)  # starts from completions
    report: RunReport = field(default_factory=RunReport)
    paused_batches: set[str] = field(default_factory=set)  # reached their cost cap
    stop_all: bool = False  # credentials refused: nothing more may be sent
    out_of_credits: bool = False  # a 402: the workspace cannot pay for any new run
    bug: Exception | None = None  # a bug stopped the loop: raised once all is saved
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    lease: LeaseKeeper | None = None  # a worker on a shared (PostgreSQL) ledger
    unclaimed: set[int] = field(default_factory=set)  # leased queued rows not yet claimed
    claims_moved: asyncio.Event | None = None  # set when one of them is claimed (or not)
    uploads: AssetUploads | None = None  # local files' assets (runner.assets)

    # -- stopping -----------------------------------------------------------------------

    def submitting_stopped(self, batch: str) -> bool:
        """No new intent for this batch (a claim already inside the cap may still be sent)."""
        stopped = self.posting_stopped() or batch in self.paused_batches
        return stopped or self.report.disk_error is not None  # no paying for unwritable files

    def posting_stopped(self) -> bool:
        """No POST may leave at all, not even for an intent already committed."""
        return self.stop_all or self.out_of_credits or self.report.lease_lost

    def claim_settled(self, job_id: int) -> None:
        """A leased queued row's claim is decided: the worker may lease another."""
        if self.unclaimed:
            self.unclaimed.discard(job_id)
            if self.claims_moved is not None:
                self.claims_moved.set()

    def lease_lost(self) -> None:
        """The heartbeat failed: other workers may take this worker's rows; stop them all."""
        self.report.lease_lost = True
        self.stop_everything()

    def stop_everything(self) -> None:
        """Credentials refused: no task may send anything more. Each one's state is on disk."""
        if self.stop_all:
            return  # already done: a second cancel would interrupt their last commits
        self.stop_all = True
        me = asyncio.current_task()
        for task in self.tasks:
            if task is not me:
                task.cancel()

    def disk_refused(self, error: DiskError) -> None:
        """A write to the output folder failed: stop downloading and claiming; `resume` later."""
        if self.report.disk_error is None:
            self.report.disk_error = error

    def pause(self, batch: str, reason: str) -> None:
        self.paused_batches.add(batch)
        self.report.paused.add(reason)

    async def pause_round(self, rounds: int) -> None:
        """The wait before trying a step again after the client gave up on it."""
        await self.sleep(ROUND_PAUSE * 2.0 ** (rounds - 1) * self.config.time_scale)

    # -- facts about a job --------------------------------------------------------------

    def run_cost(self, job: JobRecord) -> Decimal:
        technique = self.techniques.get(job.technique)
        return technique.run_cost if technique else (job.estimated_cost or ZERO)

    def window_passed(self, job: JobRecord) -> bool:
        """Re-sending this intent's key now could create a second run (FLORA forgot the key)."""
        started = job.submitting_at if job.submitting_at is not None else self.clock()
        return self.clock() - started > self.config.idempotency_window - self.config.window_margin

    def key_changed(self, job: JobRecord) -> bool:
        """Was this row's intent committed under another API key than ours?"""
        mine = self.config.key_fingerprint
        return bool(job.key_fingerprint and mine and job.key_fingerprint != mine)

    def learn(self, into: dict[str, deque[float]], technique: str, seconds: float) -> None:
        """Remember how long a run took, for the next poll schedule of this technique."""
        into.setdefault(technique, deque(maxlen=DURATIONS_KEPT)).append(seconds)

    # -- committed writes ---------------------------------------------------------------

    async def note(self, job: JobRecord, **fields: Any) -> None:
        """Record an error on a job that keeps its state (the status shows it)."""
        await self.committer.commit(functools.partial(self.ledger.update, job.id, **fields))

    async def move(self, job: JobRecord, current: JobState, new: JobState, **fields: Any) -> None:
        await self.committer.commit(lambda: self.ledger.move(job.id, current, new, **fields))

    async def fail(
        self,
        job: JobRecord,
        current: JobState,
        new: JobState,
        error: ApiError,
        *,
        tier: FailureTier | None = None,
    ) -> None:
        """Move the job with the answer's error in full (code, message, fields, tier)."""
        fields: dict[str, Any] = {
            "error_code": error.code,
            "error_message": error.message,
            "request_id": error.request_id,
        }
        if error.fields:
            fields["error_fields"] = json.dumps(error.fields, sort_keys=True)
        if tier is not None:
            fields["failure_tier"] = tier.value
        await self.move(job, current, new, **fields)
        self.progress.advance(new)


def no_progress() -> Progress:
    """A progress that draws nothing (library callers, tests)."""
    return _NoProgress()
