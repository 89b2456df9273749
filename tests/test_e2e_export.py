"""End to end: `export`, the reprocessing round trip, `batches`, `verify` and re-downloads."""

from __future__ import annotations

import csv
import io
import json
import time
from pathlib import Path

from conftest import Floraq, sha256

from floraq.ledger.lean_rows import OUTPUT_PATH, OUTPUTS_JOINED
from floraq.sandbox import SandboxServer

IMG = "https://storage.googleapis.com/floraq-demo/{n}.jpg"


def mixed_batch(
    floraq: Floraq, *, batch: str = "src", rows: int = 4, output_dir: str = "outputs"
) -> Path:
    """`rows` portraits and two posters, one of which fails (model_timeout)."""
    return floraq.write_manifest(
        batch=batch,
        output_dir=output_dir,
        retry_failed_runs=0,
        jobs=[
            {
                "technique": "portrait-enhancer",
                "rows": [{"input_image": IMG.format(n=n)} for n in range(rows)],
            },
            {
                "technique": "poster-maker",
                "rows": [{"prompt": "a lighthouse"}, {"prompt": "[[fail:model_timeout]] a storm"}],
            },
        ],
    )


def exported(floraq: Floraq, *args: str) -> list[dict[str, str]]:
    done = floraq("export", *args)
    assert done.returncode == 0, done.stderr
    return list(csv.DictReader(io.StringIO(done.stdout)))


def test_export_has_one_line_per_row_with_run_error_cost_and_files(
    floraq: Floraq, sandbox: SandboxServer
) -> None:
    """Each line: inputs, run id, status, error, request id, costs, and the verified file."""
    assert floraq("submit", str(mixed_batch(floraq))).returncode == 1
    rows = exported(floraq, "--batch", "src")
    assert len(rows) == 6
    runs = {r["run_id"]: r for r in sandbox.runs()}
    for row in rows[:4]:
        assert row["status"] == "downloaded" and row["run_id"] in runs
        assert runs[row["run_id"]]["inputs"][0]["value"] == row["input_image"]
        assert sha256(Path(row["output_image.path"])) == row["output_image.sha256"]
        assert row["output_image.bytes"] == str(Path(row["output_image.path"]).stat().st_size)
        assert row["request_id"].startswith("req_") and row["charged_cost"] == "0.05"
    failed = rows[5]
    assert (failed["status"], failed["error_code"]) == ("failed", "model_timeout")
    assert failed["prompt"] == "[[fail:model_timeout]] a storm" and failed["poster.path"] == ""


def test_export_round_trip_reprocesses_every_row_with_another_technique(
    floraq: Floraq, sandbox: SandboxServer
) -> None:
    """export -> a manifest with rows_from the export -> submit runs every row again."""
    assert floraq("submit", str(mixed_batch(floraq, rows=5))).returncode == 1
    done = floraq("export", "--technique", "portrait-enhancer", "-o", "exports/src.csv")
    assert done.returncode == 0, done.stderr
    manifest = floraq.write_manifest(
        "again.yaml",
        batch="captions",
        jobs=[
            {
                "technique": "caption-writer",
                "rows_from": {"csv": "exports/src.csv", "key": "row_key"},
            }
        ],
    )
    again = floraq("submit", str(manifest))
    assert again.returncode == 0, again.stderr
    captions = [r for r in sandbox.runs() if r["slug"] == "caption-writer"]
    assert sorted(r["inputs"][0]["value"] for r in captions) == [IMG.format(n=n) for n in range(5)]
    source = {r["row_key"] for r in floraq.query("SELECT row_key FROM jobs WHERE batch = 'src'")}
    assert {p.name for p in (floraq.cwd / "outputs" / "caption-writer").iterdir()} <= source


def test_export_jsonl_to_a_file_nests_inputs_and_outputs(
    floraq: Floraq, sandbox: SandboxServer
) -> None:
    """`--format jsonl -o FILE` writes one object per row and says so on stderr only."""
    assert floraq("submit", str(mixed_batch(floraq, rows=2))).returncode == 1
    done = floraq("export", "--format", "jsonl", "-o", "rows.jsonl")
    assert done.returncode == 0 and done.stdout == ""
    assert "exported 4 row(s) of src to rows.jsonl" in done.stderr
    lines = [json.loads(x) for x in (floraq.cwd / "rows.jsonl").read_text().splitlines()]
    assert [line["status"] for line in lines] == ["downloaded"] * 3 + ["failed"]
    assert lines[0]["outputs"][0]["sha256"] == sha256(Path(lines[0]["outputs"][0]["path"]))


def test_export_of_an_unknown_batch_is_a_usage_error(
    floraq: Floraq, sandbox: SandboxServer
) -> None:
    """A batch name not in the ledger: exit 2, naming the batches there are."""
    assert floraq("submit", str(mixed_batch(floraq, rows=1))).returncode == 1
    done = floraq("export", "--batch", "nope")
    assert done.returncode == 2
    assert "no batch 'nope' in the ledger" in done.stderr and "known: src" in done.stderr


def test_batches_lists_every_batch_with_counts_and_cost(
    floraq: Floraq, sandbox: SandboxServer
) -> None:
    """`batches --json`: each batch's rows per state, charged and estimated cost, activity."""
    assert floraq("submit", str(mixed_batch(floraq, rows=2))).returncode == 1
    other = mixed_batch(floraq, batch="second", rows=1, output_dir="outputs-second")
    assert floraq("submit", str(other)).returncode == 1
    done = floraq("batches", "--json")
    assert done.returncode == 0, done.stderr
    listed = {b["batch"]: b for b in json.loads(done.stdout)["batches"]}
    assert listed["src"]["states"] == {"downloaded": 3, "failed": 1}
    assert listed["second"]["rows"] == 3
    assert abs(listed["src"]["charged_cost"] - (2 * 0.05 + 0.08)) < 1e-9
    assert time.time() - listed["second"]["last_activity"] < 60
    table = floraq("batches").stdout
    assert table.splitlines()[1].startswith("src") and "second" in table


def test_verify_finds_missing_and_changed_files_and_resume_fetches_them(
    floraq: Floraq, sandbox: SandboxServer
) -> None:
    """verify exits 1 listing both; `resume --redownload-missing` restores the exact bytes."""
    assert floraq("submit", str(mixed_batch(floraq, rows=3))).returncode == 1
    files = floraq.query(
        f"SELECT {OUTPUT_PATH} AS path, o.sha256 FROM {OUTPUTS_JOINED} WHERE o.state = 'downloaded'"
    )
    gone, edited = Path(files[0]["path"]), Path(files[1]["path"])
    gone.unlink()
    edited.write_bytes(b"edited by hand")
    check = floraq("verify")
    assert check.returncode == 1
    assert f"missing: {gone}" in check.stdout and f"changed: {edited}" in check.stdout
    assert "4 file(s) checked: 1 missing, 1 changed" in check.stdout
    runs = sandbox.stats()["runs_created"]
    fixed = floraq("resume", "--redownload-missing")
    assert "redownload: 2 file(s) missing or changed" in fixed.stderr
    assert sha256(gone) == files[0]["sha256"] and sha256(edited) == files[1]["sha256"]
    assert floraq("verify").returncode == 0
    assert sandbox.stats()["runs_created"] == runs


def test_redownload_repolls_the_run_when_the_saved_url_has_expired(
    floraq: Floraq, sandbox: SandboxServer
) -> None:
    """A file lost after its URL expired comes back through a fresh URL from a re-poll."""
    sandbox.configure(url_ttl=0.5)
    manifest = floraq.write_manifest(
        batch="old",
        jobs=[{"technique": "portrait-enhancer", "rows": [{"input_image": IMG.format(n=1)}]}],
    )
    assert floraq("submit", str(manifest)).returncode == 0
    file = floraq.query(f"SELECT {OUTPUT_PATH} AS path, o.sha256 FROM {OUTPUTS_JOINED}")[0]
    Path(file["path"]).unlink()
    time.sleep(0.6)
    polls = sandbox.stats()["requests"]["GET /techniques/{slug}/runs/{run_id}"]
    done = floraq("resume", "--redownload-missing")
    assert done.returncode == 0, done.stderr
    assert sha256(Path(file["path"])) == file["sha256"]
    assert sandbox.stats()["requests"]["GET /techniques/{slug}/runs/{run_id}"] > polls


FORMULAS = ['=HYPERLINK("https://evil.test","open")', "+1+1", "-2+3", "@SUM(A1:A9)"]


def test_excel_safe_export_neutralises_formulas_and_the_default_keeps_them_exact(
    floraq: Floraq,
) -> None:
    """By default a prompt is exported as written (the round trip); --excel-safe quotes it."""
    manifest = floraq.write_manifest(
        batch="sheet",
        jobs=[{"technique": "poster-maker", "rows": [{"prompt": p} for p in FORMULAS]}],
    )
    assert floraq("submit", str(manifest)).returncode == 0
    exact = [r["prompt"] for r in exported(floraq, "--batch", "sheet")]
    assert exact == FORMULAS
    safe = [r["prompt"] for r in exported(floraq, "--batch", "sheet", "--excel-safe")]
    assert safe == ["'" + p for p in FORMULAS]
    refused = floraq("export", "--format", "jsonl", "--excel-safe")
    assert refused.returncode == 2
    assert refused.stderr.strip() == (
        "floraq: error: --excel-safe applies to CSV only (JSONL is not opened as a sheet)"
    )
