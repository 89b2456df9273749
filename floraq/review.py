"""The read-only use cases: status, export, report, batches, verify.

None of them takes the ledger lock or sends a request; each opens the ledger through
``open_for_reading`` (read-only: a ledger on a read-only mount is read, never written,
and an up-to-date one is not written either) and picks its batches with ``selected``,
so every command words "no ledger" and "no batch" alike. ``redownload_missing`` (for
`resume`) lives here because it is verify's check followed by one write.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any, TypeVar

from floraq.core.lifecycle import ACTIVE, PROBLEM_STATES, JobState
from floraq.core.local_files import ref_digest
from floraq.core.money import from_micros
from floraq.downloads import sha256_file
from floraq.errors import DISK_ERROR, UsageError
from floraq.export import Columns, Format, write_rows
from floraq.files import atomic_text
from floraq.ledger import JobView, LedgerBackend, QuoteGroup, StoredFile
from floraq.ledger.leases import PgLeases
from floraq.ledger_access import open_for_reading
from floraq.report import Summary, page_name, remove_stale_pages, write_report
from floraq.results import (
    BatchSummary,
    CostChange,
    ExportResult,
    FileProblem,
    Refetch,
    ReportResult,
    StateCount,
    StatusResult,
    VerifyResult,
    WorkersStatus,
)
from floraq.settings import Settings

T = TypeVar("T")


def status(settings: Settings, *, batch: str | None = None) -> StatusResult:
    """Counts per batch, technique and state, costs, and every failure with its request id."""
    ledger = open_for_reading(settings)
    try:
        result = status_of(ledger, selected(ledger, settings, batch))
        result.api_limits = ledger.api_limits()  # what the next start under each will use
        return result
    finally:
        ledger.close()


def status_of(ledger: LedgerBackend, names: list[str]) -> StatusResult:
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
    failures = [_charged(f) for f in ledger.problem_rows(names)] + _disk_refused(ledger, names)
    workers = None
    if isinstance(ledger, PgLeases):  # a shared ledger: who holds which rows
        workers = WorkersStatus(tuple(ledger.workers(names)))
    return StatusResult(
        counts=counts,
        failures=failures,
        cost_changes=_cost_changes(ledger, names),
        workers=workers,
    )


def _charged(row: dict[str, Any]) -> dict[str, Any]:
    """A problem row with what it cost over every attempt (``charged_cost``, exact; None
    while nothing is known), as the report and export show it, instead of the raw columns."""
    charged, prior = row.pop("charged_micros"), int(row.pop("prior_charged_micros") or 0)
    known = charged is not None or prior
    total = from_micros(int(charged or 0) + prior) if known else None
    return {**row, "charged_cost": total}


def _disk_refused(ledger: LedgerBackend, names: list[str]) -> list[dict[str, Any]]:
    """Completed rows whose files the disk refused: they need a look before `resume`."""
    found: list[dict[str, Any]] = []
    completed = [JobState.COMPLETED]
    for page in pages(lambda after: ledger.job_views(names, states=completed, after_id=after)):
        found.extend(
            {
                "batch": v.batch,
                "technique": v.technique,
                "location": v.location,
                "state": v.state.value,
                "run_id": v.run_id,
                "error_code": v.error_code,
                "error_message": v.error_message,
                "request_id": v.request_id,
                "attempt": v.attempt,
                "row_key": v.row_key,
                "charged_cost": v.total_charged,
            }
            for v in page
            if v.error_code == DISK_ERROR
        )
    return found


def _cost_changes(ledger: LedgerBackend, names: list[str]) -> list[CostChange]:
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


def export(
    settings: Settings,
    *,
    batch: str | None = None,
    technique: str | None = None,
    fmt: Format = "csv",
    output: Path | None = None,
    stream: IO[str] | None = None,
    spreadsheet_safe: bool = False,
) -> ExportResult:
    """Every row (of one batch, or all) as CSV or JSONL, to ``output`` or else ``stream``.

    A file is written beside its final name and renamed, so a reader never sees half of it.
    ``spreadsheet_safe``: CSV cells that would run as formulas get a leading ``'``.
    """
    if spreadsheet_safe and fmt != "csv":
        raise UsageError("--excel-safe applies to CSV only (JSONL is not opened as a sheet)")
    ledger = open_for_reading(settings)
    try:
        names = selected(ledger, settings, batch)
        if technique is not None and technique not in ledger.techniques_used(names):
            raise UsageError(
                f"no rows of technique {technique!r} in {_which(names)}"
                f" (it has: {', '.join(ledger.techniques_used(names)) or 'none'})"
            )
        columns = Columns(
            inputs=tuple(ledger.input_ids(names, technique)),
            outputs=tuple(ledger.output_ids(names, technique)),
        )
        views = (
            _with_file_paths(ledger, page)
            for page in pages(
                lambda after: ledger.job_views(names, technique=technique, after_id=after)
            )
        )
        if output is None:
            if stream is None:
                raise ValueError("export needs an output path or a stream")
            rows = write_rows(
                views, stream, fmt=fmt, columns=columns, spreadsheet_safe=spreadsheet_safe
            )
        else:
            with atomic_text(output) as f:
                rows = write_rows(
                    views, f, fmt=fmt, columns=columns, spreadsheet_safe=spreadsheet_safe
                )
        return ExportResult(batches=names, rows=rows, path=output)
    finally:
        ledger.close()


def report(
    settings: Settings,
    *,
    output: Path,
    batch: str | None = None,
    clock: Callable[[], float] = time.time,
) -> ReportResult:
    """Write the contact sheet: a thumbnail tile per row (failed first), pages above 1,000."""
    ledger = open_for_reading(settings)
    try:
        names = selected(ledger, settings, batch)
        status = status_of(ledger, names)
        active = [s for s in JobState if s in ACTIVE]
        order = [
            [s for s in JobState if s in PROBLEM_STATES],
            active,
            [JobState.DOWNLOADED],
        ]

        def rows(name: str) -> Iterator[JobView]:
            for states in order:
                for page in pages(functools.partial(_views_in, ledger, [name], states)):
                    yield from page

        sections = ((_summary(status, name), rows(name)) for name in names)
        generated = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(clock()))
        output_dirs = {
            name: Path(record.output_dir)
            for name in names
            if (record := ledger.batch(name)) is not None
        }
        local = {url: Path(path) for url, path in ledger.downloaded_by_url().items()}
        with atomic_text(output) as f, contextlib.ExitStack() as more:
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
                    atomic_text(output.with_name(page_name(output.name, n)))
                ),
            )
        remove_stale_pages(output, writer.pages)
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


def batches(settings: Settings) -> list[BatchSummary]:
    """Every batch in the ledger with its counts per state, cost and last activity."""
    ledger = open_for_reading(settings)
    try:
        names = ledger.batch_names()
        status = status_of(ledger, names)
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


def verify(settings: Settings, *, batch: str | None = None) -> VerifyResult:
    """Re-hash every downloaded file against the ledger; report the missing or changed ones."""
    ledger = open_for_reading(settings)
    try:
        names = selected(ledger, settings, batch)
        result = VerifyResult(batches=names, checked=0, problems=[])
        for _, problem in _check_files(ledger, names):
            result.checked += 1
            if problem is not None:
                result.problems.append(problem)
        return result
    finally:
        ledger.close()


def redownload_missing(ledger: LedgerBackend, names: list[str]) -> Refetch:
    """Mark bad files' outputs pending and their jobs completed, so the runner fetches them."""
    by_job: dict[int, list[str]] = defaultdict(list)
    for stored, problem in _check_files(ledger, names):
        if problem is not None:
            by_job[stored.job_id].append(stored.output_id)
    with ledger.transaction():
        for job_id, output_ids in by_job.items():
            ledger.refetch(job_id, output_ids)
        expired = ledger.refetch_unfetched(names, [JobState.EXPIRED, JobState.DOWNLOAD_FAILED])
    return Refetch(files=sum(len(v) for v in by_job.values()), expired_jobs=expired)


def _check_files(
    ledger: LedgerBackend, names: list[str]
) -> Iterator[tuple[StoredFile, FileProblem | None]]:
    for page in pages(lambda after: ledger.downloaded_files(names, after_id=after)):
        for stored in page:
            yield stored, _check_file(stored)


def _check_file(stored: StoredFile) -> FileProblem | None:
    path = Path(stored.path)
    try:
        size = path.stat().st_size
        if stored.bytes is not None and size != stored.bytes:
            return FileProblem("changed", stored, actual_bytes=size)
        digest = sha256_file(path)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return FileProblem("missing", stored)
    if stored.sha256 is not None and digest != stored.sha256:
        return FileProblem("changed", stored, actual_sha256=digest, actual_bytes=size)
    return None


def selected(ledger: LedgerBackend, settings: Settings, batch: str | None) -> list[str]:
    """One named batch, or every batch; a usage error names the ones there are."""
    names = ledger.batch_names()
    if batch is None:
        return names
    if batch not in names:
        raise UsageError(
            f"no batch {batch!r} in the ledger {settings.ledger_shown}"
            f" (known: {', '.join(names) or 'none'})"
        )
    return [batch]


def _views_in(
    ledger: LedgerBackend, names: list[str], states: list[JobState], after: int
) -> list[JobView]:
    return ledger.job_views(names, states=states, after_id=after)


def _which(names: list[str]) -> str:
    return f"batch {names[0]}" if len(names) == 1 else "the ledger"


def _with_file_paths(ledger: LedgerBackend, page: Sequence[JobView]) -> Sequence[JobView]:
    """A local file's content reference shown as the file it was read from, so an export
    reads back as a ``rows_from`` CSV (the same bytes give the same key)."""
    shas = {sha for v in page for sha in map(ref_digest, v.inputs.values()) if sha is not None}
    if not shas:
        return page
    paths = ledger.asset_paths(sorted(shas))
    return [
        dataclasses.replace(
            view,
            inputs={
                k: paths.get(ref_digest(value) or "", value) for k, value in view.inputs.items()
            },
        )
        for view in page
    ]


def pages(fetch: Callable[[int], Sequence[T]], key: str = "id") -> Iterator[Sequence[T]]:
    """Page through id-ordered results: ``fetch(after_id)`` until it returns nothing."""
    after = 0
    while True:
        page = fetch(after)
        if not page:
            return
        yield page
        after = getattr(page[-1], key)
