"""Build the runner once, for the CLI and for the tests alike.

``build_runner`` reads what the runner needs from ``Settings`` and the ledger (the batch
rows, the cached technique definitions), opens the client and the downloader, and yields
a ``Runner`` ready to ``run()``. Tests pass ``Seams`` (a fake transport, clocks) instead
of building any of it themselves, so the wiring they test is the wiring users run.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from floraq.api import DEFAULT_DEADLINE, FloraClient, log_request
from floraq.core.keys import api_key_fingerprint
from floraq.core.money import amount
from floraq.core.technique import Technique
from floraq.crashpoints import CrashPoints
from floraq.downloads import Downloader
from floraq.ledger import LedgerBackend
from floraq.ledger.leases import PgLeases
from floraq.retry import RetryPolicy
from floraq.runner.assets import AssetUploads
from floraq.runner.context import DEFAULT_MAX_POLLS, BatchPlan, Progress, RunnerConfig
from floraq.runner.lease import LeaseKeeper, post_deadline
from floraq.runner.limits import SharedRate, limit_key
from floraq.runner.loop import Runner
from floraq.settings import DEFAULT_CONCURRENCY, Settings
from floraq.uploads import UploadHost
from floraq.url_safety import is_plain_loopback

# Called with the open client before the runner is built (``resume`` fetches today's
# technique definitions into the ledger and the dict here).
Refresh = Callable[[FloraClient, LedgerBackend, list[str], dict[str, Technique]], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Seams:
    """What a test replaces: the network and the clocks. The defaults are the real ones."""

    transport: httpx.AsyncBaseTransport | None = None  # for the API and the downloads
    net_sleep: Callable[[float], Awaitable[None]] = asyncio.sleep  # the client's back-off
    clock: Callable[[], float] = time.time  # the runner's clock (ledger times, key window)
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep  # the runner's waits
    rand: Callable[[], float] = random.random  # the poll schedule's jitter
    max_polls: int = DEFAULT_MAX_POLLS  # polls of one run before it waits for `resume`


@asynccontextmanager
async def build_runner(
    settings: Settings,
    ledger: LedgerBackend,
    names: Sequence[str],
    *,
    wait: bool = True,
    progress: Progress | None = None,
    refresh: Refresh | None = None,
    seams: Seams = Seams(),
) -> AsyncIterator[Runner]:
    """The runner for these batches, with its client and downloader open until the end."""
    plans, concurrency = batch_plans(settings, ledger, names)
    slugs = ledger.techniques_used(list(names))
    techniques = cached_techniques(ledger, slugs)
    config = runner_config(settings, concurrency, wait=wait, max_polls=seams.max_polls)
    policy = RetryPolicy(time_scale=settings.time_scale)
    crash = CrashPoints(settings.crash_at)
    log = log_request if settings.verbose else None
    leasing = isinstance(ledger, PgLeases)  # workers lease rows: each attempt fits a lease
    deadline = post_deadline(settings.lease_seconds, DEFAULT_DEADLINE) if leasing else 0.0
    async with (
        FloraClient(
            base_url=settings.base_url,
            api_key=settings.require_key(),
            policy=policy,
            max_concurrency=concurrency,
            transport=seams.transport,
            sleep=seams.net_sleep,
            log=log,
            deadline=deadline or DEFAULT_DEADLINE,
        ) as client,
        Downloader(
            policy=policy,
            max_concurrency=concurrency,
            transport=seams.transport,
            sleep=seams.net_sleep,
            crash=crash,
            log=log,
            plain_http=is_plain_loopback(settings.base_url),
            part_tag=uuid.uuid4().hex[:12] if leasing else None,
        ) as downloader,
        _upload_host(settings, policy, seams, log) as host,
    ):
        shared = SharedRate(
            ledger,
            client.throttle,
            limit_key(settings.base_url, api_key_fingerprint(settings.require_key())),
            time_scale=settings.time_scale,
        )
        shared.start()  # a pause another worker recorded holds from the first request on
        if refresh is not None:
            await refresh(client, ledger, slugs, techniques)
        runner = Runner(
            ledger=ledger,
            client=client,
            downloader=downloader,
            techniques=techniques,
            batches=plans,
            config=config,
            progress=progress,
            crash=crash,
            clock=seams.clock,
            sleep=seams.sleep,
            rand=seams.rand,
            shared=shared,
            lease=_lease(ledger, settings, client.deadline),
        )
        runner.ctx.uploads = _asset_uploads(runner, settings, client, host, crash, seams)
        yield runner


def _upload_host(
    settings: Settings, policy: RetryPolicy, seams: Seams, log: Callable[[str], None] | None
) -> UploadHost:
    """The key-less client for the upload hosts of local files' assets."""
    return UploadHost(
        api_key=settings.require_key(),
        policy=policy,
        concurrency=settings.upload_concurrency,
        transport=seams.transport,
        sleep=seams.net_sleep,
        log=log,
        plain_http=is_plain_loopback(settings.base_url),
    )


def _asset_uploads(
    runner: Runner,
    settings: Settings,
    client: FloraClient,
    host: UploadHost,
    crash: CrashPoints,
    seams: Seams,
) -> AssetUploads:
    """Each local file's upload, beside the runs, on the runner's ledger and committer."""
    return AssetUploads(
        ledger=runner.ctx.ledger,
        committer=runner.ctx.committer,
        client=client,
        host=host,
        crash=crash,
        time_scale=settings.time_scale,
        concurrency=settings.upload_concurrency,
        pause_round=runner.ctx.pause_round,
        sleep=seams.sleep,
        clock=seams.clock,
    )


def _lease(ledger: LedgerBackend, settings: Settings, deadline: float) -> LeaseKeeper | None:
    """A worker's lease when the ledger is shared (PostgreSQL); None on SQLite."""
    if not isinstance(ledger, PgLeases):
        return None
    return LeaseKeeper(ledger=ledger, seconds=settings.lease_seconds, deadline=deadline)


def batch_plans(
    settings: Settings, ledger: LedgerBackend, names: Sequence[str]
) -> tuple[dict[str, BatchPlan], int]:
    """Each batch's plan from its ledger row, and the concurrency: flag, else manifest's."""
    plans: dict[str, BatchPlan] = {}
    concurrency = settings.concurrency
    for name in names:
        row = ledger.batch(name)
        assert row is not None
        plans[name] = BatchPlan(
            name=name,
            output_dir=Path(row.output_dir),
            max_cost=amount(settings.max_cost) if settings.max_cost is not None else row.max_cost,
            retry_failed_runs=row.retry_failed_runs,
            workspace_id=row.workspace_id,
        )
        if concurrency is None and row.concurrency:
            concurrency = int(row.concurrency)
    return plans, concurrency or DEFAULT_CONCURRENCY


def cached_techniques(ledger: LedgerBackend, slugs: Sequence[str]) -> dict[str, Technique]:
    """The technique definitions the ledger cached when the rows were queued."""
    techniques: dict[str, Technique] = {}
    for slug in slugs:
        cached = ledger.technique(slug)
        if cached is not None:
            techniques[slug] = Technique.from_api(slug, cached)
    return techniques


def runner_config(
    settings: Settings, concurrency: int, *, wait: bool, max_polls: int
) -> RunnerConfig:
    """The loop's limits; the key window's margin is at most a quarter of the window."""
    return RunnerConfig(
        concurrency=concurrency,
        max_outstanding=max(100, concurrency * 8),
        wait=wait,
        idempotency_window=settings.idempotency_window,
        window_margin=min(settings.window_margin, settings.idempotency_window / 4),
        time_scale=settings.time_scale,
        key_fingerprint=api_key_fingerprint(settings.require_key()),
        max_polls=max_polls,
    )
