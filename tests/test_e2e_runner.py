"""End to end: the real CLI against the real sandbox over HTTP, as an operator uses it."""

from __future__ import annotations

import csv
import re
import signal
import time
from pathlib import Path

from conftest import Floraq, served_outputs, sha256, status_json

from floraq.ledger.lean_rows import OUTPUT_PATH
from floraq.sandbox import SandboxServer

IMG = "https://storage.googleapis.com/floraq-demo/{n}.jpg"


def three_technique_manifest(floraq: Floraq, rows: int, *, batch: str = "e2e") -> Path:
    """`rows` rows split over three techniques; the product-shot job reads a CSV."""
    per = rows // 3
    csv_path = floraq.cwd / "exports" / "products.csv"
    csv_path.parent.mkdir()
    with csv_path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["sku", "image_url", "note"])
        for n in range(rows - 2 * per):
            writer.writerow([f"SKU-{n:04d}", IMG.format(n=f"p{n}"), "ignored column"])
    return floraq.write_manifest(
        batch=batch,
        concurrency=8,
        jobs=[
            {
                "technique": "portrait-enhancer",
                "rows": [{"input_image": IMG.format(n=n)} for n in range(per)],
            },
            {
                "technique": "poster-maker",
                "rows": [{"prompt": f"a poster of lighthouse number {n}"} for n in range(per)],
            },
            {
                "technique": "product-shot",
                "with": {"style": "studio"},
                "rows_from": {
                    "csv": "exports/products.csv",
                    "columns": {"input_image": "image_url"},
                    "key": "sku",
                },
            },
        ],
    )


def test_batch_of_200_rows_downloads_every_output_verified(
    floraq: Floraq, sandbox: SandboxServer
) -> None:
    """200 rows over three techniques finish; every file matches what the sandbox served."""
    manifest = three_technique_manifest(floraq, 200)
    done = floraq("submit", str(manifest))
    assert done.returncode == 0, done.stderr
    served = served_outputs(sandbox)
    outputs = floraq.query(
        f"SELECT j.idempotency_key, o.output_id, {OUTPUT_PATH} AS path, o.sha256 FROM outputs o"
        " JOIN jobs j ON j.id = o.job_id JOIN batches b ON b.name = j.batch"
    )
    assert len(outputs) == 200 == len(served)
    for out in outputs:
        path = Path(out["path"])
        assert path.is_file() and not path.with_name(path.name + ".part").exists()
        assert (
            sha256(path) == out["sha256"] == served[f"{out['idempotency_key']}/{out['output_id']}"]
        )
    assert (floraq.cwd / "outputs" / "product-shot" / "SKU-0000").is_dir()
    report = status_json(floraq)["batches"]["e2e"]
    assert report["rows"] == 200 and report["states"] == {"downloaded": 200}
    assert sandbox.stats()["runs_created"] == 200


def test_second_submit_creates_no_run_and_downloads_nothing(
    floraq: Floraq, sandbox: SandboxServer
) -> None:
    """Submitting the same manifest again is free: 0 runs, 0 downloads."""
    manifest = three_technique_manifest(floraq, 30)
    assert floraq("submit", str(manifest)).returncode == 0
    before = sandbox.stats()
    again = floraq("submit", str(manifest))
    after = sandbox.stats()
    assert again.returncode == 0, again.stderr
    assert after["runs_created"] == before["runs_created"] == 30
    assert after["downloads"] == before["downloads"]
    assert after["requests"].get("POST /techniques/{slug}/runs", 0) == before["requests"].get(
        "POST /techniques/{slug}/runs", 0
    )


def test_row_added_later_is_submitted(floraq: Floraq, sandbox: SandboxServer) -> None:
    """A row added to the manifest since the last submit is the only new run."""
    rows = [{"input_image": IMG.format(n=n)} for n in range(3)]
    manifest = floraq.write_manifest(
        batch="grow", jobs=[{"technique": "portrait-enhancer", "rows": rows}]
    )
    assert floraq("submit", str(manifest)).returncode == 0
    rows.append({"input_image": IMG.format(n=99)})
    floraq.write_manifest(batch="grow", jobs=[{"technique": "portrait-enhancer", "rows": rows}])
    done = floraq("submit", str(manifest))
    assert done.returncode == 0, done.stderr
    assert "1 new row(s) queued" in done.stdout
    assert sandbox.stats()["runs_created"] == 4


def test_killed_halfway_then_resume_creates_each_run_once(
    floraq: Floraq, sandbox: SandboxServer
) -> None:
    """A batch killed (SIGKILL) after half its runs exist completes with `resume`."""
    manifest = three_technique_manifest(floraq, 60, batch="halfway")
    proc = floraq.start("submit", str(manifest))
    deadline = time.monotonic() + 60
    while sandbox.stats()["runs_created"] < 30 and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert sandbox.stats()["runs_created"] < 60
    done = floraq("resume")
    assert done.returncode == 0, done.stderr
    assert floraq.states() == {"downloaded": 60}
    assert sandbox.stats()["runs_created"] == 60
    assert len({r["idempotency_key"] for r in sandbox.runs()}) == 60


def test_five_different_errors_are_all_reported_and_nothing_is_sent(
    floraq: Floraq, sandbox: SandboxServer
) -> None:
    """Bad slug, missing input, http URL, wrong type and bad CSV column: all five, located."""
    (floraq.cwd / "rows.csv").write_text("sku,url\nA1,https://storage.googleapis.com/a.jpg\n")
    manifest = floraq.write_manifest(
        batch="broken",
        jobs=[
            {"technique": "no-such-technique", "rows": [{"input_image": IMG.format(n=1)}]},
            {"technique": "portrait-enhancer", "rows": [{}]},
            {
                "technique": "portrait-enhancer",
                "rows": [{"input_image": "http://example.com/a.jpg"}],
            },
            {"technique": "poster-maker", "rows": [{"prompt": 42}]},
            {
                "technique": "portrait-enhancer",
                "rows_from": {"csv": "rows.csv", "columns": {"input_image": "image_url"}},
            },
        ],
    )
    done = floraq("submit", str(manifest))
    assert done.returncode == 2, done.stderr
    err = done.stderr
    assert re.search(r"jobs\.yaml: job 1 \(no-such-technique\).*unknown technique", err)
    assert re.search(r"jobs\.yaml: job 2 \(portrait-enhancer\), row 1.*input_image", err)
    assert re.search(r"jobs\.yaml: job 3 \(portrait-enhancer\), row 1.*https://", err)
    assert re.search(r"jobs\.yaml: job 4 \(poster-maker\).*prompt.*string", err)
    assert re.search(r"rows\.csv.*image_url", err)
    assert "Traceback" not in err
    assert sandbox.stats()["runs_created"] == 0
    assert sandbox.stats()["requests"].get("POST /techniques/{slug}/runs", 0) == 0


def test_plan_prices_what_the_sandbox_then_charges(floraq: Floraq, sandbox: SandboxServer) -> None:
    """`plan` on jobs.example.yaml prints the total the sandbox charges for the batch."""
    example = Path(__file__).resolve().parent.parent / "jobs.example.yaml"
    (floraq.cwd / "jobs.example.yaml").write_text(example.read_text())
    examples = example.parent / "examples"
    (floraq.cwd / "examples").mkdir()
    for f in examples.iterdir():
        (floraq.cwd / "examples" / f.name).write_bytes(f.read_bytes())
    planned = floraq("plan", "jobs.example.yaml")
    assert planned.returncode == 0, planned.stdout + planned.stderr
    total = float(re.search(r"^total\s+\d+\s+([\d.]+)", planned.stdout, re.M).group(1))  # type: ignore[union-attr]
    assert sandbox.stats()["runs_created"] == 0
    done = floraq("submit", "jobs.example.yaml")
    assert done.returncode == 0, done.stderr
    assert abs(sandbox.stats()["charged_total"] - total) < 1e-6


def test_a_second_batch_may_not_overwrite_the_first_ones_outputs(
    floraq: Floraq, sandbox: SandboxServer
) -> None:
    """Same output_dir and row key in a new batch: exit 2, nothing sent, first file intact."""
    (floraq.cwd / "rows.csv").write_text("sku,prompt\nmug-001,a red mug\n")
    job = {"technique": "poster-maker", "rows_from": {"csv": "rows.csv", "key": "sku"}}
    first = floraq.write_manifest(batch="v1", jobs=[job])
    assert floraq("submit", str(first)).returncode == 0
    poster = next((floraq.cwd / "outputs" / "poster-maker" / "mug-001").iterdir())
    before = sha256(poster)
    (floraq.cwd / "rows.csv").write_text("sku,prompt\nmug-001,a blue mug\n")
    second = floraq.write_manifest("v2.yaml", batch="v2", jobs=[job])
    done = floraq("submit", str(second))
    assert done.returncode == 2, done.stderr
    assert (
        "its output folder poster-maker/mug-001 already holds the files of batch 'v1'"
        in done.stderr
    )
    assert sandbox.stats()["runs_created"] == 1 and sha256(poster) == before


def test_a_new_api_key_never_resends_an_old_keys_intent(
    floraq: Floraq, sandbox: SandboxServer
) -> None:
    """Killed after a POST, resumed with a rotated key: unknown outcome, one run, not two."""
    sandbox.configure(api_keys=[sandbox.api_key, "sk_test_rotated"])
    manifest = floraq.write_manifest(
        batch="rotate", jobs=[{"technique": "poster-maker", "rows": [{"prompt": "a fox"}]}]
    )
    crashed = floraq("submit", str(manifest), FLORAQ_CRASH_AT="after_post_before_commit")
    assert crashed.returncode == -signal.SIGKILL
    done = floraq("resume", FLORA_API_KEY="sk_test_rotated")
    assert done.returncode == 1, done.stderr
    assert floraq.states() == {"unknown_outcome": 1}
    assert floraq.query("SELECT error_code FROM jobs")[0]["error_code"] == "api_key_changed"
    assert sandbox.stats()["runs_created"] == 1


def test_plan_reports_what_submit_would_refuse_and_writes_nothing(
    floraq: Floraq, sandbox: SandboxServer
) -> None:
    """`plan` reads the ledger: a row changed since it was submitted is an error there too."""
    (floraq.cwd / "rows.csv").write_text("sku,prompt\nmug-001,a red mug\n")
    job = {"technique": "poster-maker", "rows_from": {"csv": "rows.csv", "key": "sku"}}
    manifest = floraq.write_manifest(batch="v1", jobs=[job])
    assert floraq("submit", str(manifest)).returncode == 0
    (floraq.cwd / "rows.csv").write_text("sku,prompt\nmug-001,a blue mug\n")
    before = floraq.ledger_path.read_bytes()
    planned = floraq("plan", str(manifest))
    assert planned.returncode == 2
    assert "(key 'mug-001') changed since it was submitted in this batch" in planned.stdout
    assert floraq.ledger_path.read_bytes() == before
