"""End to end: an output that cannot be fetched for good (a redirect loop) leaves its row in
state `download_failed`, shown as itself everywhere, counted in the money like `expired`;
once the host is fixed, `retry --download-failed` fetches it from the same run."""

from __future__ import annotations

import csv
import io
import json
from decimal import Decimal
from pathlib import Path

from conftest import Floraq, served_outputs, sha256, status_json

from floraq.errors import ExitCode
from floraq.ledger.lean_rows import OUTPUT_PATH
from floraq.sandbox import SandboxServer

PROMPTS = ["a kite", "a lighthouse"]
LOOP = "more than 5 redirects (a redirect loop?)"


def _submit_into_a_loop(floraq: Floraq, sandbox: SandboxServer) -> None:
    sandbox.configure(redirect_loop=True)
    jobs = floraq.write_manifest(
        batch="loop",
        jobs=[{"technique": "poster-maker", "rows": [{"prompt": p} for p in PROMPTS]}],
    )
    done = floraq("submit", str(jobs))
    assert done.returncode == ExitCode.FAILURES, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    assert floraq.states() == {"download_failed": len(PROMPTS)}


def test_a_redirect_loop_is_download_failed_everywhere_and_retry_fetches_it(
    floraq: Floraq, sandbox: SandboxServer
) -> None:
    _submit_into_a_loop(floraq, sandbox)
    status = status_json(floraq)
    batch = status["batches"]["loop"]
    assert batch["states"] == {"download_failed": 2}
    assert {f["state"] for f in status["failures"]} == {"download_failed"}
    assert {f["error_code"] for f in status["failures"]} == {"download_failed"}
    assert all(LOOP in f["error_message"] for f in status["failures"])
    # The runs completed and were charged: the money counts them as an expired row's.
    charged = Decimal(str(sandbox.stats()["charged_total"]))
    assert charged == Decimal("0.08") * len(PROMPTS)
    assert Decimal(str(batch["charged_cost"])) == charged and not batch["charged_cost_is_floor"]
    shown = floraq("status").stdout.splitlines()
    assert shown[1].split() == ["technique", "download_failed", "charged", "estimated"]
    assert shown[2].split() == ["poster-maker", "2", "0.1600", "0.1600"]
    assert "row 1: download_failed download_failed: could not download" in "\n".join(shown)
    listed = json.loads(floraq("batches", "--json").stdout)["batches"]
    assert listed[0]["states"] == {"download_failed": 2}
    assert Decimal(str(listed[0]["charged_cost"])) == charged
    exported = floraq("export", "--format", "csv").stdout
    assert {r["status"] for r in csv.DictReader(io.StringIO(exported))} == {"download_failed"}
    assert floraq("report", "-o", "report.html").returncode == 0
    page = (floraq.cwd / "report.html").read_text()
    assert page.count("download_failed") >= len(PROMPTS) and LOOP in page

    sandbox.configure(redirect_loop=False)  # the host is fixed
    runs = sandbox.stats()["runs_created"]
    done = floraq("retry", "--download-failed")
    assert done.returncode == ExitCode.OK, done.stdout + done.stderr
    assert "2 download_failed row(s) to fetch again (same run, no new charge)" in done.stdout
    assert floraq.states() == {"downloaded": 2}
    served = served_outputs(sandbox)
    rows = floraq.query(
        f"SELECT {OUTPUT_PATH} AS path, o.sha256, o.output_id, j.idempotency_key, j.attempt"
        " FROM outputs o JOIN jobs j ON j.id = o.job_id JOIN batches b ON b.name = j.batch"
    )
    assert len(rows) == len(PROMPTS)
    for row in rows:
        assert row["attempt"] == 1  # the same run, not a new attempt
        assert sha256(Path(row["path"])) == row["sha256"]
        assert row["sha256"] == served[f"{row['idempotency_key']}/{row['output_id']}"]
    assert sandbox.stats()["runs_created"] == runs
    after = status_json(floraq)
    assert after["failures"] == []
    assert Decimal(str(after["batches"]["loop"]["charged_cost"])) == charged


def test_retry_without_the_fix_leaves_the_row_download_failed_and_pays_nothing(
    floraq: Floraq, sandbox: SandboxServer
) -> None:
    """`retry --download-failed` while the loop goes on: exit 1 again, no new run; once
    fixed, `resume --redownload-missing` fetches the rows as well."""
    _submit_into_a_loop(floraq, sandbox)
    runs = sandbox.stats()["runs_created"]
    done = floraq("retry", "--download-failed", "--queue-only")
    assert done.returncode == ExitCode.OK, done.stderr
    assert floraq.states() == {"completed": 2}
    assert "queued only: run `floraq resume` to send or fetch them" in done.stderr
    done = floraq("resume")
    assert done.returncode == ExitCode.FAILURES, done.stdout + done.stderr
    assert floraq.states() == {"download_failed": 2}
    assert sandbox.stats()["runs_created"] == runs
    done = floraq("retry", "--expired")
    assert "nothing to retry: no such row" in done.stdout
    sandbox.configure(redirect_loop=False)  # fixed: `resume --redownload-missing` fetches too
    done = floraq("resume", "--redownload-missing")
    assert done.returncode == ExitCode.OK, done.stdout + done.stderr
    assert "2 expired or download_failed row(s) fetched again" in done.stdout + done.stderr
    assert floraq.states() == {"downloaded": 2}
    assert sandbox.stats()["runs_created"] == runs
