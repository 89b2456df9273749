"""The use cases: plan, submit, resume, status, techniques.

Each function takes Settings and plain arguments and returns a plain result for
the console to show; none of them prints. They own the order of side effects:
validate everything, then lock, then write the ledger, then send.
"""

from __future__ import annotations

import asyncio
import signal
from collections import Counter, defaultdict
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from floraq.api import FloraClient
from floraq.core.keys import idempotency_key, inputs_digest, row_key
from floraq.core.lifecycle import ACTIVE, PROBLEM_STATES, JobState
from floraq.core.manifest import Manifest, Row
from floraq.core.problems import Problem
from floraq.core.technique import Technique
from floraq.core.validation import check_row
from floraq.crashpoints import CrashPoints
from floraq.downloads import Downloader
from floraq.errors import (
    ExitCode,
    Interrupted,
    ManifestError,
    NotFound,
    UsageError,
)
from floraq.ledger import Ledger, NewJob
from floraq.lock import LedgerLock
from floraq.manifest_files import iter_job_rows, load_manifest
from floraq.retry import RetryPolicy
from floraq.runner import BatchPlan, Progress, Runner, RunnerConfig, RunReport
from floraq.settings import DEFAULT_CONCURRENCY, Settings

INSERT_CHUNK = 1000

T = TypeVar("T")


# -- results ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TechniqueCost:
    slug: str
    rows: int
    run_cost: float

    @property
    def cost(self) -> float:
        return round(self.rows * self.run_cost, 6)


@dataclass(slots=True)
class PlanResult:
    manifest: Manifest
    problems: list[Problem]
    costs: list[TechniqueCost]
    duplicates: int = 0

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]

    @property
    def total_cost(self) -> float:
        return round(sum(c.cost for c in self.costs), 6)

    @property
    def rows(self) -> int:
        return sum(c.rows for c in self.costs)


@dataclass(slots=True)
class StateCount:
    batch: str
    technique: str
    state: str
    count: int
    estimated_cost: float
    charged_cost: float
    unsettled: int  # finished runs whose charge has not been reported yet


@dataclass(slots=True)
class StatusResult:
    counts: list[StateCount]
    failures: list[dict[str, Any]]

    def total(self, *states: str) -> int:
        return sum(c.count for c in self.counts if not states or c.state in states)

    @property
    def charged(self) -> float:
        return round(sum(c.charged_cost for c in self.counts), 6)

    @property
    def estimated(self) -> float:
        return round(sum(c.estimated_cost for c in self.counts), 6)

    @property
    def unsettled(self) -> int:
        return sum(c.unsettled for c in self.counts)


@dataclass(slots=True)
class RunResult:
    """What submit/resume did, and how the process should exit."""

    batches: list[str]
    inserted: int
    report: RunReport
    status: StatusResult
    plan: PlanResult | None = None
    exit_code: ExitCode = ExitCode.OK
    notes: list[str] = field(default_factory=list)


# -- plan -----------------------------------------------------------------------------------


def plan(settings: Settings, manifest_path: Path) -> PlanResult:
    """Validate every row against its technique and price the batch; sends no run."""
    manifest = load_manifest(manifest_path)
    techniques, problems = _run(_fetch_techniques(settings, manifest))
    return _check_manifest(manifest, techniques, problems, ledger=None)


# -- submit / resume ------------------------------------------------------------------------


def submit(
    settings: Settings,
    manifest_path: Path,
    *,
    wait: bool = True,
    skip_invalid: bool = False,
    progress: Progress | None = None,
) -> RunResult:
    """Validate, queue every new row in the ledger, then run the batch to the end.

    Nothing is written, not even the ledger file, until every row has passed.
    """
    manifest = load_manifest(manifest_path)
    techniques, problems = _run(_fetch_techniques(settings, manifest))
    reader = Ledger.open_readonly(settings.ledger_path)
    try:
        checked = _check_manifest(manifest, techniques, problems, ledger=reader)
    finally:
        if reader is not None:
            reader.close()
    if checked.errors and not skip_invalid:
        raise ManifestError(checked.problems)
    known = {slug: t for slug, t in techniques.items() if t is not None}
    with LedgerLock(settings.ledger_path):
        ledger = Ledger.open(settings.ledger_path)
        try:
            for slug, technique in known.items():
                ledger.save_technique(slug, technique.to_api(), technique.run_cost)
            ledger.save_batch(
                manifest.batch,
                manifest_path=str(manifest_path.resolve()),
                output_dir=str(manifest.output_dir),
                concurrency=manifest.concurrency,
                max_cost=manifest.max_cost,
                retry_failed_runs=manifest.retry_failed_runs,
            )
            inserted = _queue_rows(ledger, manifest, known, skip_invalid=skip_invalid)
            result = _run_batches(settings, ledger, [manifest.batch], wait=wait, progress=progress)
            result.inserted = inserted
            result.plan = checked
            return result
        finally:
            ledger.close()


def resume(
    settings: Settings, *, batch: str | None = None, progress: Progress | None = None
) -> RunResult:
    """Pick up every unfinished job (of one batch, or all) where the ledger left it."""
    with LedgerLock(settings.ledger_path):
        ledger = Ledger.open(settings.ledger_path)
        try:
            names = ledger.batch_names()
            if batch is not None:
                if batch not in names:
                    raise UsageError(
                        f"no batch {batch!r} in the ledger {settings.ledger_path}"
                        f" (known: {', '.join(names) or 'none'})"
                    )
                names = [batch]
            return _run_batches(settings, ledger, names, wait=True, progress=progress)
        finally:
            ledger.close()


def _run_batches(
    settings: Settings,
    ledger: Ledger,
    names: list[str],
    *,
    wait: bool,
    progress: Progress | None,
) -> RunResult:
    plans: dict[str, BatchPlan] = {}
    concurrency = settings.concurrency
    for name in names:
        row = ledger.batch(name)
        assert row is not None
        plans[name] = BatchPlan(
            name=name,
            output_dir=Path(row["output_dir"]),
            max_cost=settings.max_cost if settings.max_cost is not None else row["max_cost"],
            retry_failed_runs=row["retry_failed_runs"],
        )
        if concurrency is None and row["concurrency"]:
            concurrency = int(row["concurrency"])
    concurrency = concurrency or DEFAULT_CONCURRENCY
    techniques: dict[str, Technique] = {}
    for slug in ledger.techniques_used(names):
        cached = ledger.technique(slug)
        if cached is not None:
            techniques[slug] = Technique.from_api(slug, cached)
    config = RunnerConfig(
        concurrency=concurrency,
        max_outstanding=max(100, concurrency * 8),
        wait=wait,
        idempotency_window=settings.idempotency_window,
        window_margin=min(settings.window_margin, settings.idempotency_window / 4),
        time_scale=settings.time_scale,
    )

    async def go() -> RunReport:
        policy = RetryPolicy(time_scale=settings.time_scale)
        crash = CrashPoints(settings.crash_at)
        async with (
            _client(settings, policy, concurrency) as client,
            Downloader(
                policy=policy,
                max_concurrency=concurrency,
                crash=crash,
            ) as downloader,
        ):
            runner = Runner(
                ledger=ledger,
                client=client,
                downloader=downloader,
                techniques=techniques,
                batches=plans,
                config=config,
                progress=progress,
                crash=crash,
            )
            return await runner.run()

    report = _run(go()) if plans else RunReport()
    status = _status(ledger, names)
    result = RunResult(batches=names, inserted=0, report=report, status=status)
    result.exit_code = _exit_code(report, status)
    if report.auth_error is not None:
        result.notes.append(f"the API refused the key: {report.auth_error}")
    return result


def _exit_code(report: RunReport, status: StatusResult) -> ExitCode:
    if report.auth_error is not None:
        return ExitCode.AUTH
    if report.paused:
        return ExitCode.PAUSED
    if status.total(*(s.value for s in ACTIVE)):
        return ExitCode.INCOMPLETE
    if status.total(*(s.value for s in PROBLEM_STATES)):
        return ExitCode.FAILURES
    return ExitCode.OK


# -- status ---------------------------------------------------------------------------------


def status(settings: Settings, *, batch: str | None = None) -> StatusResult:
    """Counts per batch, technique and state, costs, and every failure with its request id."""
    if not settings.ledger_path.exists():
        raise UsageError(
            f"no ledger at {settings.ledger_path}: nothing has been submitted yet"
            " (or pass --ledger / FLORAQ_LEDGER)"
        )
    ledger = Ledger.open(settings.ledger_path)
    try:
        names = ledger.batch_names()
        if batch is not None:
            if batch not in names:
                raise UsageError(f"no batch {batch!r} in the ledger {settings.ledger_path}")
            names = [batch]
        return _status(ledger, names)
    finally:
        ledger.close()


def _status(ledger: Ledger, names: list[str]) -> StatusResult:
    if not names:
        return StatusResult(counts=[], failures=[])
    marks = ",".join("?" * len(names))
    rows = ledger.query(
        f"""
        SELECT batch, technique, state, COUNT(*) AS n,
            COALESCE(SUM(estimated_cost), 0) AS estimated,
            COALESCE(SUM(charged_cost), 0) AS charged,
            SUM(CASE WHEN state IN ('completed', 'downloaded', 'expired')
                AND charged_cost IS NULL THEN 1 ELSE 0 END) AS unsettled
        FROM jobs WHERE batch IN ({marks})
        GROUP BY batch, technique, state ORDER BY batch, technique, state
        """,
        names,
    )
    counts = [
        StateCount(
            batch=r["batch"],
            technique=r["technique"],
            state=r["state"],
            count=r["n"],
            estimated_cost=float(r["estimated"]),
            charged_cost=float(r["charged"]),
            unsettled=int(r["unsettled"] or 0),
        )
        for r in rows
    ]
    failures = ledger.query(
        f"""
        SELECT batch, technique, location, state, run_id, error_code, error_message,
            error_fields, failure_tier, request_id, attempt
        FROM jobs WHERE batch IN ({marks}) AND state IN ('failed', 'rejected',
            'unknown_outcome', 'expired')
        ORDER BY id
        """,
        names,
    )
    return StatusResult(counts=counts, failures=failures)


# -- techniques -----------------------------------------------------------------------------


def techniques(settings: Settings, slug: str | None = None) -> list[Technique]:
    """The techniques this key can run (or one of them, with its inputs and cost)."""

    async def go() -> list[Technique]:
        async with _client(settings, RetryPolicy(time_scale=settings.time_scale), 4) as client:
            if slug is not None:
                try:
                    return [Technique.from_api(slug, await client.get_technique(slug))]
                except NotFound:
                    raise UsageError(f"no technique {slug!r} for this key") from None
            listed = await client.list_techniques()
            return [
                Technique.from_api(str(t.get("slug") or t.get("technique_id")), t) for t in listed
            ]

    return _run(go())


# -- validation pipeline ----------------------------------------------------------------------


async def _fetch_techniques(
    settings: Settings, manifest: Manifest
) -> tuple[dict[str, Technique | None], list[Problem]]:
    """GET each technique once; a 404 becomes a problem located at its first job."""
    slugs = list(dict.fromkeys(job.technique for job in manifest.jobs))
    found: dict[str, Technique | None] = {}
    problems: list[Problem] = []
    async with _client(settings, RetryPolicy(time_scale=settings.time_scale), 4) as client:
        for slug in slugs:
            try:
                found[slug] = Technique.from_api(slug, await client.get_technique(slug))
            except NotFound:
                found[slug] = None
                for job in manifest.jobs:
                    if job.technique == slug:
                        problems.append(
                            Problem(
                                f"{manifest.source}: job {job.number} ({slug})",
                                f"unknown technique {slug!r} (FLORA answered 404 not_found);"
                                " check the slug with `floraq techniques`",
                            )
                        )
            except ValueError as e:
                found[slug] = None
                problems.append(
                    Problem(f"{manifest.source}: technique {slug!r}", f"unreadable definition: {e}")
                )
    return found, problems


@dataclass(slots=True)
class _Checked:
    row: Row
    job: NewJob
    errors: list[Problem]


def _check_rows(
    manifest: Manifest,
    techniques: dict[str, Technique | None],
    problems: list[Problem],
    ledger: Ledger | None,
    stats: Counter[str],
) -> Iterator[_Checked]:
    """Every row, checked on its own and against the others; problems are appended."""
    seen_keys: set[str] = set()
    paths: dict[tuple[str, str], str] = {}
    for job in manifest.jobs:
        technique = techniques.get(job.technique)
        pending: list[_Checked] = []
        input_ids = [i.id for i in technique.inputs] if technique else None
        for item in iter_job_rows(manifest, job, input_ids=input_ids):
            if isinstance(item, Problem):
                problems.append(item)
                continue
            if technique is None:
                continue
            row_problems = check_row(item, technique)
            problems.extend(p for p in row_problems if p.severity == "warning")
            errors = [p for p in row_problems if p.severity == "error"]
            values = dict(item.values)
            key = idempotency_key(
                batch=manifest.batch, technique=job.technique, inputs=values, attempt=1
            )
            folder = item.key if item.key is not None and not errors else row_key(values)
            digest = inputs_digest(values)
            if not errors:
                if key in seen_keys:
                    stats["duplicates"] += 1
                    problems.append(
                        Problem(
                            item.location,
                            "duplicate of an earlier row (same technique and inputs):"
                            " submitted once",
                            "warning",
                        )
                    )
                    continue
                seen_keys.add(key)
                other = paths.get((job.technique, folder))
                if other is not None:
                    errors.append(
                        Problem(
                            item.location,
                            f"writes the same output folder {job.technique}/{folder} as {other};"
                            " give each row a distinct key",
                        )
                    )
                else:
                    paths[(job.technique, folder)] = item.location
            checked = _Checked(
                row=item,
                job=NewJob(
                    batch=manifest.batch,
                    technique=job.technique,
                    job_number=item.job,
                    row_number=item.number,
                    csv_line=item.csv_line,
                    location=item.location,
                    row_key=folder,
                    inputs=values,
                    inputs_digest=digest,
                    idempotency_key=key,
                    estimated_cost=technique.run_cost,
                ),
                errors=errors,
            )
            pending.append(checked)
            if len(pending) >= INSERT_CHUNK:
                yield from _against_ledger(pending, ledger)
                pending = []
        yield from _against_ledger(pending, ledger)


def _against_ledger(pending: list[_Checked], ledger: Ledger | None) -> list[_Checked]:
    """A keyed row whose inputs changed since it was queued would reuse a paid-for key."""
    if ledger is None or not pending:
        return pending
    by_technique: dict[str, list[_Checked]] = defaultdict(list)
    for checked in pending:
        by_technique[checked.job.technique].append(checked)
    for technique, group in by_technique.items():
        known = ledger.existing_rows(group[0].job.batch, technique, [c.job.row_key for c in group])
        for checked in group:
            digest = known.get(checked.job.row_key)
            if digest is not None and digest != checked.job.inputs_digest and not checked.errors:
                checked.errors.append(
                    Problem(
                        checked.row.location,
                        f"this row (key {checked.job.row_key!r}) changed since it was submitted"
                        " in this batch; give it a new key, or use a new batch name",
                    )
                )
    return pending


def _check_manifest(
    manifest: Manifest,
    techniques: dict[str, Technique | None],
    problems: list[Problem],
    *,
    ledger: Ledger | None,
) -> PlanResult:
    stats: Counter[str] = Counter()
    rows_by_slug: Counter[str] = Counter()
    for checked in _check_rows(manifest, techniques, problems, ledger, stats):
        problems.extend(checked.errors)
        if not checked.errors:
            rows_by_slug[checked.job.technique] += 1
    costs = [
        TechniqueCost(slug=slug, rows=rows_by_slug[slug], run_cost=technique.run_cost)
        for slug, technique in techniques.items()
        if technique is not None
    ]
    return PlanResult(
        manifest=manifest, problems=problems, costs=costs, duplicates=stats["duplicates"]
    )


def _queue_rows(
    ledger: Ledger,
    manifest: Manifest,
    techniques: dict[str, Technique],
    *,
    skip_invalid: bool,
) -> int:
    """Stream every valid row into the ledger in chunks; invalid ones as rejected if asked."""
    inserted = 0
    chunk: list[NewJob] = []
    rejected: list[tuple[NewJob, str]] = []
    scratch: list[Problem] = []
    for checked in _check_rows(manifest, dict(techniques), scratch, ledger, Counter()):
        if checked.errors:
            if skip_invalid:
                rejected.append((checked.job, "; ".join(p.message for p in checked.errors)))
            continue
        chunk.append(checked.job)
        if len(chunk) >= INSERT_CHUNK:
            inserted += ledger.insert_jobs(chunk)
            chunk = []
    inserted += ledger.insert_jobs(chunk)
    for job, message in rejected:
        if ledger.insert_jobs([job]):
            row = ledger.query(
                "SELECT id FROM jobs WHERE idempotency_key = ?", [job.idempotency_key]
            )
            ledger.move(
                row[0]["id"],
                JobState.QUEUED,
                JobState.REJECTED,
                error_code="invalid_row",
                error_message=message,
            )
    return inserted


# -- plumbing -----------------------------------------------------------------------------------


def _client(settings: Settings, policy: RetryPolicy, concurrency: int) -> FloraClient:
    return FloraClient(
        base_url=settings.base_url,
        api_key=settings.require_key(),
        policy=policy,
        max_concurrency=concurrency,
    )


def _run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine; Ctrl-C or SIGTERM cancels it cleanly and raises Interrupted."""

    async def main() -> T:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        stopped: list[int] = []

        def stop(signum: int) -> None:
            stopped.append(signum)
            task.cancel()

        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop, signum)
        try:
            return await coro
        except asyncio.CancelledError:
            if stopped:
                raise Interrupted(
                    "interrupted: everything known so far is saved in the ledger;"
                    " run `floraq resume` to continue"
                ) from None
            raise
        finally:
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(signum)

    return asyncio.run(main())
