"""Download a completed run's outputs; re-poll the run for fresh URLs when one has expired.

Files land atomically and verified (``floraq.downloads``) under
``<output_dir>/<technique>/<row_key>/<output_id>.<ext>``, each segment made safe by
``safe_segment``. An expired or refused URL is never fetched again as is: the run is
asked for fresh ones (never re-run) up to ``EXPIRED_REPOLLS`` times, then the job expires
(the URL died) or its download failed for good (a redirect loop, a URL floraq refuses).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
from pathlib import Path

from floraq.core.lifecycle import JobState, OutputState
from floraq.core.submission import JOB_ROUNDS
from floraq.core.validation import SAFE_NAME
from floraq.downloads import Downloaded, sha256_file
from floraq.errors import (
    ApiError,
    DiskError,
    DownloadError,
    DownloadExpired,
    DownloadFailed,
    DownloadRefused,
    TransportError,
)
from floraq.ledger import JobRecord
from floraq.runner.context import RunContext

EXPIRED_REPOLLS = 2  # fresh-URL re-polls before an output is declared expired


async def download(ctx: RunContext, job: JobRecord) -> None:
    """Fetch every output not yet on disk; re-poll for fresh URLs when one has expired."""
    folder = ctx.batches[job.batch].output_dir / safe_segment(job.technique)
    folder = folder / safe_segment(job.row_key)
    if ctx.lease is not None:
        await _verify_earlier(ctx, job)
    repolls = 0
    rounds = 0
    while True:
        expired, gave_up = await _fetch_pending(ctx, job, folder)
        if ctx.report.disk_error is not None:
            return  # the row stays completed; `resume` fetches it once the disk is fixed
        if gave_up:
            rounds += 1
            if rounds > JOB_ROUNDS:
                ctx.report.incomplete += 1
                return
            await ctx.pause_round(rounds)
            continue
        if expired is None:  # a disk error noted by an earlier process is cleared
            await ctx.move(
                job, JobState.COMPLETED, JobState.DOWNLOADED, error_code=None, error_message=None
            )
            return
        if repolls >= EXPIRED_REPOLLS or job.run_id is None:
            await ctx.committer.commit(functools.partial(_expire, ctx, job, *expired))
            return
        repolls += 1
        if not await _fresh_urls(ctx, job):
            ctx.report.incomplete += 1  # the stored URLs stay; `resume` tries again
            return


# Why an output could not be fetched for good, by what the downloader raised: each is
# reported as itself (status shows the code), after the run was asked for fresh URLs.
EXPIRED = "output_expired"  # the URL answered 403/404/410
REFUSED = "output_refused"  # floraq will not fetch that URL (plain http, a bad scheme)
FAILED = "download_failed"  # a redirect loop, or an answer no retry can change

# The job's state for each: a dead URL expires; a live one that cannot be fetched as
# served is a failed download (`retry --download-failed` fetches it again, same run).
_STATE_BY_CODE = {
    EXPIRED: JobState.EXPIRED,
    REFUSED: JobState.DOWNLOAD_FAILED,
    FAILED: JobState.DOWNLOAD_FAILED,
}


async def _fetch_pending(
    ctx: RunContext, job: JobRecord, folder: Path
) -> tuple[tuple[str, str] | None, bool]:
    """One pass over the outputs not on disk yet.

    Returns (error code, message) of the last output that could not be fetched as it is
    (expired, refused or failed for good) in this pass, None if none, and whether the
    downloader gave up on any for now (network trouble).
    """
    expired: tuple[str, str] | None = None
    gave_up = False
    for output in ctx.ledger.outputs(job.id):
        if output.state == OutputState.DOWNLOADED:
            continue
        if ctx.report.disk_error is not None:
            break  # no point fetching more into a disk that refuses writes
        try:
            got = await ctx.downloader.download(
                output.url,
                dest_stem=folder / safe_segment(output.output_id),
                output_type=output.type,
            )
        except (DownloadExpired, DownloadRefused, DownloadFailed) as e:
            # Ask the run for fresh URLs; never re-run it. Plain http:// is never fetched.
            code = {DownloadRefused: REFUSED, DownloadFailed: FAILED}.get(type(e), EXPIRED)
            expired = (code, str(e))
            continue
        except (DownloadError, TransportError):
            gave_up = True
            continue
        except DiskError as e:
            ctx.disk_refused(e)
            await ctx.note(job, error_code=e.code, error_message=e.message)
            break
        ctx.report.downloads += 1
        await ctx.committer.commit(
            functools.partial(_record_download, ctx, job.id, output.output_id, got)
        )
        ctx.progress.advance(JobState.DOWNLOADED)
    return expired, gave_up


async def _verify_earlier(ctx: RunContext, job: JobRecord) -> None:
    """Files another worker finished for this row (before this one took it over) are checked
    by their sha256, not fetched again; a file missing or changed is fetched again."""
    for output in ctx.ledger.outputs(job.id):
        if output.state != OutputState.DOWNLOADED or output.path is None:
            continue
        path = Path(output.path)
        sound = await asyncio.to_thread(_has_sha256, path, output.sha256)
        if not sound:
            await ctx.committer.commit(
                functools.partial(ctx.ledger.output_missing, job.id, output.output_id)
            )


def _has_sha256(path: Path, sha256: str | None) -> bool:
    try:
        return sha256 is not None and path.is_file() and sha256_file(path) == sha256
    except OSError:
        return False


async def _fresh_urls(ctx: RunContext, job: JobRecord) -> bool:
    """Ask the run for its outputs again and store their URLs; False if it could not be asked."""
    assert job.run_id is not None
    try:
        fresh = await ctx.client.get_run(job.technique, job.run_id, poll_url=job.poll_url)
    except (TransportError, ApiError):
        return False
    ctx.report.polls += 1
    await ctx.committer.commit(
        functools.partial(
            ctx.ledger.record_outputs,
            job.id,
            [(o.output_id, o.type, o.url) for o in fresh.outputs],
        )
    )
    return True


def _record_download(ctx: RunContext, job_id: int, output_id: str, got: Downloaded) -> None:
    ctx.ledger.output_downloaded(
        job_id,
        output_id,
        path=str(got.path),
        size=got.bytes,
        sha256=got.sha256,
        content_type=got.content_type,
    )


def _expire(ctx: RunContext, job: JobRecord, code: str, error: str) -> None:
    """Every output not on disk expires, and the job becomes expired or download_failed
    with them (one transaction); the error code says why (expired, refused, failed)."""
    for output in ctx.ledger.outputs(job.id):
        if output.state != OutputState.DOWNLOADED:
            ctx.ledger.output_expired(job.id, output.output_id, error)
    ctx.ledger.move(
        job.id,
        JobState.COMPLETED,
        _STATE_BY_CODE[code],
        error_code=code,
        error_message=error,
    )


def safe_segment(name: str) -> str:
    """A path segment from a name we do not fully control (output ids come from the server)."""
    if SAFE_NAME.fullmatch(name) and name not in (".", ".."):
        return name
    return "x" + hashlib.sha256(name.encode("utf-8")).hexdigest()[:16]
