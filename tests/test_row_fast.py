"""The short path for common rows (``FastRows``, ``RowKeyer``) gives the generic path's results.

Every row below goes both ways: through ``admission._RowCheck`` (short path when it may
answer) and through ``admission._checked`` alone (validation, local files, ``row_keys``).
The job, the problems and the files must be identical; and the short path must have
answered the plain rows, or this would test nothing.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from floraq.admission import _checked, _RowCheck
from floraq.core.keys import RowKeyer, idempotency_key, inputs_digest, row_keys
from floraq.core.manifest import JobSpec, Manifest, Row
from floraq.core.manifest_values import CsvSource
from floraq.core.row_fast import FastRows
from floraq.core.technique import Technique
from floraq.local_inputs import LocalFiles

TECH: dict[str, Any] = {
    "technique_id": "tech_mix",
    "name": "Mix",
    "run_cost": 0.05,
    "inputs": [
        {"id": "input_image", "name": "Image", "type": "imageUrl"},
        {"id": "prompt", "name": "Prompt", "type": "text"},
    ],
    "outputs": [{"id": "output_image", "name": "Output", "type": "imageUrl"}],
}
TECHNIQUE = Technique.from_api("mix-ü", TECH)
GOOD = "https://storage.googleapis.com/demo/a.jpg"
PNG = (
    b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + b"\x00\x00\x00\x10" * 2 + b"\x08\x02" + bytes(7)
)

# (input_image, prompt, key): plain ones first (the short path answers), then the tricky
TRICKY: list[tuple[Any, Any, str | None]] = [
    (GOOD, "a cat", None),
    (GOOD, "a cat", "SKU-1"),
    ("https://cdn.flora.ai/x/y.png?sig=a%20b&t=1#frag", 'ünïcødé 🐱 "quoted" \\ back', "k_2.x"),
    ("HTTPS://IK.IMAGEKIT.IO/a.jpg", "tabs\tand\nlines\r\n", None),
    ("https://Storage.GoogleAPIs.com./a.jpg", "  padded  ", None),
    ("https://bucket.s3.eu-west-1.amazonaws.com/k", "x" * 100_000, None),
    ("https://bucket.s3.eu-west-1.amazonaws.com/k", "x" * 100_001, None),  # long: a warning
    ("https://example.com/a.jpg", "off-list host", None),  # a warning
    ("http://storage.googleapis.com/a.jpg", "plain http", None),
    ("https://user:pw@storage.googleapis.com/a.jpg", "credentials", None),
    ("https://storage.googleapis.com:8443/a.jpg", "a port", None),
    ("https://[::1]/a.jpg", "brackets", None),
    ("https://storage.googleapis.com/a b.jpg", "whitespace", None),
    ("https://storage.googleapis.com/a\u3000b.jpg", "unicode whitespace", None),
    ("https:///a.jpg", "no host", None),
    ("https://cdn.flora.ai", "no path", None),
    ("https://cdn.flora.ai?x=1", "a query, no path", None),
    ("https://cdn.flora.ai#", "a bare fragment", None),
    ("https://cdn.flora.ai:443/x", "a port", None),
    ("https://cdn.flora.ai@evil.example/x", "user part", None),
    ("https://cdn.flora.ai/a\tb", "a tab", None),
    ("https://cdn.flora.ai/a\nb", "a newline", None),
    ("https://cdn.flora.ai/a\u00a0b", "no-break space", None),
    ("https://cdn.flora.ai/é", "unicode path", None),
    ("https://cdñ.flora.ai/x", "unicode host", None),
    ("http\u017f://cdn.flora.ai/x", "long s (matches (?i)s)", None),
    ("hTtPs://cdn.FLORA.ai./x", "mixed case, trailing dot", None),
    ("https://-.flora.ai/", "odd host", None),
    ("https://cdn_x.flora.ai/", "underscore", None),
    (" https://cdn.flora.ai/x", "leading space", None),
    ("https://cdn.flora.ai/x ", "trailing space", None),
    ("ftp://storage.googleapis.com/a.jpg", "ftp", None),
    ("https://" + "a" * 8200 + ".flora.ai/", "too long", None),
    ("https://cdn.flora.ai/\x07bell", "a control character", None),
    ("", "empty image", None),
    ("   ", "blank image", None),
    (GOOD, "", None),
    (GOOD, " \u00a0 ", None),
    (GOOD, "x\x85y", None),  # C1 control
    (GOOD, "ok", "bad key!"),
    (GOOD, "ok", ""),
    ("pic.png", "a local file", None),
    ("file://{dir}/pic.png", "a file:// URL", None),
    ("missing.png", "a missing local file", None),
    ("file://otherhost/pic.png", "a file on another host", None),
    (GOOD, 7, None),  # not a string
]


def _manifest(folder: Path) -> tuple[Manifest, JobSpec]:
    csv = CsvSource(path=folder / "rows.csv", display="rows.csv", columns={}, key=None)
    job = JobSpec(number=1, technique=TECHNIQUE.slug, constants={}, rows=(), csv=csv)
    manifest = Manifest(
        source="jobs.yaml",
        version=1,
        batch='night "1" ü',
        output_dir=folder / "out",
        concurrency=None,
        max_cost=None,
        retry_failed_runs=0,
        jobs=(job,),
        folder=folder,
    )
    return manifest, job


def _row(values: dict[str, Any], key: str | None, n: int) -> Row:
    at = f"jobs.yaml: job 1 ({TECHNIQUE.slug}), row {n} (rows.csv line {n + 1})"
    return Row(job=1, technique=TECHNIQUE.slug, number=n, csv_line=n + 1, key=key,
               values=values, location=at)  # fmt: skip


def _rows(folder: Path) -> list[Row]:
    rows = []
    for n, (image, prompt, key) in enumerate(TRICKY, start=1):
        values = {"input_image": image.replace("{dir}", str(folder)), "prompt": prompt}
        rows.append(_row(values, key, n))
    rows.append(_row({"input_image": GOOD}, None, 90))  # missing input
    rows.append(_row({"input_image": GOOD, "prompt": "a", "promt": "b"}, None, 91))  # unknown
    rows.append(_row({"input_image": GOOD, "promt": "b"}, None, 92))  # same size, wrong id
    return rows


def test_the_short_path_gives_the_generic_result(tmp_path: Path) -> None:
    (tmp_path / "pic.png").write_bytes(PNG)
    manifest, job = _manifest(tmp_path)
    check = _RowCheck(manifest, job, TECHNIQUE, LocalFiles())
    answered = 0
    for row in _rows(tmp_path):
        generic = _checked(manifest.batch, row, TECHNIQUE,
                           LocalFiles().row_files(row, TECHNIQUE, tmp_path))  # fmt: skip
        if check.fast.keys(row.values, row.key) is not None:
            answered += 1
        got = check(row)
        assert (got.job, got.errors, got.warnings, got.files) == (
            generic.job, generic.errors, generic.warnings, generic.files,
        ), row.location  # fmt: skip
    assert answered == 6 + 7  # the first six rows, and the seven fine odd URLs


def test_upload_remote_and_repeated_ids_take_the_generic_path() -> None:
    twice = replace(TECHNIQUE, inputs=TECHNIQUE.inputs[:1] * 2)  # from_api refuses this
    fast = FastRows(batch="b", technique=twice, remote=False)
    assert fast.keys({"input_image": GOOD}, None) is None
    remote = FastRows(batch="b", technique=TECHNIQUE, remote=True)
    assert remote.keys({"input_image": GOOD, "prompt": "p"}, None) is None


@pytest.mark.parametrize(
    "inputs",
    [
        {"b": "2", "a": "1"},
        {"prompt": 'ünïcødé "q" \\ \n\t 🐱', "input_image": GOOD},
        {"z": "", "é": "é", "A": "\u2028"},
    ],
)
def test_row_keyer_is_the_documented_formula(inputs: dict[str, str]) -> None:
    keyer = RowKeyer(batch="night ü", technique="mix", ids=inputs)
    got = keyer(inputs)
    payload = {"attempt": 1, "batch": "night ü", "inputs": inputs, "technique": "mix"}
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert got.idempotency_key == "fq1_" + hashlib.sha256(text.encode()).hexdigest()[:48]
    assert got.idempotency_key == idempotency_key(
        batch="night ü", technique="mix", inputs=inputs, attempt=1
    )
    assert got.inputs_digest == inputs_digest(inputs)
    assert got == row_keys(batch="night ü", technique="mix", inputs=inputs)
