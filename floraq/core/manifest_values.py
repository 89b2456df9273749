"""The values a manifest becomes: jobs, their CSV sources, and rows ready to validate.

Frozen, and free of parsing: ``floraq.core.manifest`` builds them, ``csv_rows`` and
``validation`` read them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import PurePath

MANIFEST_VERSION = 1
DEFAULT_OUTPUT_DIR = "outputs"
DEFAULT_RETRY_FAILED_RUNS = 1


@dataclass(frozen=True, slots=True)
class CsvSource:
    """A job's ``rows_from``: where its CSV is and which columns feed which inputs."""

    path: PurePath  # absolute: the manifest's folder joined with the path as written
    display: str  # the path as written in the manifest, for messages
    columns: Mapping[str, str]  # input id -> CSV column, only the ones the manifest names
    key: str | None  # the column that names each row, if any


@dataclass(frozen=True, slots=True)
class JobSpec:
    """One entry of ``jobs``: a technique and where its rows come from."""

    number: int  # 1-based position in the manifest
    technique: str
    constants: Mapping[str, str]  # the job's ``with``: merged into every row
    rows: tuple[Mapping[str, str], ...]  # inline rows as written (without constants)
    csv: CsvSource | None


@dataclass(frozen=True, slots=True)
class Manifest:
    """A valid manifest; rows from CSV files are read later, by streaming."""

    source: str  # how the manifest file is named in messages
    version: int
    batch: str
    output_dir: PurePath  # absolute
    concurrency: int | None
    max_cost: float | None
    retry_failed_runs: int
    jobs: tuple[JobSpec, ...]
    # The manifest's folder, where inline rows' local files start; where a manifest was read
    # is not part of what it says, so two manifests that say the same compare equal.
    folder: PurePath | None = field(default=None, compare=False)
    workspace: str | None = None  # where local files are uploaded: a ws_ id or a name
    upload_remote: bool = False  # fetch https:// inputs FLORA will not, and upload them


@dataclass(frozen=True, slots=True)
class Row:
    """One row ready to validate against its technique: inputs with constants merged in."""

    job: int  # JobSpec.number
    technique: str
    number: int  # 1-based within the job: inline rows first, then CSV rows
    csv_line: int | None  # 1-based physical line in the CSV file where the record starts
    key: str | None  # the value of the CSV ``key`` column, if the job has one
    values: Mapping[str, str]  # input id -> value
    location: str  # "jobs.yaml: job 2 (product-shot), row 14 (products.csv line 15)"


def job_prefix(source: str, job: JobSpec) -> str:
    """How a job is named at the start of each of its problems' locations."""
    return f"{source}: job {job.number} ({job.technique})"


def not_utf8_message(byte: int) -> str:
    """The one wording for a file that is not UTF-8, manifest or CSV."""
    return f"not UTF-8 (byte 0x{byte:02x}); re-save the file as UTF-8"
