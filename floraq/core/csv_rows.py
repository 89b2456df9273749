"""A job's CSV rows, streamed: one record in memory at a time, each problem at its line.

Pure: the caller hands in the file's lines as bytes, so a million-row export costs no
more memory than ten rows.
"""

from __future__ import annotations

import codecs
import csv
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from types import MappingProxyType

from floraq.core.manifest_values import CsvSource, JobSpec, Row, job_prefix, not_utf8_message
from floraq.core.problems import Problem

# A job with no rows is almost always a mistake (a filter that matched nothing, the wrong
# export): an error at plan/submit, so a cron job does not report success for no work.
HEADER_ONLY = "has a header but no rows; add rows below the header, or remove the job"


def iter_csv_rows(
    job: JobSpec,
    lines: Iterable[bytes],
    *,
    source: str,
    first_number: int,
    input_ids: Collection[str] | None = None,
) -> Iterator[Row | Problem]:
    """Stream the job's CSV rows from ``lines`` (bytes, as a binary file yields them).

    Rows are numbered from ``first_number``. The manifest's ``columns`` say which column feeds
    which input; given the technique's ``input_ids``, an input not listed there reads the
    column of the same name. Every other column is ignored.
    Problems that spoil the whole file (not UTF-8, a malformed record, a missing column,
    a header and no rows) end the stream; a bad row yields a Problem in its place and the
    stream goes on.
    The caller sets ``csv.field_size_limit`` (it is process-wide).
    """
    if job.csv is None:
        raise ValueError(f"job {job.number} has no rows_from")
    spec = job.csv
    prefix = job_prefix(source, job)
    number = first_number
    records = _records(lines)
    try:
        first = next(records, None)
        if first is None:
            message = "the file is empty; expected a header line, then one line per row"
            yield Problem(f"{prefix}, {spec.display}", message)
            return
        header_line, header = first[0], [name.strip() for name in first[1]]
        wanted = _wanted_columns(spec, header, input_ids)
        header_problems = _header_problems(spec, job.constants, header, wanted)
        if header_problems:
            at = f"{prefix}, {spec.display} line {header_line}"
            yield from (Problem(at, message) for message in header_problems)
            return
        picks = {input_id: header.index(column) for input_id, column in wanted.items()}
        key_index = header.index(spec.key) if spec.key is not None else None
        for start, record in records:
            location = f"{prefix}, row {number} ({spec.display} line {start})"
            problem = _record_problem(record, len(header), key_index, spec.key)
            if problem is not None:
                yield Problem(location, problem)
            else:
                key = record[key_index] if key_index is not None else None
                values = {input_id: record[i] for input_id, i in picks.items()}
                yield _row(job, number, start, key, values, location)
            number += 1
    except _BadCsv as error:
        yield Problem(f"{prefix}, {spec.display} line {error.line}", error.message)
        return
    if number == first_number:
        yield Problem(f"{prefix}, {spec.display}", HEADER_ONLY)


def _row(
    job: JobSpec, number: int, line: int, key: str | None, values: Mapping[str, str], at: str
) -> Row:
    """A CSV record as a Row: the job's constants merged under the record's values."""
    return Row(
        job=job.number,
        technique=job.technique,
        number=number,
        csv_line=line,
        key=key,
        values=MappingProxyType({**job.constants, **values}),
        location=at,
    )


class _BadCsv(Exception):
    """The CSV cannot be read past ``line``; ends the stream with one Problem."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(line, message)
        self.line = line
        self.message = message


def _decode_lines(lines: Iterable[bytes]) -> Iterator[str]:
    """Decode line by line, so a bad byte is reported with its line number."""
    for number, raw in enumerate(lines, start=1):
        if number == 1 and raw.startswith(codecs.BOM_UTF8):
            raw = raw[len(codecs.BOM_UTF8) :]
        try:
            yield raw.decode("utf-8")
        except UnicodeDecodeError as error:
            raise _BadCsv(number, not_utf8_message(raw[error.start])) from None


def _records(lines: Iterable[bytes]) -> Iterator[tuple[int, list[str]]]:
    """Non-blank CSV records, each with the physical line it starts on."""
    reader = csv.reader(_decode_lines(lines), strict=True)
    while True:
        start = reader.line_num + 1
        try:
            record = next(reader)
        except StopIteration:
            return
        except csv.Error as error:
            raise _BadCsv(reader.line_num, _csv_error_message(error)) from None
        if any(map(str.strip, record)):
            yield start, record


def _csv_error_message(error: csv.Error) -> str:
    text = str(error)
    if "field larger than field limit" in text:
        return f"a field is too large ({text}); is a quote left open?"
    if "unexpected end of data" in text:
        return "the file ends inside a quoted field; is a quote left open?"
    return f"malformed CSV: {text}"


def _wanted_columns(
    spec: CsvSource, header: Sequence[str], input_ids: Collection[str] | None
) -> dict[str, str]:
    """Input id -> column: the manifest's ``columns``, then same-name columns of ``input_ids``."""
    wanted = dict(spec.columns)
    for input_id in input_ids or ():
        if input_id not in wanted and input_id in header:
            wanted[input_id] = input_id
    return wanted


def _header_problems(
    spec: CsvSource, constants: Mapping[str, str], header: Sequence[str], wanted: Mapping[str, str]
) -> list[str]:
    listed = ", ".join(f"'{name}'" for name in header)
    if len(header) == 1 and (";" in header[0] or "\t" in header[0]):
        listed += " (floraq reads comma-separated files)"
    needed = [(column, f"for input '{input_id}'") for input_id, column in wanted.items()]
    if spec.key is not None:
        needed.append((spec.key, "the key column"))
    problems: list[str] = []
    for column, role in needed:
        count = header.count(column)
        if count == 0:
            problems.append(f"column '{column}' ({role}) is not in the header: {listed}")
        elif count > 1:
            problems.append(f"column '{column}' ({role}) appears {count} times in the header")
    for input_id in sorted(wanted.keys() & constants.keys()):
        problems.append(
            f"column '{wanted[input_id]}' and the job's `with` both set '{input_id}'; "
            "set it in one place"
        )
    return problems


def _record_problem(
    record: Sequence[str], width: int, key_index: int | None, key: str | None
) -> str | None:
    if len(record) < width:
        return f"has {len(record)} fields but the header has {width}"
    if len(record) > width and any(field.strip() for field in record[width:]):
        return (
            f"has {len(record)} fields but the header has {width}; quote values that contain commas"
        )
    if key_index is not None and not record[key_index].strip():
        return f"the key column '{key}' is empty; every row needs a key"
    return None
