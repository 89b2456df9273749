"""The use cases: plan, submit, resume, status, techniques, export, retry, report, verify.

Each function takes Settings and plain arguments and returns a plain result for
the console to show; none of them prints. They own the order of side effects:
validate everything, then lock, then write the ledger, then send.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import os
import signal
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Coroutine, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import IO, Any, Literal, TypeVar

from floraq.api import FloraClient, log_request
from floraq.core.keys import idempotency_key, inputs_digest, row_key
from floraq.core.lifecycle import ACTIVE, PROBLEM_STATES, JobState
from floraq.core.manifest import Manifest, Row
from floraq.core.money import ZERO, CostTotals, amount, total, totals_by
from floraq.core.problems import Problem
from floraq.core.technique import Technique
from floraq.core.validation import check_row
from floraq.errors import (
    ExitCode,
    Interrupted,
    ManifestError,
    NotFound,
    ServerError,
    TransportError,
    UsageError,
)
from floraq.export import Columns, Format, write_rows
from floraq.ledger import (
    JobRecord,
    JobView,
    Ledger,
    NewJob,
    QuoteGroup,
    SeenRows,
    StoredFile,
)
from floraq.lock import LedgerLock
from floraq.manifest_files import iter_job_rows, load_manifest
from floraq.report import Summary, page_name, write_report
from floraq.retry import RetryPolicy
from floraq.runner import Progress, RunReport, build_runner
from floraq.settings import Settings

INSERT_CHUNK = 1000

T = TypeVar("T")


# -- results ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TechniqueCost:
    slug: str
    rows: int
    run_cost: Decimal

    @property
    def cost(self) -> Decimal:
        return self.rows * self.run_cost


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
    def total_cost(self) -> Decimal:
        return sum((c.cost for c in self.costs), ZERO)

    @property
    def rows(self) -> int:
        return sum(c.rows for c in self.costs)


@dataclass(slots=True)
class StateCount:
    batch: str
    technique: str
    state: str
    count: int
    estimated_cost: Decimal
    charged_cost: Decimal
    unsettled: int  # finished runs whose charge has not been reported yet

    @property
    def totals(self) -> CostTotals:
        return CostTotals(self.count, self.estimated_cost, self.charged_cost, self.unsettled)


@dataclass(frozen=True, slots=True)
class CostChange:
    """A technique whose price moved since the batch started: its cost plan no longer holds."""

    batch: str
    technique: str
    quotes: tuple[tuple[Decimal, int], ...]  # (price quoted, rows quoted at it), oldest first
    run_cost: Decimal | None  # the run_cost floraq last fetched
    differs: int  # settled runs charged something other than their quote

    def describe(self) -> str:
        """One line for the operator: what moved, and that the plan no longer holds."""
        quoted = ", ".join(f"{n} row(s) at {price:.4f}" for price, n in self.quotes)
        now = f"; run_cost is now {self.run_cost:.4f}" if self.run_cost is not None else ""
        off = f"; {self.differs} run(s) charged other than quoted" if self.differs else ""
        return (
            f"batch {self.batch}: the price of {self.technique} changed since the batch started"
            f" ({quoted}{now}{off}): the manifest's cost plan no longer holds"
        )


@dataclass(slots=True)
class StatusResult:
    counts: list[StateCount]
    failures: list[dict[str, Any]]
    cost_changes: list[CostChange] = field(default_factory=list)

    def total(self, *states: str) -> int:
        return sum(c.count for c in self.counts if not states or c.state in states)

    @property
    def totals(self) -> CostTotals:
        return total(c.totals for c in self.counts)

    def totals_by_technique(self) -> dict[tuple[str, str], CostTotals]:
        """(batch, technique) -> its totals, in ledger order."""
        return totals_by(((c.batch, c.technique), c.totals) for c in self.counts)

    @property
    def charged(self) -> Decimal:
        return self.totals.charged

    @property
    def estimated(self) -> Decimal:
        return self.totals.estimated

    @property
    def unsettled(self) -> int:
        return self.totals.unsettled


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
    """Validate every row against its technique and price the batch; sends no run.

    If the ledger exists it is read (never written), so `plan` also reports what `submit`
    would refuse because of earlier batches: changed rows, folders already in use.
    """
    manifest = load_manifest(manifest_path)
    techniques, problems = _run(_fetch_techniques(settings, manifest))
    reader = Ledger.open_readonly(settings.ledger_path)
    try:
        return _check_manifest(manifest, techniques, problems, ledger=reader)
    finally:
        if reader is not None:
            reader.close()


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
                max_cost=_cap(manifest.max_cost),
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
    settings: Settings,
    *,
    batch: str | None = None,
    progress: Progress | None = None,
    redownload_missing: bool = False,
) -> RunResult:
    """Pick up every unfinished job (of one batch, or all) where the ledger left it.

    ``redownload_missing`` first re-hashes every downloaded file and fetches again the ones
    missing or changed on disk, and the outputs that expired before they were fetched.
    """
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
            refetch = _redownload_missing(ledger, names) if redownload_missing else None
            result = _run_batches(
                settings, ledger, names, wait=True, progress=progress, refresh_techniques=True
            )
            if refetch is not None:
                result.notes.append(refetch.describe())
            return result
        finally:
            ledger.close()


def _run_batches(
    settings: Settings,
    ledger: Ledger,
    names: list[str],
    *,
    wait: bool,
    progress: Progress | None,
    refresh_techniques: bool = False,
) -> RunResult:
    async def go() -> RunReport:
        refresh = _refresh_techniques if refresh_techniques else None
        async with build_runner(
            settings, ledger, names, wait=wait, progress=progress, refresh=refresh
        ) as runner:
            return await runner.run()

    settings.require_key()  # no key: say so even when there is nothing to run
    report = _run(go()) if names else RunReport()
    status = _status(ledger, names)
    result = RunResult(batches=names, inserted=0, report=report, status=status)
    result.exit_code = _exit_code(report, status)
    if report.auth_error is not None:
        result.notes.append(str(report.auth_error))
    return result


async def _refresh_techniques(
    client: FloraClient, ledger: Ledger, slugs: list[str], techniques: dict[str, Technique]
) -> None:
    """Today's definitions, so a resume quotes (and caps) at today's run_cost.

    A technique that cannot be fetched now keeps its cached definition; FLORA will
    refuse its rows if it is really gone.
    """
    for slug in slugs:
        try:
            fresh = Technique.from_api(slug, await client.get_technique(slug))
        except (NotFound, ServerError, TransportError, ValueError):
            continue
        ledger.save_technique(slug, fresh.to_api(), fresh.run_cost)
        techniques[slug] = fresh


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
    counts = [
        StateCount(
            batch=r.batch,
            technique=r.technique,
            state=r.state.value,
            count=r.n,
            estimated_cost=r.estimated,
            charged_cost=r.charged,
            unsettled=r.unsettled,
        )
        for r in ledger.state_counts(names)
    ]
    failures = ledger.problem_rows(names)
    return StatusResult(counts=counts, failures=failures, cost_changes=_cost_changes(ledger, names))


def _cost_changes(ledger: Ledger, names: list[str]) -> list[CostChange]:
    """Techniques quoted at several prices or not at today's run_cost, or charged off-quote."""
    grouped: dict[tuple[str, str], list[QuoteGroup]] = defaultdict(list)
    for row in ledger.quotes(names):
        grouped[(row.batch, row.technique)].append(row)
    changes: list[CostChange] = []
    for (name, slug), rows in grouped.items():
        quotes = tuple((r.quote, r.n) for r in rows)
        run_cost = rows[0].run_cost
        differs = sum(r.differs for r in rows)
        moved = run_cost is not None and any(q != run_cost for q, _ in quotes)
        if len(quotes) > 1 or moved or differs:
            changes.append(CostChange(name, slug, quotes, run_cost, differs))
    return changes


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
    """Every row, checked on its own and against the others; problems are appended.

    Rows are held a chunk at a time: duplicates and shared output folders are looked up in
    a ``SeenRows`` store on disk, so memory does not grow with the manifest.
    """
    with SeenRows() as seen:
        for job in manifest.jobs:
            technique = techniques.get(job.technique)
            buffered: list[Problem | _Checked] = []  # in row order, problems as they came
            rows = 0
            input_ids = [i.id for i in technique.inputs] if technique else None
            for item in iter_job_rows(manifest, job, input_ids=input_ids):
                if isinstance(item, Problem):
                    buffered.append(item)
                    continue
                if technique is None:
                    continue
                row_problems = check_row(item, technique)
                buffered.extend(p for p in row_problems if p.severity == "warning")
                errors = [p for p in row_problems if p.severity == "error"]
                values = dict(item.values)
                folder = item.key if item.key is not None and not errors else row_key(values)
                buffered.append(
                    _Checked(
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
                            inputs_digest=inputs_digest(values),
                            idempotency_key=idempotency_key(
                                batch=manifest.batch,
                                technique=job.technique,
                                inputs=values,
                                attempt=1,
                            ),
                            estimated_cost=technique.run_cost,
                        ),
                        errors=errors,
                    )
                )
                rows += 1
                if rows >= INSERT_CHUNK:
                    settled = _against_earlier(buffered, seen, job.technique, problems, stats)
                    yield from _against_ledger(settled, ledger, str(manifest.output_dir))
                    buffered, rows = [], 0
            settled = _against_earlier(buffered, seen, job.technique, problems, stats)
            yield from _against_ledger(settled, ledger, str(manifest.output_dir))


def _against_earlier(
    buffered: list[Problem | _Checked],
    seen: SeenRows,
    technique: str,
    problems: list[Problem],
    stats: Counter[str],
) -> list[_Checked]:
    """One chunk against every row before it: duplicates go, a second claim on a folder errs.

    Problems land in ``problems`` in row order; duplicates are left out of the result.
    """
    valid = [b for b in buffered if isinstance(b, _Checked) and not b.errors]
    earlier = seen.known_keys([c.job.idempotency_key for c in valid])
    owners = seen.folder_owners(technique, [c.job.row_key for c in valid])
    new_keys: list[str] = []
    new_folders: list[tuple[str, str, str]] = []
    settled: list[_Checked] = []
    for entry in buffered:
        if isinstance(entry, Problem):
            problems.append(entry)
            continue
        if not entry.errors:
            key, folder = entry.job.idempotency_key, entry.job.row_key
            if key in earlier:
                stats["duplicates"] += 1
                problems.append(
                    Problem(
                        entry.row.location,
                        "duplicate of an earlier row (same technique and inputs): submitted once",
                        "warning",
                    )
                )
                continue
            earlier.add(key)
            new_keys.append(key)
            other = owners.get(folder)
            if other is not None:
                entry.errors.append(
                    Problem(
                        entry.row.location,
                        f"writes the same output folder {technique}/{folder} as {other};"
                        " give each row a distinct key",
                    )
                )
            else:
                owners[folder] = entry.row.location
                new_folders.append((technique, folder, entry.row.location))
        settled.append(entry)
    seen.add(new_keys, new_folders)
    return settled


def _against_ledger(
    pending: list[_Checked], ledger: Ledger | None, output_dir: str
) -> list[_Checked]:
    """Rows the ledger already knows, in ways that would cost money or overwrite files.

    A keyed row whose inputs changed since it was queued would reuse a paid-for key; a row
    whose output folder another batch already fills would overwrite that batch's files.
    """
    if ledger is None or not pending:
        return pending
    by_technique: dict[str, list[_Checked]] = defaultdict(list)
    for checked in pending:
        by_technique[checked.job.technique].append(checked)
    for technique, group in by_technique.items():
        batch = group[0].job.batch
        keys = [c.job.row_key for c in group]
        known = ledger.existing_rows(batch, technique, keys)
        taken = ledger.folders_of_other_batches(batch, output_dir, technique, keys)
        for checked in group:
            if checked.errors:
                continue
            key = checked.job.row_key
            digest = known.get(key)
            if digest is not None and digest != checked.job.inputs_digest:
                checked.errors.append(
                    Problem(
                        checked.row.location,
                        f"this row (key {key!r}) changed since it was submitted in this batch;"
                        " give it a new key, or use a new batch name and output_dir",
                    )
                )
            elif key in taken:
                checked.errors.append(
                    Problem(
                        checked.row.location,
                        f"its output folder {technique}/{key} already holds the files of"
                        f" batch {taken[key]!r}; set another output_dir for this batch",
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
            ledger.move(
                ledger.job_id_for_key(job.idempotency_key),
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
        log=log_request if settings.verbose else None,
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


# -- export, retry, report, batches, verify ---------------------------------------------------

RetryKind = Literal["failed", "rejected", "expired", "unknown"]
RETRY_STATES: dict[RetryKind, JobState] = {
    "failed": JobState.FAILED,
    "rejected": JobState.REJECTED,
    "expired": JobState.EXPIRED,
    "unknown": JobState.UNKNOWN_OUTCOME,
}
HASH_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class ExportResult:
    batches: list[str]
    rows: int
    path: Path | None  # None: written to the stream given


def export(
    settings: Settings,
    *,
    batch: str | None = None,
    technique: str | None = None,
    fmt: Format = "csv",
    output: Path | None = None,
    stream: IO[str] | None = None,
) -> ExportResult:
    """Every row (of one batch, or all) as CSV or JSONL, to ``output`` or else ``stream``.

    A file is written beside its final name and renamed, so a reader never sees half of it.
    """
    ledger = _open_existing(settings)
    try:
        names = _selected(ledger, settings, batch)
        if technique is not None and technique not in ledger.techniques_used(names):
            raise UsageError(
                f"no rows of technique {technique!r} in {_which(names)}"
                f" (it has: {', '.join(ledger.techniques_used(names)) or 'none'})"
            )
        columns = Columns(
            inputs=tuple(ledger.input_ids(names, technique)),
            outputs=tuple(ledger.output_ids(names, technique)),
        )
        pages = _pages(lambda after: ledger.job_views(names, technique=technique, after_id=after))
        if output is None:
            if stream is None:
                raise ValueError("export needs an output path or a stream")
            rows = write_rows(pages, stream, fmt=fmt, columns=columns)
        else:
            with _atomic_text(output) as f:
                rows = write_rows(pages, f, fmt=fmt, columns=columns)
        return ExportResult(batches=names, rows=rows, path=output)
    finally:
        ledger.close()


@dataclass(slots=True)
class RetryResult:
    requeued: Counter[str]  # kind (failed, rejected, ...) -> rows given a new attempt
    skipped: list[str]  # rows left alone, with why
    run: RunResult | None = None  # the run that followed, unless queue_only

    @property
    def exit_code(self) -> ExitCode:
        return self.run.exit_code if self.run is not None else ExitCode.OK


def retry(
    settings: Settings,
    *,
    kinds: Sequence[RetryKind],
    batch: str | None = None,
    queue_only: bool = False,
    progress: Progress | None = None,
) -> RetryResult:
    """A new attempt (new idempotency key) for exactly the rows in these states, then run them.

    Each re-queued row keeps its earlier attempts in ``events``; nothing else changes. Then
    the batches with re-queued rows run as `resume --batch` would (the cap still applies),
    unless ``queue_only``. A rejected row that is still invalid locally is skipped.
    """
    if not kinds:
        raise UsageError(
            "say which rows to retry: --failed, --rejected, --expired and/or --unknown"
        )
    with LedgerLock(settings.ledger_path):
        ledger = _open_existing(settings)
        try:
            names = _selected(ledger, settings, batch)
            result = RetryResult(requeued=Counter(), skipped=[])
            touched: set[str] = set()
            for kind in dict.fromkeys(kinds):
                state = RETRY_STATES[kind]
                for page in _pages(functools.partial(_jobs_in, ledger, names, state)):
                    with ledger.transaction():
                        for job in page:
                            problem = _still_invalid(ledger, job) if kind == "rejected" else None
                            if problem is not None:
                                result.skipped.append(f"{job.location}: {problem}")
                                continue
                            attempt = job.attempt + 1
                            key = idempotency_key(
                                batch=job.batch,
                                technique=job.technique,
                                inputs=job.inputs,
                                attempt=attempt,
                            )
                            ledger.new_attempt(job.id, state, attempt=attempt, idempotency_key=key)
                            result.requeued[kind] += 1
                            touched.add(job.batch)
            if touched and not queue_only:
                ordered = [n for n in names if n in touched]
                result.run = _run_batches(
                    settings, ledger, ordered, wait=True, progress=progress, refresh_techniques=True
                )
            return result
        finally:
            ledger.close()


def _still_invalid(ledger: Ledger, job: JobRecord) -> str | None:
    """Why a rejected row would be refused again before any POST, or None if it may go."""
    cached = ledger.technique(job.technique)
    if cached is None:
        return f"technique {job.technique!r} is not cached: run `floraq submit` again"
    technique = Technique.from_api(job.technique, cached)
    row = Row(
        job=0,
        technique=job.technique,
        number=0,
        csv_line=None,
        key=None,
        values=job.inputs,
        location=job.location,
    )
    errors = [p.message for p in check_row(row, technique) if p.severity == "error"]
    if not errors:
        return None
    return "still invalid (" + "; ".join(errors) + "): fix the manifest and submit it again"


@dataclass(frozen=True, slots=True)
class ReportResult:
    path: Path
    batches: list[str]
    rows: int
    images: int
    pages: int = 1  # report.html, report-2.html, ... (PAGE_ROWS tiles each)


def report(
    settings: Settings,
    *,
    output: Path,
    batch: str | None = None,
    clock: Callable[[], float] = time.time,
) -> ReportResult:
    """Write the contact sheet: a thumbnail tile per row (failed first), pages above 1,000."""
    ledger = _open_existing(settings)
    try:
        names = _selected(ledger, settings, batch)
        status = _status(ledger, names)
        active = [s for s in JobState if s in ACTIVE]
        order = [
            [s for s in JobState if s in PROBLEM_STATES],
            active,
            [JobState.DOWNLOADED],
        ]

        def rows(name: str) -> Iterator[JobView]:
            for states in order:
                for page in _pages(functools.partial(_views_in, ledger, [name], states)):
                    yield from page

        sections = ((_summary(status, name), rows(name)) for name in names)
        generated = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(clock()))
        output_dirs = {
            name: Path(record.output_dir)
            for name in names
            if (record := ledger.batch(name)) is not None
        }
        local = {url: Path(path) for url, path in ledger.downloaded_by_url().items()}
        with _atomic_text(output) as f, contextlib.ExitStack() as more:
            writer = write_report(
                f,
                base_dir=output.absolute().parent,
                title=f"floraq report: {', '.join(names)}",
                generated=generated,
                sections=sections,
                batches=names,
                output_dirs=output_dirs,
                local_input=local.get,
                name=output.name,
                open_page=lambda n: more.enter_context(
                    _atomic_text(output.with_name(page_name(output.name, n)))
                ),
            )
        return ReportResult(
            path=output,
            batches=names,
            rows=writer.rows,
            images=writer.images,
            pages=writer.pages,
        )
    finally:
        ledger.close()


def _summary(status: StatusResult, name: str) -> Summary:
    counts = [c for c in status.counts if c.batch == name]
    states: dict[str, int] = {s.value: 0 for s in JobState}
    techniques: dict[str, dict[str, int]] = defaultdict(dict)
    for c in counts:
        states[c.state] += c.count
        techniques[c.technique][c.state] = c.count
    sub = StatusResult(counts=counts, failures=[]).totals
    return Summary(
        batch=name,
        states=states,
        techniques=techniques,
        charged=sub.charged,
        estimated=sub.estimated,
        unsettled=sub.unsettled,
        notes=[c.describe() for c in status.cost_changes if c.batch == name],
    )


@dataclass(frozen=True, slots=True)
class BatchSummary:
    name: str
    states: dict[str, int]
    charged: Decimal
    estimated: Decimal
    unsettled: int
    last_activity: float  # epoch seconds

    @property
    def rows(self) -> int:
        return sum(self.states.values())

    def count(self, states: Iterable[JobState]) -> int:
        return sum(self.states.get(s.value, 0) for s in states)


def batches(settings: Settings) -> list[BatchSummary]:
    """Every batch in the ledger with its counts per state, cost and last activity."""
    ledger = _open_existing(settings)
    try:
        names = ledger.batch_names()
        status = _status(ledger, names)
        last = ledger.last_activity()
    finally:
        ledger.close()
    result: list[BatchSummary] = []
    for name in names:
        summary = _summary(status, name)
        result.append(
            BatchSummary(
                name=name,
                states={s: n for s, n in summary.states.items() if n},
                charged=summary.charged,
                estimated=summary.estimated,
                unsettled=summary.unsettled,
                last_activity=last.get(name, 0.0),
            )
        )
    return result


@dataclass(frozen=True, slots=True)
class FileProblem:
    kind: Literal["missing", "changed"]
    file: StoredFile
    actual_sha256: str | None = None
    actual_bytes: int | None = None


@dataclass(slots=True)
class VerifyResult:
    batches: list[str]
    checked: int
    problems: list[FileProblem]

    @property
    def exit_code(self) -> ExitCode:
        return ExitCode.FAILURES if self.problems else ExitCode.OK


def verify(settings: Settings, *, batch: str | None = None) -> VerifyResult:
    """Re-hash every downloaded file against the ledger; report the missing or changed ones."""
    ledger = _open_existing(settings)
    try:
        names = _selected(ledger, settings, batch)
        result = VerifyResult(batches=names, checked=0, problems=[])
        for _, problem in _check_files(ledger, names):
            result.checked += 1
            if problem is not None:
                result.problems.append(problem)
        return result
    finally:
        ledger.close()


@dataclass(frozen=True, slots=True)
class Refetch:
    """What `resume --redownload-missing` queued again before running."""

    files: int  # missing or changed on disk
    expired_jobs: int  # jobs whose output URLs had expired: re-polled for fresh ones

    def describe(self) -> str:
        return (
            f"redownload: {self.files} file(s) missing or changed on disk and"
            f" {self.expired_jobs} expired row(s) fetched again"
        )


def _redownload_missing(ledger: Ledger, names: list[str]) -> Refetch:
    """Mark bad files' outputs pending and their jobs completed, so the runner fetches them."""
    by_job: dict[int, list[str]] = defaultdict(list)
    for stored, problem in _check_files(ledger, names):
        if problem is not None:
            by_job[stored.job_id].append(stored.output_id)
    with ledger.transaction():
        for job_id, output_ids in by_job.items():
            ledger.refetch(job_id, output_ids)
        expired = ledger.refetch_expired(names)
    return Refetch(files=sum(len(v) for v in by_job.values()), expired_jobs=expired)


def _check_files(
    ledger: Ledger, names: list[str]
) -> Iterator[tuple[StoredFile, FileProblem | None]]:
    for page in _pages(lambda after: ledger.downloaded_files(names, after_id=after)):
        for stored in page:
            yield stored, _check_file(stored)


def _check_file(stored: StoredFile) -> FileProblem | None:
    path = Path(stored.path)
    try:
        size = path.stat().st_size
        if stored.bytes is not None and size != stored.bytes:
            return FileProblem("changed", stored, actual_bytes=size)
        with path.open("rb") as f:
            digest = hashlib.file_digest(f, "sha256").hexdigest()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return FileProblem("missing", stored)
    if stored.sha256 is not None and digest != stored.sha256:
        return FileProblem("changed", stored, actual_sha256=digest, actual_bytes=size)
    return None


# -- helpers for the commands above -------------------------------------------------------------


def _open_existing(settings: Settings) -> Ledger:
    if not settings.ledger_path.exists():
        raise UsageError(
            f"no ledger at {settings.ledger_path}: nothing has been submitted yet"
            " (or pass --ledger / FLORAQ_LEDGER)"
        )
    return Ledger.open(settings.ledger_path)


def _selected(ledger: Ledger, settings: Settings, batch: str | None) -> list[str]:
    """One named batch, or every batch; a usage error names the ones there are."""
    names = ledger.batch_names()
    if batch is None:
        return names
    if batch not in names:
        raise UsageError(
            f"no batch {batch!r} in the ledger {settings.ledger_path}"
            f" (known: {', '.join(names) or 'none'})"
        )
    return [batch]


def _jobs_in(ledger: Ledger, names: list[str], state: JobState, after: int) -> list[JobRecord]:
    return ledger.jobs(batches=names, states=[state], after_id=after)


def _views_in(
    ledger: Ledger, names: list[str], states: list[JobState], after: int
) -> list[JobView]:
    return ledger.job_views(names, states=states, after_id=after)


def _which(names: list[str]) -> str:
    return f"batch {names[0]}" if len(names) == 1 else "the ledger"


def _pages(fetch: Callable[[int], Sequence[T]], key: str = "id") -> Iterator[Sequence[T]]:
    """Page through id-ordered results: ``fetch(after_id)`` until it returns nothing."""
    after = 0
    while True:
        page = fetch(after)
        if not page:
            return
        yield page
        after = getattr(page[-1], key)


@contextlib.contextmanager
def _atomic_text(path: Path) -> Iterator[IO[str]]:
    """A text file written beside ``path`` and renamed over it once complete."""
    part = path.with_name(path.name + ".part")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        f = part.open("w", encoding="utf-8", newline="")
    except OSError as e:
        raise UsageError(f"cannot write {path}: {e.strerror}") from None
    try:
        with f:
            yield f
        os.replace(part, path)
    except BaseException:
        part.unlink(missing_ok=True)
        raise


def _cap(value: float | Decimal | None) -> Decimal | None:
    """A cost cap from the manifest or the command line, as an exact amount."""
    return None if value is None else amount(value)
