"""A batch's rows as CSV or JSONL: one line per row, to join with your own data.

A CSV export is also a valid ``rows_from.csv``: every input is a column named by its
input id, so a new manifest reads the rows back without a ``columns`` map, and
``key: row_key`` keeps the output folder names. Column order (CSV)::

    batch, technique, row_key, <input ids…>, attempt, run_id, status, error_code,
    error_message, request_id, estimated_cost, charged_cost,
    <output id>.path, <output id>.sha256, <output id>.bytes, <output id>.url  (per output)

An input id that would clash with one of these names is written as ``input.<id>``.
``charged_cost`` is what the row cost over every attempt, empty while FLORA has not
said; ``status`` is the job's state in the ledger.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import IO, Any, Literal

from floraq.core.lifecycle import OutputState
from floraq.core.money import as_json
from floraq.ledger import JobView

Format = Literal["csv", "jsonl"]
FORMATS: tuple[Format, ...] = ("csv", "jsonl")

LEADING = ("batch", "technique", "row_key")
TRAILING = (
    "attempt",
    "run_id",
    "status",
    "error_code",
    "error_message",
    "request_id",
    "estimated_cost",
    "charged_cost",
)
OUTPUT_FIELDS = ("path", "sha256", "bytes", "url")


@dataclass(frozen=True, slots=True)
class Columns:
    """Which inputs and outputs get columns (the union over every technique exported)."""

    inputs: tuple[str, ...]
    outputs: tuple[str, ...]

    def output_columns(self) -> list[str]:
        return [f"{o}.{name}" for o in self.outputs for name in OUTPUT_FIELDS]

    def input_column(self, input_id: str) -> str:
        """The input's own id, unless that would clash with a column floraq names."""
        reserved = {*LEADING, *TRAILING, *self.output_columns()}
        return f"input.{input_id}" if input_id in reserved else input_id

    def header(self) -> list[str]:
        inputs = [self.input_column(i) for i in self.inputs]
        return [*LEADING, *inputs, *TRAILING, *self.output_columns()]


def csv_record(view: JobView, columns: Columns) -> list[str]:
    """One CSV line's fields, in ``columns.header()`` order; absent values are empty."""
    fields = [view.batch, view.technique, view.row_key]
    fields += [view.inputs.get(i, "") for i in columns.inputs]
    fields += [
        str(view.attempt),
        view.run_id or "",
        view.state.value,
        view.error_code or "",
        view.error_message or "",
        view.request_id or "",
        _number(view.estimated_cost),
        _number(view.total_charged),
    ]
    by_id = {o.output_id: o for o in view.outputs}
    for output_id in columns.outputs:
        out = by_id.get(output_id)
        if out is None:
            fields += [""] * len(OUTPUT_FIELDS)
            continue
        on_disk = out.state == OutputState.DOWNLOADED
        fields += [
            (out.path or "") if on_disk else "",
            (out.sha256 or "") if on_disk else "",
            str(out.bytes) if on_disk and out.bytes is not None else "",
            out.url,
        ]
    return fields


def json_record(view: JobView) -> dict[str, Any]:
    """One JSONL line: the same facts as a CSV line, with inputs and outputs nested."""
    return {
        "batch": view.batch,
        "technique": view.technique,
        "row_key": view.row_key,
        "inputs": dict(view.inputs),
        "attempt": view.attempt,
        "run_id": view.run_id,
        "status": view.state.value,
        "error_code": view.error_code,
        "error_message": view.error_message,
        "request_id": view.request_id,
        "estimated_cost": _json(view.estimated_cost),
        "charged_cost": _json(view.total_charged),
        "outputs": [
            {
                "output_id": o.output_id,
                "type": o.type,
                "state": o.state,
                "path": o.path if o.state == OutputState.DOWNLOADED else None,
                "sha256": o.sha256 if o.state == OutputState.DOWNLOADED else None,
                "bytes": o.bytes if o.state == OutputState.DOWNLOADED else None,
                "url": o.url,
            }
            for o in view.outputs
        ],
    }


# A cell a spreadsheet would run as a formula ("formula injection"): =, +, - and @ start
# one, and tab or carriage return can hide one. FLORA's answers and a manifest's prompts
# are text from elsewhere, so a cell like `=HYPERLINK(...)` must not run when opened.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def excel_safe(field: str) -> str:
    """The field with a leading ``'`` if a spreadsheet would read it as a formula."""
    return "'" + field if field.startswith(FORMULA_STARTS) else field


def write_rows(
    pages: Iterable[Sequence[JobView]],
    stream: IO[str],
    *,
    fmt: Format,
    columns: Columns,
    spreadsheet_safe: bool = False,
) -> int:
    """Write the header (CSV) and every row of ``pages`` to ``stream``; returns the row count.

    ``spreadsheet_safe`` (CSV only) neutralises cells a spreadsheet would run as formulas;
    the file then no longer round-trips exactly as a ``rows_from.csv``.
    """
    count = 0
    if fmt == "csv":
        writer = csv.writer(stream, lineterminator="\n")
        writer.writerow(columns.header())
        for page in pages:
            for view in page:
                record = csv_record(view, columns)
                writer.writerow([excel_safe(f) for f in record] if spreadsheet_safe else record)
            count += len(page)
        return count
    for page in pages:
        for view in page:
            stream.write(json.dumps(json_record(view), ensure_ascii=False, sort_keys=True) + "\n")
        count += len(page)
    return count


def _number(value: Decimal | None) -> str:
    """An amount as CSV text: ``0.05``, ``1.0`` (the shortest text of the amount)."""
    return "" if value is None else repr(as_json(value))


def _json(value: Decimal | None) -> float | None:
    return None if value is None else as_json(value)
