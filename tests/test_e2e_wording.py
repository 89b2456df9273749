"""Cron-truthful wording: what each message tells the operator to run next is what works."""

from __future__ import annotations

import re
import signal
import time

import pytest
from conftest import Floraq, output_files

from floraq.errors import ExitCode
from floraq.sandbox import SandboxServer

HEAD = "version: 1\nbatch: q\noutput_dir: outputs\n"
TWO_ROWS = (
    HEAD + "jobs:\n  - technique: poster-maker\n    rows: [{prompt: a}, {prompt: b}, {prompt: a}]\n"
)
KEYED = HEAD + "jobs:\n  - technique: portrait-enhancer\n    rows_from: {csv: rows.csv, key: sku}\n"
GOOD = "https://storage.googleapis.com/floraq-input/{n}.jpg"
NO_LEDGER = "floraq: error: no ledger at {path}: nothing has been submitted yet"


def lines(done: object) -> list[str]:
    """Every line a command printed, stdout then stderr."""
    return [*done.stdout.splitlines(), *done.stderr.splitlines()]  # type: ignore[attr-defined]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_before_rows_are_queued_says_run_the_same_submit_again(
    floraq: Floraq, sandbox: SandboxServer, signum: int
) -> None:
    """Interrupted while fetching techniques: exit 130, "run the same submit again", no ledger."""
    sandbox.configure(latency=30)
    (floraq.cwd / "jobs.yaml").write_text(TWO_ROWS)
    proc = floraq.start("submit", "jobs.yaml")
    deadline = time.monotonic() + 30
    while not sandbox.stats()["requests"].get("GET /techniques/{slug}"):
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.02)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == ExitCode.INTERRUPTED, err
    assert err.splitlines()[-1] == (
        "floraq: error: interrupted before the batch started; nothing was sent:"
        " run the same `floraq submit jobs.yaml` again"
    )
    assert "resume" not in err and "Traceback" not in err
    assert not floraq.ledger_path.parent.exists()


def test_a_row_fixed_after_skip_invalid_replaces_its_rejection(
    floraq: Floraq, sandbox: SandboxServer
) -> None:
    """--skip-invalid rejects a bad row; fixed and submitted again, it runs; the batch exits 0."""
    (floraq.cwd / "jobs.yaml").write_text(KEYED)
    rows = floraq.cwd / "rows.csv"
    rows.write_text(f"sku,input_image\nA1,{GOOD.format(n=1)}\nA2,http://example.com/2.jpg\n")
    first = floraq("submit", "jobs.yaml", "--skip-invalid")
    assert first.returncode == ExitCode.FAILURES, first.stderr
    assert floraq.states() == {"downloaded": 1, "rejected": 1}
    rows.write_text(f"sku,input_image\nA1,{GOOD.format(n=1)}\nA2,{GOOD.format(n=2)}\n")
    fixed = floraq("submit", "jobs.yaml")
    assert fixed.returncode == ExitCode.OK, fixed.stdout + fixed.stderr
    assert floraq.states() == {"downloaded": 2, "replaced": 1}
    assert (floraq.cwd / "outputs" / "portrait-enhancer" / "A2").is_dir()
    assert floraq("resume").returncode == ExitCode.OK
    assert sandbox.stats()["requests"]["POST /techniques/{slug}/runs"] == 2


@pytest.mark.parametrize(
    "args",
    [
        ["retry", "--failed"],
        ["resume"],
        ["status"],
        ["export"],
        ["report"],
        ["batches"],
        ["verify"],
    ],
    ids=lambda a: a[0],
)
def test_no_ledger_is_one_line_exit_2_and_creates_nothing(floraq: Floraq, args: list[str]) -> None:
    """Every command that needs a ledger words its absence alike, exits 2, creates no folder."""
    done = floraq(*args)
    assert done.returncode == ExitCode.USAGE, done.stdout + done.stderr
    assert done.stderr.splitlines() == [
        NO_LEDGER.format(path=floraq.ledger_path) + " (or pass --ledger / FLORAQ_LEDGER)"
    ]
    assert done.stdout == ""
    assert not floraq.ledger_path.parent.exists()


@pytest.mark.parametrize("args", [["status"], ["export"], ["report"], ["verify"], ["resume"]])
def test_no_such_batch_is_the_same_line_everywhere(floraq: Floraq, args: list[str]) -> None:
    """`--batch nope` names the batches there are, in the same words for every command."""
    (floraq.cwd / "jobs.yaml").write_text(TWO_ROWS)
    assert floraq("submit", "jobs.yaml").returncode == 0
    done = floraq(*args, "--batch", "nope")
    assert done.returncode == ExitCode.USAGE
    assert done.stderr.splitlines() == [
        f"floraq: error: no batch 'nope' in the ledger {floraq.ledger_path} (known: q)"
    ]


def _prepared(floraq: Floraq, sandbox: SandboxServer, command: str) -> None:
    """The ledger each quiet command needs: a finished batch (failed runs, for retry)."""
    (floraq.cwd / "jobs.yaml").write_text(TWO_ROWS)
    if command == "submit" or command == "plan":
        return
    if command == "retry":
        sandbox.configure(failure_rate=1.0)
    floraq("submit", "jobs.yaml")
    sandbox.configure(failure_rate=0.0)
    if command == "verify":
        output_files(floraq.cwd / "outputs", "*.*")[0].unlink()


QUIET = {
    # command: (arguments, exit code, the one line it prints)
    "plan": (["plan", "jobs.yaml"], 0, r"^batch q: 2 row\(s\) to run; \d+\.\d{4} USD; 1 duplicate"),
    "submit": (["submit", "jobs.yaml"], 0, r"^q: 2 row\(s\): downloaded 2; charged"),
    "resume": (["resume"], 0, r"^q: 2 row\(s\): downloaded 2; charged"),
    "retry": (["retry", "--failed"], 0, r"^q: 2 row\(s\): downloaded 2; charged"),
    "export": (["export", "-o", "out.csv"], 0, r"^exported 2 row\(s\) of q to out\.csv$"),
    "report": (["report", "-o", "r.html"], 0, r"^wrote r\.html: 2 row\(s\) of q"),
    "verify": (["verify"], 1, r"^\d+ file\(s\) checked: 1 missing, 0 changed$"),
}


@pytest.mark.parametrize("command", list(QUIET))
def test_quiet_prints_only_the_final_summary_line(
    floraq: Floraq, sandbox: SandboxServer, command: str
) -> None:
    """`-q`: one line (the summary), no warnings, hints, tables or progress, on any command."""
    _prepared(floraq, sandbox, command)
    args, code, pattern = QUIET[command]
    done = floraq(*args, "-q")
    assert done.returncode == code, done.stdout + done.stderr
    assert len(lines(done)) == 1 and re.search(pattern, lines(done)[0]), lines(done)
