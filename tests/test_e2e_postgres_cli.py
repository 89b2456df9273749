"""The real CLI on a PostgreSQL ledger: the same batch, the same files, several workers at once.

Each test gets a fresh schema of the server at ``FLORAQ_TEST_POSTGRES`` (``tests/ledgers``);
its URL carries a password (the test server trusts 127.0.0.1, so any password passes),
which must never appear in anything floraq prints or writes.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg
import pytest
from conftest import Floraq, floraq_against, served_outputs, sha256
from ledgers import fresh_schema, postgres_url
from test_e2e_crash import manifest

from floraq.errors import ExitCode
from floraq.ledger.lean_rows import OUTPUT_PATH
from floraq.ledger.pg_connection import masked
from floraq.sandbox import SandboxServer

PASSWORD = "Pg-s3cret-7f"


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh schema's URL, with a password in it."""
    with fresh_schema() as url:
        yield f"{url}&password={PASSWORD}"


@pytest.fixture
def pg_floraq(tmp_path: Path, sandbox: SandboxServer, pg_url: str) -> Floraq:
    """The CLI whose FLORAQ_LEDGER is the PostgreSQL URL (no SQLite path anywhere)."""
    cli = floraq_against(tmp_path, sandbox)
    cli.env["FLORAQ_LEDGER"] = pg_url
    return cli


def pg_query(url: str, sql: str) -> list[dict[str, Any]]:
    """Read the ledger the way an operator with psql would."""
    with psycopg.connect(url) as conn:
        cur = conn.execute(sql)
        names = [c.name for c in cur.description or ()]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def assert_no_password(cli: Floraq, *texts: str) -> None:
    """Not in any output, not in any file floraq left; no SQLite ledger made either."""
    for text in texts:
        assert PASSWORD not in text
    for path in cli.cwd.rglob("*"):
        if path.is_file():
            assert PASSWORD.encode() not in path.read_bytes(), path
    assert not (cli.cwd / "state").exists() and not any(cli.cwd.glob("postgres*"))


def test_submit_status_and_a_second_worker_on_a_postgres_ledger(
    pg_floraq: Floraq, sandbox: SandboxServer, pg_url: str
) -> None:
    """`submit --ledger URL` downloads every row (the sandbox's sha256); `status --json`
    reads the same ledger; a `resume` started while another worker runs is not turned
    away (no exit 5 on PostgreSQL): both work the batch to the end, each key run once."""
    cli = pg_floraq
    jobs = str(manifest(cli, 6, batch="pg"))
    done = cli("submit", jobs, "--ledger", pg_url)
    assert done.returncode == ExitCode.OK, done.stdout + done.stderr
    rows = pg_query(pg_url, "SELECT state, idempotency_key, run_id FROM jobs")
    assert len(rows) == 6 and {r["state"] for r in rows} == {"downloaded"}
    served = served_outputs(sandbox)
    outputs = pg_query(
        pg_url,
        f"SELECT j.idempotency_key, o.output_id, {OUTPUT_PATH} AS path, o.sha256 FROM outputs o"
        " JOIN jobs j ON j.id = o.job_id JOIN batches b ON b.name = j.batch",
    )
    assert len(outputs) == len(served) and sandbox.stats()["runs_created"] == 6
    for out in outputs:
        expected = served[f"{out['idempotency_key']}/{out['output_id']}"]
        assert sha256(Path(out["path"])) == out["sha256"] == expected
    owner = json.loads((cli.cwd / "outputs" / ".floraq" / "owner.json").read_text())
    assert owner["ledger"] == masked(pg_url)

    status = cli("status", "--json", "--ledger", pg_url)
    assert status.returncode == 0, status.stderr
    report = json.loads(status.stdout)["batches"]["pg"]
    assert report["rows"] == 6 and report["states"] == {"downloaded": 6}

    sandbox.configure(duration=[150, 150])
    rows = [
        {"input_image": f"https://storage.googleapis.com/floraq-more/{n}.jpg"} for n in range(4)
    ]
    more = cli.write_manifest(
        "more.yaml",
        batch="pg2",
        output_dir="more",
        jobs=[{"technique": "portrait-enhancer", "rows": rows}],
    )
    worker = cli.start("submit", str(more))
    try:
        deadline = time.monotonic() + 30
        while sandbox.stats()["runs_created"] < 10 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert worker.poll() is None  # still running: it holds some rows
        second = cli("resume")
        out, err = worker.communicate(timeout=120)
    finally:
        worker.kill()
    assert second.returncode == ExitCode.OK == worker.returncode, second.stderr + err
    # It worked some rows, or left the rest to the worker that holds them, and said so.
    assert re.fullmatch(
        r"(\d+ row\(s\) are still being worked on by other workers\n)?", second.stderr
    )
    runs = sandbox.runs()
    keys = [r["idempotency_key"] for r in runs]
    assert len(keys) == len(set(keys)) == sandbox.stats()["runs_created"] == 10
    states = pg_query(pg_url, "SELECT state, lease_owner FROM jobs")
    assert {(r["state"], r["lease_owner"]) for r in states} == {("downloaded", None)}
    assert pg_query(pg_url, "SELECT id FROM workers") == []  # both let go on their way out
    assert_no_password(cli, done.stdout, done.stderr, status.stdout, status.stderr, out, err)
    assert_no_password(cli, second.stdout, second.stderr)


def test_a_wrong_login_is_one_line_with_the_password_masked(tmp_path: Path) -> None:
    """A role the server does not know, with a password: exit 2, one line, no password."""
    server = urlsplit(postgres_url())
    url = f"postgresql://floraq_nobody:{PASSWORD}@{server.hostname}:{server.port}/postgres"
    with SandboxServer() as sandbox:
        cli = floraq_against(tmp_path, sandbox)
        (tmp_path / "jobs.yaml").write_text(
            "version: 1\nbatch: b\noutput_dir: outputs\njobs:\n  - technique: portrait-enhancer\n"
            "    rows:\n      - input_image: https://storage.googleapis.com/x/1.jpg\n"
        )
        for command in (("submit", "jobs.yaml"), ("status",), ("resume",)):
            done = cli(*command, "--ledger", url)
            assert done.returncode == ExitCode.USAGE, done.stdout + done.stderr
            assert done.stderr.count("\n") == 1 and done.stdout == ""
            assert done.stderr.startswith(
                f"floraq: error: cannot open the ledger {masked(url)}: connection failed:"
            )
            assert '"floraq_nobody" does not exist' in done.stderr
            assert_no_password(cli, done.stderr)
        assert sandbox.stats()["runs_created"] == 0
