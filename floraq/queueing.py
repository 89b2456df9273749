"""Queueing: the rows admission checked, into the ledger in one transaction.

``submit`` checks every row once (``admission.check_manifest``, before the lock) and
spools them (``floraq.row_spool``); here, under the lock, only the checks against the
ledger run again, and the rows go in. Nothing here sends a run.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator

from floraq.admission import INSERT_CHUNK, Checked, against_ledger
from floraq.core.lifecycle import JobState
from floraq.core.manifest import Manifest
from floraq.core.problems import Problem
from floraq.errors import ManifestError
from floraq.ledger import LedgerBackend, NewJob
from floraq.local_inputs import LocalFile
from floraq.results import PlanResult


def queue_rows(
    ledger: LedgerBackend,
    manifest: Manifest,
    rows: Iterable[Checked],
    *,
    skip_invalid: bool,
    plan: PlanResult | None = None,
    reupload: bool = False,
) -> int:
    """Queue the rows ``check_manifest`` checked, in one transaction; invalid ones as
    rejected if asked.

    Only the checks against the ledger run again, under the lock: another process may
    have written it since it was read (or it could not be read before it was migrated).
    A row they refuse, without ``--skip-invalid``, undoes the whole queue
    (``ManifestError``). A row whose place in the manifest holds an earlier rejection with
    other inputs (fixed since a ``--skip-invalid`` run, or changed after FLORA refused it)
    replaces that record: it moves to ``replaced``, so it no longer counts as a row that
    needs a look.
    """
    with ledger.transaction():
        workspace_id = _workspace_of(ledger, manifest, plan)
        queue = _Queue(ledger, manifest.batch, workspace_id, reupload)
        late: list[Problem] = []
        for chunk in _chunks(rows, INSERT_CHUNK):
            late.extend(_late_errors(chunk, ledger, str(manifest.output_dir)))
            queue.take(chunk, skip_invalid)
        if late and plan is not None:
            plan.problems.extend(late)
        if late and not skip_invalid:
            raise ManifestError(plan.problems if plan is not None else late)
        return queue.finish()


def _chunks(rows: Iterable[Checked], size: int) -> Iterator[list[Checked]]:
    chunk: list[Checked] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _late_errors(chunk: list[Checked], ledger: LedgerBackend, output_dir: str) -> list[Problem]:
    """The ledger checks again, now under the lock: the errors the first check missed."""
    clean = [c for c in chunk if not c.errors]
    against_ledger(clean, ledger, output_dir)
    return [p for c in clean for p in c.errors]


class _Queue:
    """Rows into the ledger a chunk at a time, rejected ones and replacements at the end."""

    def __init__(
        self, ledger: LedgerBackend, batch: str, workspace_id: str | None, reupload: bool
    ) -> None:
        self.ledger, self.workspace_id, self.reupload = ledger, workspace_id, reupload
        self.inserted = 0
        self.rejected: list[tuple[NewJob, str]] = []
        self.stale = _rejections_by_place(ledger, batch)
        self.candidates: list[tuple[int, tuple[str, str]]] = []
        # (technique, inputs digest) of the rejected records that rows read still have:
        # only those are asked about, so memory follows the rejections, not the manifest.
        self.asked = {old for entries in self.stale.values() for _, old in entries}
        self.present: set[tuple[str, str]] = set()

    def take(self, chunk: list[Checked], skip_invalid: bool) -> None:
        jobs: list[NewJob] = []
        contents: dict[str, LocalFile] = {}
        for checked in chunk:
            job = checked.job
            if self.asked and (job.technique, job.inputs_digest) in self.asked:
                self.present.add((job.technique, job.inputs_digest))
            if checked.errors:
                if skip_invalid:  # an invalid row is its own record: it replaces nothing
                    message = "; ".join(p.message for p in checked.errors)
                    self.rejected.append((job, message))
                continue
            self.candidates.extend(
                (job_id, old)
                for job_id, old in self.stale.pop(job.location, ())
                if old != (job.technique, job.inputs_digest)
            )
            jobs.append(job)
            contents.update((f.sha256, f) for f in checked.files.values())
        self.inserted += _insert(self.ledger, jobs, contents, self.workspace_id, self.reupload)

    def finish(self) -> int:
        ledger = self.ledger
        for job, message in self.rejected:
            if ledger.insert_jobs([job]):
                ledger.move(
                    ledger.job_id_for_key(job.idempotency_key),
                    JobState.QUEUED,
                    JobState.REJECTED,
                    error_code="invalid_row",
                    error_message=message,
                )
        # A rejected record whose inputs are still in the manifest (at another place) stays.
        for job_id, old in self.candidates:
            if old not in self.present:
                ledger.move(job_id, JobState.REJECTED, JobState.REPLACED)
        return self.inserted


def _workspace_of(ledger: LedgerBackend, manifest: Manifest, plan: PlanResult | None) -> str | None:
    """The workspace the plan chose for the rows' local files, saved on the batch."""
    if plan is None:
        return None
    if plan.workspace_id is not None:
        ledger.set_batch_workspace(manifest.batch, plan.workspace_id)
    return plan.workspace_id


def _insert(
    ledger: LedgerBackend,
    jobs: list[NewJob],
    contents: dict[str, LocalFile],
    workspace_id: str | None,
    reupload: bool,
) -> int:
    """Queue a chunk of rows, their local files' contents known first (so a row never
    names a content the uploader cannot find)."""
    if contents:
        if workspace_id is None:
            raise ValueError("rows with local files need a workspace")
        ledger.remember_files(
            workspace_id,
            [(f.sha256, f.path, f.size, f.content_type) for f in contents.values()],
            fresh=reupload,
        )
        contents.clear()
    return ledger.insert_jobs(jobs)


def _rejections_by_place(
    ledger: LedgerBackend, batch: str
) -> dict[str, list[tuple[int, tuple[str, str]]]]:
    """The batch's rejected rows by manifest location: (job id, (technique, inputs digest)).

    Compared by inputs, not by key: a rejected row retried to a later attempt has another
    key but the same inputs, and is not "fixed" by the unchanged manifest.
    """
    found: dict[str, list[tuple[int, tuple[str, str]]]] = defaultdict(list)
    after = 0
    while page := ledger.jobs(batches=[batch], states=[JobState.REJECTED], after_id=after):
        for job in page:
            found[job.location].append((job.id, (job.technique, job.inputs_digest)))
        after = page[-1].id
    return found
