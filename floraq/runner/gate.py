"""The gate before a claim: a row's local files must have ready assets first.

A row keeps each local file as a content reference (``core.local_files.file_ref``); it is
claimed, and its run POSTed, only once that content's asset is ``ready``, and the POST
carries the asset's URL in its place.
"""

from __future__ import annotations

from floraq.core.lifecycle import JobState
from floraq.core.local_files import ref_digest
from floraq.ledger import JobRecord
from floraq.runner.context import RunContext


def with_asset_urls(ctx: RunContext, job: JobRecord) -> dict[str, str] | str:
    """The row's inputs with each content reference replaced by its asset's URL, or why not."""
    values = dict(job.inputs)
    workspace = ctx.batches[job.batch].workspace_id
    for input_id, value in job.inputs.items():
        sha = ref_digest(value)
        if sha is None:
            continue
        url = ctx.uploads.known_url(sha, workspace) if ctx.uploads and workspace else None
        if url is None:
            return f"the file of input '{input_id}' has no ready asset"
        values[input_id] = url
    return values


async def inputs_ready(ctx: RunContext, job: JobRecord) -> bool:
    """Wait for the assets of a queued row's local files; False: it cannot be claimed now.

    A file whose upload has failed for good rejects the row (it needs another file); one
    that stopped on the network leaves the row queued for ``resume``.
    """
    shas = [sha for sha in map(ref_digest, job.inputs.values()) if sha is not None]
    if not shas:
        return True
    workspace = ctx.batches[job.batch].workspace_id
    if ctx.uploads is None or workspace is None:
        await ctx.move(
            job,
            JobState.QUEUED,
            JobState.REJECTED,
            error_code="no_workspace",
            error_message="the row has local files but its batch has no workspace:"
            " run `floraq submit` on its manifest again",
        )
        return False
    for sha in dict.fromkeys(shas):
        found = await ctx.uploads.ready_url(sha, workspace)
        if isinstance(found, str):
            continue
        if found.final:
            await ctx.move(
                job,
                JobState.QUEUED,
                JobState.REJECTED,
                error_code="asset_failed",
                error_message=found.message,
            )
        else:
            ctx.report.incomplete += 1
        return False
    return True
