"""Admission: manifest rows checked alone, against each other and against the ledger.

Rows stream through a chunk at a time, so memory stays flat however long the manifest:
duplicates and shared output folders are looked up in an on-disk ``SeenRows`` store.
Nothing here writes or sends: ``floraq.queueing`` queues the rows checked here.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from floraq.api import FloraClient
from floraq.core.keys import ROW_KEY_HEX_CHARS, row_keys
from floraq.core.manifest import JobSpec, Manifest, Row
from floraq.core.problems import Problem
from floraq.core.row_fast import FastRows
from floraq.core.technique import Technique
from floraq.core.validation import check_row
from floraq.errors import NotFound
from floraq.ledger import JobRecord, LedgerBackend, NewJob, SeenRows
from floraq.local_inputs import LocalFile, LocalFiles, RowFiles, row_base
from floraq.manifest_files import iter_job_rows
from floraq.results import PlanResult, TechniqueCost

INSERT_CHUNK = 1000  # rows checked, and inserted, per round trip


async def fetch_techniques(
    client: FloraClient, manifest: Manifest
) -> tuple[dict[str, Technique | None], list[Problem]]:
    """GET each technique once; a 404 becomes a problem located at each job that uses it."""
    slugs = list(dict.fromkeys(job.technique for job in manifest.jobs))
    found: dict[str, Technique | None] = {}
    problems: list[Problem] = []
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
class Checked:
    """A row as the ledger job it would become, and what stops it (filled in as checks run)."""

    job: NewJob
    errors: list[Problem]
    warnings: list[Problem] = field(default_factory=list)
    files: dict[str, LocalFile] = field(default_factory=dict)  # input id -> its local file


def check_rows(
    manifest: Manifest,
    techniques: dict[str, Technique | None],
    problems: list[Problem],
    ledger: LedgerBackend | None,
    stats: Counter[str],
    files: LocalFiles | None = None,
) -> Iterator[Checked]:
    """Every row, checked on its own and against the others; problems are appended.

    Local files are checked on disk and hashed through ``files`` (once each).

    Rows are held a chunk at a time: duplicates and shared output folders are looked up in
    a ``SeenRows`` store on disk, so memory does not grow with the manifest.
    """
    files = files or LocalFiles()
    output_dir = str(manifest.output_dir)
    with SeenRows() as seen:
        for job in manifest.jobs:
            technique = techniques.get(job.technique)
            buffered: list[Problem | Checked] = []  # in row order, problems as they came
            rows = 0
            check = _RowCheck(manifest, job, technique, files) if technique else None
            input_ids = [i.id for i in technique.inputs] if technique else None
            for item in iter_job_rows(manifest, job, input_ids=input_ids):
                if isinstance(item, Problem):
                    buffered.append(item)
                    continue
                if check is None:
                    continue
                checked = check(item)
                if checked.warnings:
                    buffered.extend(checked.warnings)
                buffered.append(checked)
                rows += 1
                if rows >= INSERT_CHUNK:
                    settled = _against_earlier(buffered, seen, job.technique, problems, stats)
                    yield from against_ledger(settled, ledger, output_dir)
                    buffered, rows = [], 0
            settled = _against_earlier(buffered, seen, job.technique, problems, stats)
            yield from against_ledger(settled, ledger, output_dir)


class _RowCheck:
    """One job's rows checked: on the short path (``FastRows``) when it may answer, else
    the generic one; what both need is decided here once, not per row."""

    def __init__(
        self, manifest: Manifest, job: JobSpec, technique: Technique, files: LocalFiles
    ) -> None:
        self.batch, self.technique, self.files = manifest.batch, technique, files
        self.fast = FastRows(
            batch=manifest.batch, technique=technique, remote=files.remote is not None
        )
        csv_path = job.csv.path if job.csv else None
        self.bases = (  # where relative paths start: inline rows, CSV rows
            row_base(manifest.folder, csv_path, False),
            row_base(manifest.folder, csv_path, True),
        )

    def __call__(self, row: Row) -> Checked:
        keys = self.fast.keys(row.values, row.key)
        if keys is None:
            base = self.bases[row.csv_line is not None]
            local = self.files.row_files(row, self.technique, base)
            return _checked(self.batch, row, self.technique, local)
        folder = row.key if row.key is not None else keys[1][:ROW_KEY_HEX_CHARS]
        job = _new_job(self.batch, row, self.technique, dict(row.values), folder, *keys[1:])
        return Checked(job=job, errors=[])


def _checked(batch: str, row: Row, technique: Technique, local: RowFiles) -> Checked:
    """One row checked on its own (the generic path), with its first-attempt key and
    output folder.

    Its local files are content references in ``local.values``: the key, the digest and
    the folder name cover what the files hold, not where they are.
    """
    fetched = {f"{row.location}, field '{i}'" for i in local.fetched}
    own = [  # a URL upload_remote fetched is no longer "a host FLORA may refuse"
        p for p in check_row(row, technique) if p.severity == "error" or p.location not in fetched
    ]
    problems = sorted(own + local.problems)
    errors = [p for p in problems if p.severity == "error"]
    values = local.values
    keys = row_keys(batch=batch, technique=technique.slug, inputs=values)
    folder = row.key if row.key is not None and not errors else keys.row_key
    job = _new_job(batch, row, technique, values, folder, keys.inputs_digest, keys.idempotency_key)
    warnings = [p for p in problems if p.severity == "warning"]
    return Checked(job=job, errors=errors, warnings=warnings, files=local.files)


def _new_job(
    batch: str,
    row: Row,
    technique: Technique,
    inputs: dict[str, str],
    folder: str,
    digest: str,
    key: str,
) -> NewJob:
    """The ledger job a checked row becomes (either path), at its technique's price."""
    return NewJob(
        batch=batch,
        technique=technique.slug,
        job_number=row.job,
        row_number=row.number,
        csv_line=row.csv_line,
        location=row.location,
        row_key=folder,
        inputs=inputs,
        inputs_digest=digest,
        idempotency_key=key,
        estimated_cost=technique.run_cost,
    )


def _against_earlier(
    buffered: list[Problem | Checked],
    seen: SeenRows,
    technique: str,
    problems: list[Problem],
    stats: Counter[str],
) -> list[Checked]:
    """One chunk against every row before it: duplicates go, a second claim on a folder errs.

    Problems land in ``problems`` in row order; duplicates are left out of the result.
    """
    valid = [b for b in buffered if isinstance(b, Checked) and not b.errors]
    earlier = seen.known_keys([c.job.idempotency_key for c in valid])
    owners = seen.folder_owners(technique, [c.job.row_key for c in valid])
    new_keys: list[str] = []
    new_folders: list[tuple[str, str, str]] = []
    settled: list[Checked] = []
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
                        entry.job.location,
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
                        entry.job.location,
                        f"writes the same output folder {technique}/{folder} as {other};"
                        " give each row a distinct key",
                    )
                )
            else:
                owners[folder] = entry.job.location
                new_folders.append((technique, folder, entry.job.location))
        settled.append(entry)
    seen.add(new_keys, new_folders, new=True)  # each looked up above, and kept once
    return settled


def against_ledger(
    pending: list[Checked], ledger: LedgerBackend | None, output_dir: str
) -> list[Checked]:
    """Rows the ledger already knows, in ways that would cost money or overwrite files.

    A keyed row whose inputs changed since it was queued would reuse a paid-for key; a row
    whose output folder another batch already fills would overwrite that batch's files.
    """
    if ledger is None or not pending:
        return pending
    by_technique: dict[str, list[Checked]] = defaultdict(list)
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
                        checked.job.location,
                        f"this row (key {key!r}) changed since it was submitted in this batch;"
                        " give it a new key, or use a new batch name and output_dir",
                    )
                )
            elif key in taken:
                checked.errors.append(
                    Problem(
                        checked.job.location,
                        f"its output folder {technique}/{key} already holds the files of"
                        f" batch {taken[key]!r}; set another output_dir for this batch",
                    )
                )
    return pending


def check_manifest(
    manifest: Manifest,
    techniques: dict[str, Technique | None],
    problems: list[Problem],
    *,
    ledger: LedgerBackend | None,
    files: LocalFiles | None = None,
    keep: Callable[[Checked], None] | None = None,
) -> PlanResult:
    """Every row checked; the costs, and the local files the valid rows name.

    ``keep`` is handed every checked row (valid or not, duplicates left out), in row
    order: ``submit`` spools them to queue from, so no row is checked twice.
    """
    stats: Counter[str] = Counter()
    rows_by_slug: Counter[str] = Counter()
    files = files or LocalFiles()
    uploads: dict[str, LocalFile] = {}
    for checked in check_rows(manifest, techniques, problems, ledger, stats, files):
        problems.extend(checked.errors)
        if not checked.errors:
            rows_by_slug[checked.job.technique] += 1
            uploads.update((f.sha256, f) for f in checked.files.values())
        if keep is not None:
            keep(checked)
    costs = [
        TechniqueCost(slug=slug, rows=rows_by_slug[slug], run_cost=technique.run_cost)
        for slug, technique in techniques.items()
        if technique is not None
    ]
    return PlanResult(
        manifest=manifest,
        problems=problems,
        costs=costs,
        duplicates=stats["duplicates"],
        local_files=files,
        uploads=uploads,
    )


def still_invalid(ledger: LedgerBackend, job: JobRecord) -> str | None:
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
