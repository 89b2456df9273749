"""Manifest v1 (YAML) and its CSV row sources, turned into frozen values and located problems.

Pure: callers hand in text, bytes and the JSON Schema; nothing here opens a file.

Every problem in a manifest is reported at once, each with a location a person can follow
(``jobs.yaml: job 2 (product-shot), rows_from.columns.input_image (line 14)``). YAML is read
with the safe constructor only, and anchors and aliases are refused outright: a manifest never
needs them, and they are how a few bytes expand into gigabytes.

CSV rows are streamed: ``iter_csv_rows`` holds one record at a time, so a million-row export
costs no more memory than ten rows.
"""

from __future__ import annotations

import codecs
import csv
import difflib
import math
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import PurePath
from types import MappingProxyType
from typing import Any

import jsonschema
import yaml

from floraq.core.problems import Problem
from floraq.errors import ManifestError

MANIFEST_VERSION = 1
DEFAULT_OUTPUT_DIR = "outputs"
DEFAULT_RETRY_FAILED_RUNS = 1
MAX_NESTING = 20

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_STR_TAG = "tag:yaml.org,2002:str"
_OPENERS = (yaml.MappingStartEvent, yaml.SequenceStartEvent)
_CLOSERS = (yaml.MappingEndEvent, yaml.SequenceEndEvent)


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


def parse_manifest(
    text: str | bytes, *, source: str, base_dir: PurePath, schema: Mapping[str, Any]
) -> Manifest:
    """Parse and validate a manifest; raise ManifestError listing every problem found.

    ``source`` names the file in messages; relative paths in it are joined to ``base_dir``.
    """
    if isinstance(text, bytes):
        text = _decode_manifest(text, source)
    root = _compose(text, source)
    data = _construct(root, source)
    problems = _schema_problems(data, root, source, schema)
    if problems:
        raise ManifestError(problems)
    return _build(data, source, base_dir)


def inline_rows(job: JobSpec, *, source: str) -> Iterator[Row]:
    """The job's inline ``rows`` as Rows, numbered from 1."""
    prefix = _job_prefix(source, job)
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
    Problems that spoil the whole file (not UTF-8, a malformed record, a missing column)
    end the stream; a bad row yields a Problem in its place and the stream goes on.
    The caller sets ``csv.field_size_limit`` (it is process-wide).
    """
    if job.csv is None:
        raise ValueError(f"job {job.number} has no rows_from")
    spec = job.csv
    prefix = _job_prefix(source, job)
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
                yield Row(
                    job=job.number,
                    technique=job.technique,
                    number=number,
                    csv_line=start,
                    key=record[key_index] if key_index is not None else None,
                    values=MappingProxyType(
                        {**job.constants, **{input_id: record[i] for input_id, i in picks.items()}}
                    ),
                    location=location,
                )
            number += 1
    except _BadCsv as error:
        yield Problem(f"{prefix}, {spec.display} line {error.line}", error.message)
        return
    if number == first_number:
        yield Problem(f"{prefix}, {spec.display}", "has a header but no rows", severity="warning")


# --- YAML -------------------------------------------------------------------------------


def _decode_manifest(data: bytes, source: str) -> str:
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8) :]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        message = _not_utf8_message(data[error.start])
        raise ManifestError([Problem(f"{source}: line {line}", message)]) from None


def _compose(text: str, source: str) -> yaml.Node:
    """The YAML node tree, after refusing aliases, anchors and absurd nesting."""
    try:
        _scan_events(text, source)
        root = yaml.compose(text, Loader=_Loader)
    except yaml.MarkedYAMLError as error:
        where = _at_mark(source, error.problem_mark or error.context_mark)
        what = " ".join(part for part in (error.context, error.problem) if part)
        raise ManifestError([Problem(where, f"YAML syntax error: {what}")]) from None
    except yaml.YAMLError as error:
        raise ManifestError([Problem(source, f"YAML error: {error}")]) from None
    if root is None:
        raise ManifestError([Problem(source, "the manifest is empty; see jobs.example.yaml")])
    return root


def _scan_events(text: str, source: str) -> None:
    """Refuse aliases, anchors and deep nesting before anything is built from the text."""
    depth = 0
    for event in yaml.parse(text, Loader=_Loader):
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            message = "YAML anchors and aliases (&name, *name) are not supported; write it out"
            raise ManifestError([Problem(_at_mark(source, event.start_mark), message)])
        if isinstance(event, _OPENERS):
            depth += 1
            if depth > MAX_NESTING:
                message = f"nested more than {MAX_NESTING} levels deep"
                raise ManifestError([Problem(_at_mark(source, event.start_mark), message)])
        elif isinstance(event, _CLOSERS):
            depth -= 1


def _construct(root: yaml.Node, source: str) -> Any:
    problems = list(_key_problems(root, source))
    if problems:
        raise ManifestError(problems)
    try:
        data = yaml.constructor.SafeConstructor().construct_document(root)
    except yaml.constructor.ConstructorError as error:
        message = f"YAML error: {error.problem}; floraq reads plain YAML only (no !!tags)"
        raise ManifestError([Problem(_at_mark(source, error.problem_mark), message)]) from None
    if not isinstance(data, dict):
        raise ManifestError(
            [Problem(source, f"the manifest must be a mapping (key: value), not {_describe(data)}")]
        )
    return data


def _key_problems(root: yaml.Node, source: str) -> Iterator[Problem]:
    """Mapping keys must be plain, unique text: YAML would otherwise keep the last silently."""
    stack = [root]
    while stack:
        node = stack.pop()
        if isinstance(node, yaml.SequenceNode):
            stack.extend(node.value)
        elif isinstance(node, yaml.MappingNode):
            seen: set[str] = set()
            for key, value in node.value:
                at = _at_mark(source, key.start_mark)
                if not isinstance(key, yaml.ScalarNode):
                    yield Problem(at, "a key must be plain text, not a list or mapping")
                elif key.tag != _STR_TAG:
                    yield Problem(at, f"key {key.value!r} is not read as text; quote it")
                elif key.value in seen:
                    yield Problem(at, f"duplicate key '{key.value}'; YAML would keep only the last")
                else:
                    seen.add(key.value)
                stack.append(value)


def _at_mark(source: str, mark: Any) -> str:
    """``jobs.yaml: line 3, column 7`` from a YAML mark (0-based inside)."""
    if mark is None:
        return source
    return f"{source}: line {mark.line + 1}, column {mark.column + 1}"


def _line_of(root: yaml.Node, path: Sequence[str | int]) -> int:
    """The 1-based line of the node at ``path`` (or of its nearest ancestor)."""
    node = root
    for step in path:
        child: yaml.Node | None = None
        if isinstance(node, yaml.MappingNode):
            child = next((v for k, v in node.value if k.value == step), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(step, int):
            child = node.value[step] if step < len(node.value) else None
        if child is None:
            break
        node = child
    return int(node.start_mark.line) + 1


# --- schema -----------------------------------------------------------------------------


def _schema_problems(
    data: dict[str, Any], root: yaml.Node, source: str, schema: Mapping[str, Any]
) -> list[Problem]:
    version = data.get("version", MANIFEST_VERSION)
    if type(version) is not int or version != MANIFEST_VERSION:
        shown = version if type(version) is int else repr(version)
        message = f"unknown manifest version {shown}; this floraq reads version {MANIFEST_VERSION}"
        return [Problem(f"{source}: version (line {_line_of(root, ['version'])})", message)]
    validator = jsonschema.Draft202012Validator(schema)
    located: list[tuple[int, Problem]] = []
    for error in validator.iter_errors(data):
        for path, message in _messages(error, list(error.absolute_path)):
            line = _line_of(root, path)
            where = f"{source}: {_describe_path(data, path)} (line {line})" if path else source
            located.append((line, Problem(where, message)))
    located.extend(_conflict_problems(data, root, source))
    max_cost = data.get("max_cost")
    if isinstance(max_cost, float) and not math.isfinite(max_cost):
        line = _line_of(root, ["max_cost"])
        located.append((line, Problem(f"{source}: max_cost (line {line})", "must be finite")))
    return [problem for _, problem in sorted(set(located))]


def _messages(
    error: jsonschema.ValidationError, path: list[str | int]
) -> Iterator[tuple[list[str | int], str]]:
    """Plain-language messages for one schema error, each with the path it is about."""
    kind, expected, instance = error.validator, error.validator_value, error.instance
    custom = _custom_message(error.schema, str(kind))
    if kind == "required":
        for name in expected:
            if name not in instance:
                yield path, f"missing required key '{name}'"
    elif kind == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        for name in instance:
            if name not in allowed:
                close = difflib.get_close_matches(name, allowed, n=1)
                hint = f"did you mean '{close[0]}'?" if close else f"allowed: {', '.join(allowed)}"
                yield [*path, name], f"unknown key '{name}'; {hint}"
    elif custom and kind == "type":
        yield path, f"{custom} (got {_describe(instance)})"
    elif custom:
        yield path, custom
    elif kind == "type":
        yield path, f"must be {_TYPE_WORDS.get(str(expected), expected)}, not {_describe(instance)}"
    elif kind == "minimum":
        yield path, f"must be at least {expected} (got {instance})"
    elif kind == "maximum":
        yield path, f"must be at most {expected} (got {instance})"
    elif kind in ("minItems", "minLength"):
        yield path, "must not be empty"
    else:
        yield path, error.message


def _custom_message(schema: Any, keyword: str) -> str | None:
    """The schema's own wording: ``errorMessage`` as text, or per keyword as a mapping."""
    custom = schema.get("errorMessage") if isinstance(schema, Mapping) else None
    if isinstance(custom, Mapping):
        custom = custom.get(keyword)
    return custom if isinstance(custom, str) else None


_TYPE_WORDS = {
    "string": "text",
    "integer": "a whole number",
    "number": "a number",
    "object": "a mapping (key: value)",
    "array": "a list (- item)",
}


def _describe(value: object) -> str:
    """How a YAML value reads in a message: its kind, and the value when it is short."""
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, int | float):
        return f"a number ({value})"
    if isinstance(value, str):
        return f"text ({value!r})" if len(value) <= 40 else "text"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return f"a {type(value).__name__} ({value})"


def _describe_path(data: Mapping[str, Any], path: Sequence[str | int]) -> str:
    """``['jobs', 1, 'rows', 0, 'x']`` -> ``job 2 (product-shot), row 1, field 'x'``."""
    if len(path) < 2 or path[0] != "jobs" or not isinstance(path[1], int):
        return ".".join(str(step) for step in path)
    job = data["jobs"][path[1]]
    technique = job.get("technique") if isinstance(job, dict) else None
    parts = [f"job {path[1] + 1}" + (f" ({technique})" if isinstance(technique, str) else "")]
    rest = list(path[2:])
    if len(rest) >= 2 and rest[0] == "rows" and isinstance(rest[1], int):
        parts.append(f"row {rest[1] + 1}")
        parts.extend(f"field '{step}'" for step in rest[2:3])
    elif rest:
        parts.append(".".join(str(step) for step in rest))
    return ", ".join(parts)


# --- building ---------------------------------------------------------------------------


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


def _conflict_problems(
    data: Mapping[str, Any], root: yaml.Node, source: str
) -> list[tuple[int, Problem]]:
    """An input set both by ``with`` and by a row is ambiguous: neither may silently win."""
    jobs = data.get("jobs")
    problems: list[tuple[int, Problem]] = []
    for index, job in enumerate(jobs if isinstance(jobs, list) else []):
        constants = job.get("with") if isinstance(job, dict) else None
        if not isinstance(constants, dict):
            continue
        rows = job.get("rows")
        places: list[list[str | int]] = [
            ["rows", number, input_id]
            for number, row in enumerate(rows if isinstance(rows, list) else [])
            if isinstance(row, dict)
            for input_id in row
        ]
        rows_from = job.get("rows_from")
        columns = rows_from.get("columns") if isinstance(rows_from, dict) else None
        if isinstance(columns, dict):
            places.extend(["rows_from", "columns", input_id] for input_id in columns)
        for place in places:
            if place[-1] in constants:
                path = ["jobs", index, *place]
                line = _line_of(root, path)
                where = f"{source}: {_describe_path(data, path)} (line {line})"
                message = f"'{place[-1]}' is also set by the job's `with`; set it in one place"
                problems.append((line, Problem(where, message)))
    return problems


def _job_prefix(source: str, job: JobSpec) -> str:
    return f"{source}: job {job.number} ({job.technique})"


# --- CSV --------------------------------------------------------------------------------


class _BadCsv(Exception):
    """The CSV cannot be read past ``line``; ends the stream with one Problem."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(line, message)
        self.line = line
        self.message = message


def _not_utf8_message(byte: int) -> str:
    return f"not UTF-8 (byte 0x{byte:02x}); re-save the file as UTF-8"


def _decode_lines(lines: Iterable[bytes]) -> Iterator[str]:
    """Decode line by line, so a bad byte is reported with its line number."""
    for number, raw in enumerate(lines, start=1):
        if number == 1 and raw.startswith(codecs.BOM_UTF8):
            raw = raw[len(codecs.BOM_UTF8) :]
        try:
            yield raw.decode("utf-8")
        except UnicodeDecodeError as error:
            raise _BadCsv(number, _not_utf8_message(raw[error.start])) from None


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
        if any(field.strip() for field in record):
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
