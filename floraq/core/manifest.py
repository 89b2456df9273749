"""Manifest v1 (YAML) turned into frozen values and located problems.

Pure: callers hand in text, bytes and the JSON Schema; nothing here opens a file.

Every problem in a manifest is reported at once, each with a location a person can follow
(``jobs.yaml: job 2 (product-shot), rows_from.columns.input_image (line 14)``). The work is
split by job: ``manifest_yaml`` reads the YAML safely, ``manifest_schema`` words the schema's
problems, ``csv_rows`` streams CSV row sources, and ``manifest_values`` holds the values.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import PurePath
from types import MappingProxyType
from typing import Any

from floraq.core.csv_rows import iter_csv_rows as iter_csv_rows  # re-exported
from floraq.core.manifest_schema import schema_problems
from floraq.core.manifest_values import DEFAULT_OUTPUT_DIR, DEFAULT_RETRY_FAILED_RUNS, job_prefix
from floraq.core.manifest_values import MANIFEST_VERSION as MANIFEST_VERSION
from floraq.core.manifest_values import CsvSource as CsvSource
from floraq.core.manifest_values import JobSpec as JobSpec
from floraq.core.manifest_values import Manifest as Manifest
from floraq.core.manifest_values import Row as Row
from floraq.core.manifest_yaml import compose, construct, decode_manifest
from floraq.errors import ManifestError


def parse_manifest(
    text: str | bytes, *, source: str, base_dir: PurePath, schema: Mapping[str, Any]
) -> Manifest:
    """Parse and validate a manifest; raise ManifestError listing every problem found.

    ``source`` names the file in messages; relative paths in it are joined to ``base_dir``.
    """
    if isinstance(text, bytes):
        text = decode_manifest(text, source)
    root = compose(text, source)
    data = construct(root, source)
    problems = schema_problems(data, root, source, schema)
    if problems:
        raise ManifestError(problems)
    return _build(data, source, base_dir)


def inline_rows(job: JobSpec, *, source: str) -> Iterator[Row]:
    """The job's inline ``rows`` as Rows, numbered from 1."""
    prefix = job_prefix(source, job)
    for number, values in enumerate(job.rows, start=1):
        yield Row(
            job=job.number,
            technique=job.technique,
            number=number,
            csv_line=None,
            key=None,
            values=MappingProxyType({**job.constants, **values}),
            location=f"{prefix}, row {number}",
        )


def _build(data: Mapping[str, Any], source: str, base_dir: PurePath) -> Manifest:
    max_cost = data.get("max_cost")
    return Manifest(
        source=source,
        version=MANIFEST_VERSION,
        batch=data["batch"],
        output_dir=base_dir / data.get("output_dir", DEFAULT_OUTPUT_DIR),
        concurrency=data.get("concurrency"),
        max_cost=float(max_cost) if max_cost is not None else None,
        retry_failed_runs=data.get("retry_failed_runs", DEFAULT_RETRY_FAILED_RUNS),
        jobs=tuple(
            _build_job(number, job, base_dir) for number, job in enumerate(data["jobs"], start=1)
        ),
        folder=base_dir,
        workspace=data.get("workspace"),
        upload_remote=bool(data.get("upload_remote", False)),
    )


def _build_job(number: int, job: Mapping[str, Any], base_dir: PurePath) -> JobSpec:
    rows_from = job.get("rows_from")
    csv_source = None
    if rows_from is not None:
        csv_source = CsvSource(
            path=base_dir / rows_from["csv"],
            display=rows_from["csv"],
            columns=MappingProxyType(dict(rows_from.get("columns", {}))),
            key=rows_from.get("key"),
        )
    return JobSpec(
        number=number,
        technique=job["technique"],
        constants=MappingProxyType(dict(job.get("with", {}))),
        rows=tuple(MappingProxyType(dict(row)) for row in job.get("rows", [])),
        csv=csv_source,
    )
