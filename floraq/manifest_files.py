"""The file edge of the manifest: open the manifest, its schema and its CSV files.

Everything that decides lives in ``floraq.core.manifest``; this module only reads bytes and
turns "cannot read" into a located Problem.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Collection, Iterator, Mapping
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from floraq.core.manifest import JobSpec, Manifest, Row, inline_rows, iter_csv_rows, parse_manifest
from floraq.core.problems import Problem
from floraq.errors import ManifestError

# Characters per CSV field. Python's default (128 KiB) is too small for long prompts and
# data URLs; 16 MiB covers 10 MB fields and still stops an unclosed quote eating the file.
CSV_FIELD_LIMIT = 16 * 1024 * 1024


@cache
def manifest_schema() -> Mapping[str, Any]:
    """The JSON Schema of manifest v1, shipped in the package."""
    text = resources.files("floraq.core").joinpath("manifest.schema.json").read_text("utf-8")
    schema: Mapping[str, Any] = json.loads(text)
    return schema


def load_manifest(path: Path) -> Manifest:
    """Read and parse a manifest file; ManifestError if it cannot be read or is invalid."""
    source = str(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ManifestError([Problem(source, "no such file")]) from None
    except IsADirectoryError:
        raise ManifestError([Problem(source, "is a directory, not a manifest file")]) from None
    except OSError as error:
        raise ManifestError([Problem(source, f"cannot read: {error.strerror}")]) from None
    return parse_manifest(
        data, source=source, base_dir=path.absolute().parent, schema=manifest_schema()
    )


def iter_job_rows(
    manifest: Manifest, job: JobSpec, *, input_ids: Collection[str] | None = None
) -> Iterator[Row | Problem]:
    """The job's rows: inline ones, then its CSV streamed from disk (see ``iter_csv_rows``)."""
    yield from inline_rows(job, source=manifest.source)
    if job.csv is None:
        return
    if csv.field_size_limit() < CSV_FIELD_LIMIT:
        csv.field_size_limit(CSV_FIELD_LIMIT)
    location = f"{manifest.source}: job {job.number} ({job.technique}), rows_from.csv"
    try:
        file = open(job.csv.path, "rb")  # noqa: SIM115 - closed by the with below, in this generator
    except FileNotFoundError:
        yield Problem(location, f"no such file: {job.csv.display} (looked at {job.csv.path})")
        return
    except IsADirectoryError:
        yield Problem(location, f"{job.csv.display} is a directory, not a CSV file")
        return
    except OSError as error:
        yield Problem(location, f"cannot read {job.csv.display}: {error.strerror}")
        return
    with file:
        yield from iter_csv_rows(
            job,
            file,
            source=manifest.source,
            first_number=len(job.rows) + 1,
            input_ids=input_ids,
        )
