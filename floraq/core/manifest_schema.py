"""Schema problems in plain language, each located at a line of the manifest.

Pure: the parsed values, their YAML nodes and the JSON Schema are handed in. Beyond the
schema, an input set both by a job's ``with`` and by its rows is refused here.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import jsonschema
import yaml

from floraq.core.manifest_values import MANIFEST_VERSION
from floraq.core.manifest_yaml import describe, line_of
from floraq.core.problems import Problem


def schema_problems(
    data: dict[str, Any], root: yaml.Node, source: str, schema: Mapping[str, Any]
) -> list[Problem]:
    version = data.get("version", MANIFEST_VERSION)
    if type(version) is not int or version != MANIFEST_VERSION:
        shown = version if type(version) is int else repr(version)
        message = f"unknown manifest version {shown}; this floraq reads version {MANIFEST_VERSION}"
        return [Problem(f"{source}: version (line {line_of(root, ['version'])})", message)]
    validator = jsonschema.Draft202012Validator(schema)
    located: list[tuple[int, Problem]] = []
    for error in validator.iter_errors(data):
        for path, message in _messages(error, list(error.absolute_path)):
            line = line_of(root, path)
            where = f"{source}: {describe_path(data, path)} (line {line})" if path else source
            located.append((line, Problem(where, message)))
    located.extend(conflict_problems(data, root, source))
    max_cost = data.get("max_cost")
    if isinstance(max_cost, float) and not math.isfinite(max_cost):
        line = line_of(root, ["max_cost"])
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
        yield path, f"{custom} (got {describe(instance)})"
    elif custom:
        yield path, custom
    elif kind == "type":
        yield path, f"must be {_TYPE_WORDS.get(str(expected), expected)}, not {describe(instance)}"
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


def describe_path(data: Mapping[str, Any], path: Sequence[str | int]) -> str:
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


def conflict_problems(
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
                line = line_of(root, path)
                where = f"{source}: {describe_path(data, path)} (line {line})"
                message = f"'{place[-1]}' is also set by the job's `with`; set it in one place"
                problems.append((line, Problem(where, message)))
    return problems
