"""Manifests and CSV row sources: frozen values on success, every located problem on failure."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from pathlib import Path, PurePath

import jsonschema  # type: ignore[import-untyped]  # no stubs are installed
import pytest

from floraq.core.manifest import (
    CsvSource,
    JobSpec,
    Manifest,
    Row,
    inline_rows,
    iter_csv_rows,
    parse_manifest,
)
from floraq.core.problems import Problem
from floraq.errors import ExitCode, ManifestError
from floraq.manifest_files import iter_job_rows, load_manifest, manifest_schema

BASE = PurePath("/work/batches")
EXAMPLE = Path(__file__).resolve().parents[1] / "jobs.example.yaml"
MINIMAL = (
    "version: 1\nbatch: b1\njobs:\n  - technique: poster-maker\n    rows:\n      - prompt: hi\n"
)


def parse(text: str | bytes) -> Manifest:
    return parse_manifest(text, source="jobs.yaml", base_dir=BASE, schema=manifest_schema())


def problems_of(text: str | bytes) -> list[str]:
    with pytest.raises(ManifestError) as caught:
        parse(text)
    return [str(problem) for problem in caught.value.problems]


def test_shipped_schema_is_valid_draft_2020_12() -> None:
    """Editors and other tools can use the schema as it ships."""
    jsonschema.Draft202012Validator.check_schema(manifest_schema())


def test_minimal_manifest_gets_defaults() -> None:
    """output_dir defaults to outputs beside the manifest, one automatic retry, no caps."""
    assert parse(MINIMAL) == Manifest(
        source="jobs.yaml",
        version=1,
        batch="b1",
        output_dir=BASE / "outputs",
        concurrency=None,
        max_cost=None,
        retry_failed_runs=1,
        jobs=(JobSpec(1, "poster-maker", {}, ({"prompt": "hi"},), None),),
    )


def test_example_manifest_loads_with_paths_beside_it() -> None:
    """The shipped example is valid; relative paths resolve against its folder."""
    manifest = load_manifest(EXAMPLE)
    assert (manifest.batch, manifest.concurrency, manifest.max_cost) == ("example", 4, 5.0)
    assert manifest.output_dir == EXAMPLE.parent / "outputs"
    assert [(job.technique, len(job.rows)) for job in manifest.jobs] == [
        ("portrait-enhancer", 3),
        ("poster-maker", 2),
        ("product-shot", 0),
    ]
    assert manifest.jobs[2].constants == {"style": "studio"}
    assert manifest.jobs[2].csv == CsvSource(
        path=EXAMPLE.parent / "examples" / "products.csv",
        display="examples/products.csv",
        columns={"input_image": "image_url"},
        key="sku",
    )


def test_example_rows_stream_from_the_csv() -> None:
    """The example's CSV job yields 4 keyed rows with the constant merged in."""
    manifest = load_manifest(EXAMPLE)
    rows = list(iter_job_rows(manifest, manifest.jobs[2], input_ids=["input_image", "style"]))
    assert [(r.key, r.csv_line) for r in rows if isinstance(r, Row)] == [
        ("mug-001", 2),
        ("lamp-014", 3),
        ("tote-203", 4),
        ("vase-310", 5),
    ]
    assert rows[0] == Row(
        job=3,
        technique="product-shot",
        number=1,
        csv_line=2,
        key="mug-001",
        values={
            "style": "studio",
            "input_image": "https://storage.googleapis.com/floraq-demo/products/mug-001.jpg",
        },
        location=f"{EXAMPLE}: job 3 (product-shot), row 1 (examples/products.csv line 2)",
    )


def test_inline_rows_merge_constants() -> None:
    """Inline rows are numbered from 1 and carry the job's `with` values."""
    job = JobSpec(2, "product-shot", {"style": "studio"}, ({"input_image": "u1"},), None)
    assert list(inline_rows(job, source="jobs.yaml")) == [
        Row(2, "product-shot", 1, None, None, {"style": "studio", "input_image": "u1"},
            "jobs.yaml: job 2 (product-shot), row 1"),
    ]  # fmt: skip


def test_all_problems_are_reported_at_once() -> None:
    """One ManifestError (exit 2) carries every problem, in file order."""
    text = """version: 1
batch: "bad name!"
concurency: 8
max_cost: -1
jobs:
  - technique: portrait-enhancer
    rows:
      - input_image: [12]
  - technique: product-shot
    with: {style: studio}
    rows:
      - style: dark
"""
    with pytest.raises(ManifestError) as caught:
        parse(text)
    assert caught.value.exit_code == ExitCode.USAGE
    assert [str(p) for p in caught.value.problems] == [
        "jobs.yaml: batch (line 2): must be a name of letters, digits, '.', '_' and '-', "
        "starting with a letter or digit, at most 100 characters",
        "jobs.yaml: concurency (line 3): unknown key 'concurency'; did you mean 'concurrency'?",
        "jobs.yaml: max_cost (line 4): must be at least 0 (got -1)",
        "jobs.yaml: job 1 (portrait-enhancer), row 1, field 'input_image' (line 8): "
        "must be a string; quote it (got a list)",
        "jobs.yaml: job 2 (product-shot), row 1, field 'style' (line 12): "
        "'style' is also set by the job's `with`; set it in one place",
    ]
    assert str(caught.value).endswith("(and 4 more)")


JOB = "jobs:\n  - technique: t\n    rows:\n      - a: x\n"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("version: 2\nbatch: b\n" + JOB,
         "jobs.yaml: version (line 1): unknown manifest version 2; this floraq reads version 1"),
        ("version: '1'\nbatch: b\n" + JOB,
         "jobs.yaml: version (line 1): unknown manifest version '1'; this floraq reads version 1"),
        ("batch: b\n" + JOB, "jobs.yaml: missing required key 'version'"),
        ("version: 1\nbatch: b\nconcurrency: 0\n" + JOB,
         "jobs.yaml: concurrency (line 3): must be at least 1 (got 0)"),
        ("version: 1\nbatch: b\nconcurrency: 65\n" + JOB,
         "jobs.yaml: concurrency (line 3): must be at most 64 (got 65)"),
        ("version: 1\nbatch: b\nconcurrency: '8'\n" + JOB,
         "jobs.yaml: concurrency (line 3): must be a whole number, not text ('8')"),
        ("version: 1\nbatch: b\nretry_failed_runs: yes\n" + JOB,
         "jobs.yaml: retry_failed_runs (line 3): must be a whole number, not a boolean (true)"),
        ("version: 1\nbatch: b\nmax_cost: .nan\n" + JOB,
         "jobs.yaml: max_cost (line 3): must be finite"),
        ("version: 1\nbatch: b\njobs: []\n", "jobs.yaml: jobs (line 3): must not be empty"),
        ("version: 1\nbatch: b\njobs:\n  - technique: t\n",
         "jobs.yaml: job 1 (t) (line 4): a job needs `rows`, `rows_from`, or both"),
        ("version: 1\nbatch: b\njobs:\n  - technique: t\n    rows_from: {key: id}\n",
         "jobs.yaml: job 1 (t), rows_from (line 5): missing required key 'csv'"),
        ("version: 1\nbatch: b\njobs:\n  - technique: t\n    with: {style: 2026-01-31}\n"
         "    rows: [{a: x}]\n",
         "jobs.yaml: job 1 (t), with.style (line 5): "
         "must be a string; quote it (got a date (2026-01-31))"),
        ("version: 1\nbatch: b\njobs:\n  - technique: t\n    rows:\n      - a:\n",
         "jobs.yaml: job 1 (t), row 1, field 'a' (line 6): "
         "must be a string; quote it (got nothing (null))"),
        ("version: 1\nbatch: b\njobs:\n  - technique: t\n    with: {s: x}\n"
         "    rows_from: {csv: a.csv, columns: {s: col}}\n",
         "jobs.yaml: job 1 (t), rows_from.columns.s (line 6): "
         "'s' is also set by the job's `with`; set it in one place"),
        ("version: 1\nbatch: b\njobs:\n  - technique: ../x\n    rows: [{a: x}]\n",
         "jobs.yaml: job 1 (../x), technique (line 4): "
         "must be a technique slug (letters, digits, '.', '_' and '-')"),
    ],
)  # fmt: skip
def test_schema_problems(text: str, problem: str) -> None:
    """Each schema rule is reported in plain words at its place in the file."""
    assert problems_of(text) == [problem]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "jobs.yaml: the manifest is empty; see jobs.example.yaml"),
        ("# only a comment\n", "jobs.yaml: the manifest is empty; see jobs.example.yaml"),
        ("- a\n- b\n", "jobs.yaml: the manifest must be a mapping (key: value), not a list"),
        ("version: 1\nbatch: [x\n",
         "jobs.yaml: line 3, column 1: YAML syntax error: "
         "while parsing a flow sequence did not find expected ',' or ']'"),
        ("a: 1\n---\nb: 2\n",
         "jobs.yaml: line 2, column 1: YAML syntax error: "
         "expected a single document in the stream but found another document"),
        ("version: 1\nbatch: !!python/object/apply:os.system [echo hi]\n",
         "jobs.yaml: line 2, column 8: YAML error: could not determine a constructor for the tag "
         "'tag:yaml.org,2002:python/object/apply:os.system'; "
         "floraq reads plain YAML only (no !!tags)"),
        ("a: &x [1, 2]\nb: *x\n",
         "jobs.yaml: line 1, column 4: YAML anchors and aliases (&name, *name) are not supported; "
         "write it out"),
        ("version: 1\nversion: 1\n",
         "jobs.yaml: line 2, column 1: duplicate key 'version'; YAML would keep only the last"),
        ("version: 1\n1: x\n",
         "jobs.yaml: line 2, column 1: key '1' is not read as text; quote it"),
        ("[" * 30 + "]" * 30, "jobs.yaml: line 1, column 21: nested more than 20 levels deep"),
        (b"version: 1\nbatch: caf\xe9\n",
         "jobs.yaml: line 2: not UTF-8 (byte 0xe9); re-save the file as UTF-8"),
    ],
)  # fmt: skip
def test_unreadable_yaml(text: str | bytes, problem: str) -> None:
    """Empty, malformed, unsafe or ambiguous YAML is a located problem, not a traceback."""
    assert problems_of(text) == [problem]


def test_alias_bomb_is_refused_quickly() -> None:
    """A billion-laughs document is refused at its first anchor, without expanding it."""
    lines = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 12)]
    started = time.perf_counter()
    assert problems_of("\n".join(lines)) == [
        "jobs.yaml: line 1, column 5: YAML anchors and aliases (&name, *name) are not supported; "
        "write it out"
    ]
    assert time.perf_counter() - started < 1.0


def test_bytes_with_bom_and_crlf_parse() -> None:
    """A manifest saved by a Windows editor reads the same."""
    assert parse(b"\xef\xbb\xbf" + MINIMAL.replace("\n", "\r\n").encode()) == parse(MINIMAL)


# --- CSV ---------------------------------------------------------------------------------

CSV_JOB = JobSpec(
    number=2,
    technique="product-shot",
    constants={"style": "studio"},
    rows=({"input_image": "https://a"},),
    csv=CsvSource(PurePath("/x/p.csv"), "exports/p.csv", {"input_image": "image_url"}, "sku"),
)
WHERE = "jobs.yaml: job 2 (product-shot)"


def csv_rows(
    data: bytes, job: JobSpec = CSV_JOB, input_ids: list[str] | None = None
) -> list[Row | Problem]:
    lines = io.BytesIO(data)
    return list(iter_csv_rows(job, lines, source="jobs.yaml", first_number=2, input_ids=input_ids))


def test_csv_rows_are_located_by_physical_line() -> None:
    """BOM, CRLF, blank lines, a quoted newline: numbers follow the file as an editor shows it."""
    data = (
        b'\xef\xbb\xbfsku,image_url,title\r\n'
        b"A1,https://u/1.jpg,plain\r\n"
        b"\r\n"
        b',,\r\n'
        b'B2,https://u/2.jpg,"two\r\nlines, and ""quotes"""\r\n'
        b"C3,https://u/3.jpg,caf\xc3\xa9\r\n"
    )  # fmt: skip
    rows = csv_rows(data)
    assert [(r.number, r.csv_line, r.key) for r in rows if isinstance(r, Row)] == [
        (2, 2, "A1"),
        (3, 5, "B2"),
        (4, 7, "C3"),
    ]
    assert rows[2] == Row(
        job=2,
        technique="product-shot",
        number=4,
        csv_line=7,
        key="C3",
        values={"style": "studio", "input_image": "https://u/3.jpg"},
        location=f"{WHERE}, row 4 (exports/p.csv line 7)",
    )


def test_csv_same_name_columns_feed_inputs() -> None:
    """Given the technique's inputs, unmapped columns of the same name are read; others ignored."""
    job = JobSpec(1, "t", {}, (), CsvSource(PurePath("/x/p.csv"), "p.csv", {}, None))
    rows = csv_rows(b"prompt,notes,seed\nhello,ignore me,7\n", job, input_ids=["prompt", "seed"])
    assert [r.values for r in rows if isinstance(r, Row)] == [{"prompt": "hello", "seed": "7"}]
    rows = csv_rows(b"prompt,notes\nhello,ignore me\n", job)
    assert [r.values for r in rows if isinstance(r, Row)] == [{}]


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"sku,image,title\nA1,https://u/1.jpg,x\n",
         f"{WHERE}, exports/p.csv line 1: column 'image_url' (for input 'input_image') is not in "
         "the header: 'sku', 'image', 'title'"),
        (b"sku,image_url,image_url\nA1,u,v\n",
         f"{WHERE}, exports/p.csv line 1: column 'image_url' (for input 'input_image') appears "
         "2 times in the header"),
        (b"sku,image_url,style\nA1,u,v\n",
         f"{WHERE}, exports/p.csv line 1: column 'style' and the job's `with` both set 'style'; "
         "set it in one place"),
        (b"", f"{WHERE}, exports/p.csv: the file is empty; expected a header line, then one line "
         "per row"),
        (b'sku,image_url\nA1,"https://u/1.jpg\n',
         f"{WHERE}, exports/p.csv line 2: the file ends inside a quoted field; "
         "is a quote left open?"),
        (b'sku,image_url\nA1,"u"x\n',
         f"{WHERE}, exports/p.csv line 2: malformed CSV: ',' expected after '\"'"),
    ],
)  # fmt: skip
def test_csv_file_problems(data: bytes, problem: str) -> None:
    """Problems that spoil the whole file end the stream with one located message."""
    rows = csv_rows(data, input_ids=["input_image", "style"])
    assert [str(r) for r in rows] == [problem]


def test_csv_with_semicolons_gets_a_hint() -> None:
    """Every missing column is named, and the header suggests the wrong separator."""
    header = "the header: 'sku;image_url' (floraq reads comma-separated files)"
    assert [str(r) for r in csv_rows(b"sku;image_url\nA1;https://u/1.jpg\n")] == [
        f"{WHERE}, exports/p.csv line 1: column 'image_url' (for input 'input_image') "
        f"is not in {header}",
        f"{WHERE}, exports/p.csv line 1: column 'sku' (the key column) is not in {header}",
    ]


def test_csv_not_utf8_is_located_after_the_good_rows() -> None:
    """Rows before a bad byte still come; the bad line is named with the byte."""
    rows = csv_rows(b"sku,image_url\nA1,https://u/1.jpg\nB2,caf\xe9\nC3,https://u/3.jpg\n")
    assert [r.key if isinstance(r, Row) else str(r) for r in rows] == [
        "A1",
        f"{WHERE}, exports/p.csv line 3: not UTF-8 (byte 0xe9); re-save the file as UTF-8",
    ]


def test_csv_bad_rows_are_reported_and_skipped() -> None:
    """A short row, a long row and an empty key each become a Problem; numbering continues."""
    data = b"sku,image_url\nA1\nB2,u,extra\n,u\nD4,u,,\n"
    rows = csv_rows(data)
    assert [r.key if isinstance(r, Row) else str(r) for r in rows] == [
        f"{WHERE}, row 2 (exports/p.csv line 2): has 1 fields but the header has 2",
        f"{WHERE}, row 3 (exports/p.csv line 3): has 3 fields but the header has 2; "
        "quote values that contain commas",
        f"{WHERE}, row 4 (exports/p.csv line 4): the key column 'sku' is empty; "
        "every row needs a key",
        "D4",
    ]


def test_csv_with_only_a_header_is_an_error() -> None:
    """A header without rows is an error: a job with no work is almost always a mistake."""
    assert csv_rows(b"sku,image_url\n\n  \n") == [
        Problem(
            f"{WHERE}, exports/p.csv",
            "has a header but no rows; add rows below the header, or remove the job",
        )
    ]


def test_csv_streams_without_reading_ahead() -> None:
    """Rows come while the source is still being read: a million-row file is never held."""
    pulled = 0

    def lines() -> Iterator[bytes]:
        nonlocal pulled
        yield b"sku,image_url\n"
        for number in range(1_000_000):
            pulled += 1
            yield f"k{number},https://u/{number}.jpg\n".encode()

    rows = iter_csv_rows(CSV_JOB, lines(), source="jobs.yaml", first_number=1)
    first = [next(rows) for _ in range(3)]
    assert [r.key for r in first if isinstance(r, Row)] == ["k0", "k1", "k2"]
    assert pulled <= 4


# --- files -------------------------------------------------------------------------------


def test_missing_manifest_file(tmp_path: Path) -> None:
    """A missing manifest is a ManifestError naming the path."""
    with pytest.raises(ManifestError) as caught:
        load_manifest(tmp_path / "nope.yaml")
    assert str(caught.value) == f"{tmp_path / 'nope.yaml'}: no such file"


def test_missing_csv_is_a_problem_at_rows_from(tmp_path: Path) -> None:
    """Inline rows still come; the missing CSV is reported at the job's rows_from.csv."""
    manifest_path = tmp_path / "jobs.yaml"
    manifest_path.write_text(
        "version: 1\nbatch: b\njobs:\n  - technique: t\n    rows: [{a: x}]\n"
        "    rows_from: {csv: data/rows.csv}\n"
    )
    manifest = load_manifest(manifest_path)
    items = list(iter_job_rows(manifest, manifest.jobs[0]))
    assert isinstance(items[0], Row)
    assert items[1:] == [
        Problem(
            f"{manifest_path}: job 1 (t), rows_from.csv",
            f"no such file: data/rows.csv (looked at {tmp_path / 'data' / 'rows.csv'})",
        )
    ]


def test_ten_megabyte_field_is_read(tmp_path: Path) -> None:
    """A 10 MB prompt in a CSV cell reads whole (Python's default limit is 128 KiB)."""
    prompt = "x" * 10_000_000
    (tmp_path / "rows.csv").write_text(f'id,prompt\nr1,"{prompt}"\n')
    manifest_path = tmp_path / "jobs.yaml"
    manifest_path.write_text(
        "version: 1\nbatch: b\njobs:\n  - technique: t\n    rows_from: {csv: rows.csv, key: id}\n"
    )
    manifest = load_manifest(manifest_path)
    (row,) = iter_job_rows(manifest, manifest.jobs[0], input_ids=["prompt"])
    assert isinstance(row, Row) and row.key == "r1" and len(row.values["prompt"]) == 10_000_000
