"""What the ledger hands out and takes in: plain frozen values, never database rows.

Rows become records through one generic mapping (``from_row``) driven by each record's
type hints, so a new column is a new field, not a fifth hand-written mapper. Money
columns hold integer micro-dollars (``<name>_micros``); records carry ``Decimal``.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from functools import cache
from typing import Any, TypedDict, TypeVar, cast

from floraq.core.lifecycle import JobState, OutputState
from floraq.core.money import ZERO, from_micros, to_micros

R = TypeVar("R")

# Record field -> the column that stores it, in micro-dollars.
MONEY_COLUMNS: dict[str, str] = {
    "estimated_cost": "estimated_micros",
    "charged_cost": "charged_micros",
    "prior_charged_cost": "prior_charged_micros",
    "max_cost": "max_cost_micros",
    "run_cost": "run_cost_micros",
}


class JobFields(TypedDict, total=False):
    """The columns a move or an update may set: mypy rejects a misspelled one."""

    run_id: str | None
    poll_url: str | None
    remote_status: str | None
    progress: float | None
    error_code: str | None
    error_message: str | None
    error_fields: str | None
    failure_tier: str | None
    request_id: str | None
    estimated_cost: Decimal | None
    charged_cost: Decimal | None
    auto_retries: int
    polls: int
    submitting_at: float | None
    submitted_at: float | None
    completed_at: float | None
    remote_created_at: int | None
    remote_completed_at: int | None
    remote_started_at: int | None
    attempt: int
    idempotency_key: str
    key_fingerprint: str | None


JOB_FIELDS: frozenset[str] = frozenset(JobFields.__annotations__)


def column_values(fields: Mapping[str, Any]) -> dict[str, Any]:
    """Job fields as columns and storable values (money to micro-dollars); checked at run time.

    mypy catches a misspelled field in typed callers; this catches the untyped ones.
    """
    unknown = set(fields) - JOB_FIELDS
    if unknown:
        raise ValueError(f"not job fields: {sorted(unknown)}")
    out: dict[str, Any] = {}
    for name, value in fields.items():
        if name in MONEY_COLUMNS:
            out[MONEY_COLUMNS[name]] = None if value is None else to_micros(Decimal(value))
        else:
            out[name] = value
    return out


@dataclass(frozen=True, slots=True)
class NewJob:
    """A validated row, ready to be queued."""

    batch: str
    technique: str
    job_number: int
    row_number: int
    csv_line: int | None
    location: str
    row_key: str
    inputs: Mapping[str, str]
    inputs_digest: str
    idempotency_key: str
    estimated_cost: Decimal


@dataclass(frozen=True, slots=True)
class JobRecord:
    """One job as the runner sees it."""

    id: int
    batch: str
    technique: str
    location: str
    row_key: str
    inputs: Mapping[str, str]
    inputs_digest: str
    attempt: int
    idempotency_key: str
    state: JobState
    run_id: str | None
    poll_url: str | None
    estimated_cost: Decimal | None
    charged_cost: Decimal | None
    submitting_at: float | None
    submitted_at: float | None
    completed_at: float | None
    auto_retries: int
    polls: int
    key_fingerprint: str | None = None  # of the API key the intent was committed under


@dataclass(frozen=True, slots=True)
class OutputRecord:
    job_id: int
    output_id: str
    type: str
    url: str
    url_seen_at: float
    state: OutputState
    path: str | None
    bytes: int | None
    sha256: str | None


@dataclass(frozen=True, slots=True)
class JobView:
    """One row as an export or a report shows it: inputs, run, error, costs, outputs."""

    id: int
    batch: str
    technique: str
    location: str
    row_key: str
    inputs: Mapping[str, str]
    attempt: int
    state: JobState
    run_id: str | None
    error_code: str | None
    error_message: str | None
    request_id: str | None
    estimated_cost: Decimal | None
    charged_cost: Decimal | None  # this attempt's charge; None while not reported
    prior_charged_cost: Decimal  # what earlier attempts of this row were charged
    outputs: tuple[OutputRecord, ...] = ()

    @property
    def total_charged(self) -> Decimal | None:
        """What this row has cost over every attempt; None if nothing is known yet."""
        if self.charged_cost is None and not self.prior_charged_cost:
            return None
        return (self.charged_cost or ZERO) + self.prior_charged_cost


@dataclass(frozen=True, slots=True)
class StoredFile:
    """An output the ledger says is on disk, with what it must hash to."""

    id: int
    job_id: int
    output_id: str
    path: str
    bytes: int | None
    sha256: str | None
    batch: str
    technique: str
    row_key: str
    location: str


@dataclass(frozen=True, slots=True)
class BatchRecord:
    """A batch's saved settings."""

    name: str
    manifest_path: str | None
    output_dir: str
    concurrency: int | None
    max_cost: Decimal | None
    retry_failed_runs: int
    created_at: float
    updated_at: float
    workspace_id: str | None = None  # where its local files are uploaded


def _money(raw: Any) -> Decimal | None:
    return None if raw is None else from_micros(int(raw))


def _converter(hint: Any) -> Callable[[Any], Any] | None:
    """How a column's raw value becomes the field's type (None: as stored)."""
    kind = hint
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        kind = next(a for a in typing.get_args(hint) if a is not type(None))
    if kind is Decimal:
        return _money
    if kind in (JobState, OutputState):
        return lambda raw: None if raw is None else kind(raw)
    if typing.get_origin(kind) is Mapping:
        return lambda raw: json.loads(raw) if isinstance(raw, str) else raw
    return None


@cache
def _plan(cls: Any) -> tuple[tuple[str, str, Callable[[Any], Any] | None], ...]:
    """(field, column, converter) for every field a row supplies."""
    hints = typing.get_type_hints(cls)
    return tuple(
        (f.name, MONEY_COLUMNS.get(f.name, f.name), _converter(hints[f.name]))
        for f in dataclasses.fields(cls)
        if f.name != "outputs"
    )


def from_row(cls: type[R], row: Mapping[str, Any], **extra: Any) -> R:
    """A record of type ``cls`` from a row that has a column for each of its fields."""
    keys = row.keys() if hasattr(row, "keys") else row
    values: dict[str, Any] = {}
    for name, column, convert in _plan(cast(Hashable, cls)):
        if column not in keys:
            continue  # a field with a default the query did not select
        raw = row[column]
        values[name] = convert(raw) if convert is not None else raw
    return cls(**values, **extra)
