"""Export rows: the CSV columns and values, and the JSONL shape, from plain ledger views."""

from __future__ import annotations

import csv
import io
import json
from decimal import Decimal

from floraq.core.lifecycle import JobState
from floraq.export import Columns, csv_record, json_record, write_rows
from floraq.ledger import JobView, OutputRecord

URL = "https://storage.googleapis.com/demo/a.jpg"


def output(state: str = "downloaded", **extra: object) -> OutputRecord:
    values: dict[str, object] = {
        "job_id": 1,
        "output_id": "output_image",
        "type": "imageUrl",
        "url": "https://media.example/o.png?sig=1",
        "url_seen_at": 0.0,
        "state": state,
        "path": "/out/portrait-enhancer/k1/output_image.png",
        "bytes": 220,
        "sha256": "ab" * 32,
    }
    values.update(extra)
    return OutputRecord(**values)  # type: ignore[arg-type]


def view(**extra: object) -> JobView:
    values: dict[str, object] = {
        "id": 1,
        "batch": "b",
        "technique": "portrait-enhancer",
        "location": "jobs.yaml: job 1 (portrait-enhancer), row 1",
        "row_key": "k1",
        "inputs": {"input_image": URL},
        "attempt": 1,
        "state": JobState.DOWNLOADED,
        "run_id": "run_1",
        "error_code": None,
        "error_message": None,
        "request_id": "req_1",
        "estimated_cost": Decimal("0.05"),
        "charged_cost": Decimal("0.05"),
        "prior_charged_cost": Decimal("0"),
        "outputs": (output(),),
    }
    values.update(extra)
    return JobView(**values)  # type: ignore[arg-type]


def as_dict(columns: Columns, record: list[str]) -> dict[str, str]:
    return dict(zip(columns.header(), record, strict=True))


def test_header_puts_inputs_by_id_and_four_columns_per_output() -> None:
    """Inputs are columns named by their id; each output has path, sha256, bytes and url."""
    columns = Columns(inputs=("input_image", "style"), outputs=("output_image",))
    header = columns.header()
    assert header[:5] == ["batch", "technique", "row_key", "input_image", "style"]
    assert header[-4:] == [
        "output_image.path",
        "output_image.sha256",
        "output_image.bytes",
        "output_image.url",
    ]
    assert {"run_id", "status", "error_code", "request_id", "charged_cost"} <= set(header)


def test_input_named_like_a_floraq_column_is_prefixed() -> None:
    """An input called `status` would be ambiguous: it is written as `input.status`."""
    columns = Columns(inputs=("status",), outputs=())
    assert "input.status" in columns.header()
    assert columns.header().count("status") == 1


def test_downloaded_row_has_its_file_facts() -> None:
    """A downloaded row carries its run, request id, costs, and the file's path and sha256."""
    columns = Columns(inputs=("input_image",), outputs=("output_image",))
    row = as_dict(columns, csv_record(view(), columns))
    assert row["input_image"] == URL and row["run_id"] == "run_1"
    assert row["status"] == "downloaded" and row["request_id"] == "req_1"
    assert row["estimated_cost"] == "0.05" and row["charged_cost"] == "0.05"
    assert row["output_image.sha256"] == "ab" * 32 and row["output_image.bytes"] == "220"


def test_output_not_on_disk_exports_its_url_but_no_file() -> None:
    """A pending output has a URL but no path, sha256 or size yet."""
    columns = Columns(inputs=("input_image",), outputs=("output_image",))
    pending = view(state=JobState.COMPLETED, outputs=(output("pending"),))
    row = as_dict(columns, csv_record(pending, columns))
    assert row["output_image.path"] == row["output_image.sha256"] == ""
    assert row["output_image.url"].startswith("https://media.example/")


def test_failed_row_has_its_error_and_an_empty_charge_until_reported() -> None:
    """Error code and message are exported; an unreported charge is empty, not zero."""
    columns = Columns(inputs=("input_image",), outputs=("output_image",))
    failed = view(
        state=JobState.FAILED,
        error_code="model_timeout",
        error_message="too slow",
        charged_cost=None,
        outputs=(),
    )
    row = as_dict(columns, csv_record(failed, columns))
    assert (row["error_code"], row["error_message"]) == ("model_timeout", "too slow")
    assert row["charged_cost"] == "" and row["output_image.url"] == ""


def test_charged_cost_counts_earlier_attempts() -> None:
    """A retried row's charge includes what its earlier attempts were charged."""
    columns = Columns(inputs=(), outputs=())
    row = as_dict(columns, csv_record(view(prior_charged_cost=Decimal("0.05"), attempt=2), columns))
    assert row["charged_cost"] == "0.1" and row["attempt"] == "2"


def test_write_rows_csv_reads_back_with_awkward_values() -> None:
    """Commas, quotes, newlines and non-ASCII survive a CSV round trip."""
    prompt = 'a "poster", two lines\nand ü'
    columns = Columns(inputs=("prompt",), outputs=())
    stream = io.StringIO()
    count = write_rows([[view(inputs={"prompt": prompt})]], stream, fmt="csv", columns=columns)
    rows = list(csv.DictReader(io.StringIO(stream.getvalue())))
    assert count == 1 and rows[0]["prompt"] == prompt


def test_write_rows_jsonl_nests_inputs_and_outputs() -> None:
    """JSONL: one object per line, inputs as a mapping and outputs as a list."""
    stream = io.StringIO()
    write_rows([[view(), view(id=2, row_key="k2")]], stream, fmt="jsonl", columns=Columns((), ()))
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [line["row_key"] for line in lines] == ["k1", "k2"]
    assert lines[0]["inputs"] == {"input_image": URL}
    assert lines[0]["outputs"][0]["sha256"] == "ab" * 32
    assert json_record(view())["status"] == "downloaded"
