"""The use cases that send or queue: plan, submit, resume, retry, techniques.

Each function takes Settings and plain arguments and returns a plain result (see
``floraq.results``) for the console to show; none of them prints. They own the order of
side effects: validate everything, then lock, then write the ledger, then send. Row
checking and queueing is ``floraq.admission``; the read-only commands are ``floraq.review``.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Callable, Sequence
from decimal import Decimal
from pathlib import Path

from floraq import destination
from floraq.admission import Checked, check_manifest, fetch_techniques, still_invalid
from floraq.api import FloraClient, log_request
from floraq.core.keys import idempotency_key
from floraq.core.lifecycle import ACTIVE, PROBLEM_STATES, JobState
from floraq.core.manifest import Manifest
from floraq.core.money import amount
from floraq.core.problems import Problem
from floraq.core.technique import Technique
from floraq.errors import (
    ExitCode,
    ManifestError,
    NotFound,
    ServerError,
    TransportError,
    UsageError,
)
from floraq.interrupts import RESUME, interrupted_as
from floraq.interrupts import run_interruptibly as _run
from floraq.ledger import JobRecord, LedgerBackend
from floraq.ledger.leases import PgLeases
from floraq.ledger_access import locked_ledger, read_if_there, require_ledger
from floraq.local_uploads import choose_upload_workspace, local_files_for
from floraq.manifest_files import load_manifest
from floraq.queueing import queue_rows
from floraq.results import PlanResult, RetryKind, RetryResult, RunResult, StatusResult
from floraq.retry import RetryPolicy
from floraq.review import pages, selected
from floraq.review import redownload_missing as _redownload_missing
from floraq.review import status_of as _status
from floraq.row_spool import RowSpool
from floraq.runner import Progress, RunReport, build_runner
from floraq.settings import Settings

RETRY_STATES: dict[RetryKind, JobState] = {
    "failed": JobState.FAILED,
    "rejected": JobState.REJECTED,
    "expired": JobState.EXPIRED,
    "download_failed": JobState.DOWNLOAD_FAILED,
    "unknown": JobState.UNKNOWN_OUTCOME,
}


# -- plan -----------------------------------------------------------------------------------


def plan(settings: Settings, manifest_path: Path) -> PlanResult:
    """Validate every row against its technique and price the batch; sends no run.

    If the ledger exists it is read (never written), so `plan` also reports what `submit`
    would refuse because of earlier batches: changed rows, folders already in use.
    """
    again = f"interrupted; nothing was sent: run `floraq plan {manifest_path}` again"
    with interrupted_as(again):
        manifest = load_manifest(manifest_path)
    techniques, problems = _fetch(settings, manifest, interrupted=again)
    with interrupted_as(again):
        return _checked(settings, manifest, techniques, problems)


def _fetch(
    settings: Settings, manifest: Manifest, *, interrupted: str = RESUME
) -> tuple[dict[str, Technique | None], list[Problem]]:
    """Each technique of the manifest, fetched once (see ``admission.fetch_techniques``)."""

    async def go() -> tuple[dict[str, Technique | None], list[Problem]]:
        async with _client(settings, RetryPolicy(time_scale=settings.time_scale), 4) as client:
            return await fetch_techniques(client, manifest)

    return _run(go(), message=interrupted)


def _checked(
    settings: Settings,
    manifest: Manifest,
    techniques: dict[str, Technique | None],
    problems: list[Problem],
    keep: Callable[[Checked], None] | None = None,
) -> PlanResult:
    """Every row checked, against the ledger too if there is one (read, never written).

    The output folder is checked first: a batch whose files cannot land is refused whole.
    """
    reader = read_if_there(settings)
    try:
        folder = _folder_problems(settings, manifest, reader)
        files = local_files_for(settings, manifest)
        result = check_manifest(
            manifest, techniques, folder + problems, ledger=reader, files=files, keep=keep
        )
        result.folder_problems = folder
        result.read_ledger = reader is not None
        if result.uploads:
            policy = RetryPolicy(time_scale=settings.time_scale)
            choose_upload_workspace(settings, result, reader, _client(settings, policy, 4))
        return result
    finally:
        if reader is not None:
            reader.close()


def _folder_problems(
    settings: Settings, manifest: Manifest, reader: LedgerBackend | None
) -> list[Problem]:
    """Why this batch may not write its output_dir: unwritable, another ledger's, moved."""
    where = f"{manifest.source}: output_dir"
    folder = Path(manifest.output_dir)
    why = destination.unwritable(folder) or destination.owned_by_another(
        folder, manifest.batch, settings.ledger_target
    )
    if why is None and reader is not None:
        saved = reader.batch(manifest.batch)
        if saved is not None and saved.output_dir != str(folder):
            why = (
                f"batch {manifest.batch!r} writes to {saved.output_dir}, not {folder}:"
                " put output_dir back, or give the batch a new name"
            )
    return [] if why is None else [Problem(where, why)]


# -- submit / resume ------------------------------------------------------------------------


def submit(
    settings: Settings,
    manifest_path: Path,
    *,
    wait: bool = True,
    skip_invalid: bool = False,
    progress: Progress | None = None,
    reupload: bool = False,
) -> RunResult:
    """Validate, queue every new row in the ledger, then run the batch to the end.

    Nothing is written, not even the ledger file, until every row has passed. A signal
    before the rows are queued says to run the same command again: there is nothing to
    resume yet.
    """
    again = (
        "interrupted before the batch started; nothing was sent:"
        f" run the same `floraq submit {manifest_path}` again"
    )
    with interrupted_as(again):
        manifest = load_manifest(manifest_path)
    techniques, problems = _fetch(settings, manifest, interrupted=again)
    with RowSpool() as spool:
        with interrupted_as(again):
            checked = _checked(settings, manifest, techniques, problems, keep=spool.add)
        if checked.errors and (checked.folder_problems or not skip_invalid):
            raise ManifestError(checked.problems)
        known = {slug: t for slug, t in techniques.items() if t is not None}
        with locked_ledger(settings) as ledger:
            with interrupted_as(again):  # the rows are checked: queue them (one transaction)
                inserted = _queue(
                    ledger, manifest, manifest_path, known, spool, checked, skip_invalid, reupload
                )
            spool.close()
            result = _run_batches(settings, ledger, [manifest.batch], wait=wait, progress=progress)
    result.inserted = inserted
    result.plan = checked
    return result


def _queue(
    ledger: LedgerBackend,
    manifest: Manifest,
    manifest_path: Path,
    techniques: dict[str, Technique],
    spool: RowSpool,
    checked: PlanResult,
    skip_invalid: bool,
    reupload: bool,
) -> int:
    """Record the batch and its techniques, then queue its new rows; how many were new.

    One transaction (``queue_rows`` joins it): a row the ledger refuses now, or a signal,
    leaves nothing behind.
    """
    with ledger.transaction():
        for slug, technique in techniques.items():
            ledger.save_technique(slug, technique.to_api(), technique.run_cost)
        ledger.save_batch(
            manifest.batch,
            manifest_path=str(manifest_path.resolve()),
            output_dir=str(manifest.output_dir),
            concurrency=manifest.concurrency,
            max_cost=_cap(manifest.max_cost),
            retry_failed_runs=manifest.retry_failed_runs,
        )
        return queue_rows(
            ledger,
            manifest,
            spool.rows(),
            skip_invalid=skip_invalid,
            plan=checked,
            reupload=reupload,
        )


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
    require_ledger(settings)
    with locked_ledger(settings) as ledger:
        names = selected(ledger, settings, batch)
        refetch = _redownload_missing(ledger, names) if redownload_missing else None
        result = _run_batches(
            settings, ledger, names, wait=True, progress=progress, refresh_techniques=True
        )
        if refetch is not None:
            result.notes.append(refetch.describe())
        return result


def _run_batches(
    settings: Settings,
    ledger: LedgerBackend,
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
    for name in names:  # each output folder names its owner before the first download
        saved = ledger.batch(name)
        if saved is not None:
            destination.claim(Path(saved.output_dir), name, settings.ledger_target)
    report = _run(go()) if names else RunReport()
    # A worker whose lease lapsed may have lost its connection too: it reports no counts.
    status = StatusResult(counts=[], failures=[]) if report.lease_lost else _status(ledger, names)
    result = RunResult(batches=names, inserted=0, report=report, status=status)
    undone: int | None = None  # SQLite: the status says
    if isinstance(ledger, PgLeases) and not report.lease_lost and names:
        others, undone = ledger.active_rows(names)  # other workers' rows are not undone
        if others:
            result.notes.append(f"{others} row(s) are still being worked on by other workers")
    result.exit_code = _exit_code(report, status, undone=undone)
    if report.auth_error is not None:
        result.notes.append(str(report.auth_error))
    if report.disk_error is not None:
        result.notes.append(str(report.disk_error))
    if report.lease_lost:
        result.notes.append(
            f"this worker's lease on {settings.ledger_shown} lapsed (no heartbeat for"
            f" {settings.lease_seconds:g} s): it stopped sending and its rows pass to the"
            " other workers; run `floraq resume` to work again"
        )
    return result


async def _refresh_techniques(
    client: FloraClient, ledger: LedgerBackend, slugs: list[str], techniques: dict[str, Technique]
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


def _exit_code(report: RunReport, status: StatusResult, *, undone: int | None) -> ExitCode:
    """How the run ended; ``undone``: active rows no live worker holds (None: every active
    row is undone, as on SQLite)."""
    if report.auth_error is not None:
        return ExitCode.AUTH
    if report.disk_error is not None:
        return ExitCode.DISK
    if report.lease_lost:
        return ExitCode.INCOMPLETE  # its rows pass to the other workers (or a `resume`)
    if report.paused:
        return ExitCode.PAUSED
    if (status.total(*(s.value for s in ACTIVE)) if undone is None else undone) > 0:
        return ExitCode.INCOMPLETE
    if status.total(*(s.value for s in PROBLEM_STATES)):
        return ExitCode.FAILURES
    return ExitCode.OK


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

    return _run(go(), message="interrupted; nothing was sent")


# -- retry ------------------------------------------------------------------------------------


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
    unless ``queue_only``. A rejected row that is still invalid locally is skipped. A
    download_failed row is not re-run (its run completed and was paid for): its files are
    fetched again from the same run.
    """
    if not kinds:
        raise UsageError(
            "say which rows to retry: --failed, --rejected, --expired, --download-failed"
            " and/or --unknown"
        )
    require_ledger(settings)
    with locked_ledger(settings) as ledger:
        names = selected(ledger, settings, batch)
        result = RetryResult(requeued=Counter(), skipped=[])
        touched = _requeue(ledger, names, kinds, result)
        if touched and not queue_only:
            ordered = [n for n in names if n in touched]
            result.run = _run_batches(
                settings, ledger, ordered, wait=True, progress=progress, refresh_techniques=True
            )
        return result


def _requeue(
    ledger: LedgerBackend, names: list[str], kinds: Sequence[RetryKind], result: RetryResult
) -> set[str]:
    """A new attempt for each row in these states (counted in ``result``); the batches hit."""
    touched: set[str] = set()
    for kind in dict.fromkeys(kinds):
        state = RETRY_STATES[kind]
        if state is JobState.DOWNLOAD_FAILED:
            for name in names:  # the same run, fetched again: back to completed
                again = ledger.refetch_unfetched([name], [state])
                result.refetched += again
                if again:
                    touched.add(name)
            continue
        for page in pages(functools.partial(_jobs_in, ledger, names, state)):
            with ledger.transaction():
                for job in page:
                    problem = still_invalid(ledger, job) if kind == "rejected" else None
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
    return touched


def _jobs_in(
    ledger: LedgerBackend, names: list[str], state: JobState, after: int
) -> list[JobRecord]:
    return ledger.jobs(batches=names, states=[state], after_id=after)


# -- plumbing -----------------------------------------------------------------------------------


def _client(settings: Settings, policy: RetryPolicy, concurrency: int) -> FloraClient:
    return FloraClient(
        base_url=settings.base_url,
        api_key=settings.require_key(),
        policy=policy,
        max_concurrency=concurrency,
        log=log_request if settings.verbose else None,
    )


def _cap(value: float | Decimal | None) -> Decimal | None:
    """A cost cap from the manifest or the command line, as an exact amount."""
    return None if value is None else amount(value)
