"""What a cron job relies on: one worker per ledger, and exit codes that say what to do next."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from conftest import Floraq, ledger_states
from test_e2e_crash import assert_sound, manifest

from floraq.errors import ExitCode
from floraq.sandbox import SandboxServer

README = Path(__file__).resolve().parent.parent / "README.md"
BUSY = "another floraq process (pid {pid}) is using the ledger"


@contextmanager
def started_together(floraq: Floraq, n: int, *args: str) -> Iterator[list[subprocess.Popen[str]]]:
    """`n` copies of one command started at once; any still running at the end are killed."""
    procs = [floraq.start(*args) for _ in range(n)]
    try:
        yield procs
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.communicate()


def wait_for_exits(procs: list[subprocess.Popen[str]], n: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while sum(p.poll() is not None for p in procs) < n and time.monotonic() < deadline:
        time.sleep(0.01)


def test_overlapping_starts_one_worker_and_the_next_takes_over_after_a_kill(
    floraq: Floraq, sandbox: SandboxServer
) -> None:
    """6 starts at once: one works, 5 exit 5; after its kill -9, one of 3 more finishes it all.

    The sandbox's clock stands still until the worker is killed, so its runs cannot finish
    (and the worker cannot let go of the lock) however slowly the other five start.
    """
    sandbox.configure(duration=[200, 200], frozen_clock=True)
    jobs = str(manifest(floraq, 16))
    with started_together(floraq, 6, "submit", jobs) as first:
        wait_for_exits(first, 5)
        [worker] = [p for p in first if p.poll() is None]
        losers = [(*p.communicate(), p.returncode) for p in first if p is not worker]
        assert [code for _, _, code in losers] == [ExitCode.BUSY] * 5
        busy = BUSY.format(pid=worker.pid)
        assert all(busy in err and "Traceback" not in err for _, err, _ in losers)
        deadline = time.monotonic() + 30
        while ledger_states(floraq) != {"submitted": 16} and time.monotonic() < deadline:
            time.sleep(0.01)  # every run id committed (not just created at the sandbox)
        worker.kill()  # midway: every run is in flight, nothing downloaded yet
    assert floraq.states() == {"submitted": 16}
    sandbox.configure(frozen_clock=False)
    with started_together(floraq, 3, "resume") as second:
        wait_for_exits(second, 3)
        codes = sorted(p.returncode for p in second)
    assert codes == [ExitCode.OK] + [ExitCode.BUSY] * 2
    assert assert_sound(floraq, sandbox, 16) == {"downloaded": 16}


def test_busy_exit_is_immediate(floraq: Floraq, sandbox: SandboxServer) -> None:
    """A second `resume` while one runs exits 5 at once: it does not wait for the lock.

    The sandbox's clock is frozen, so the first process can never finish on its own; the
    second returning while the first still runs is the proof it did not wait (no timing)."""
    sandbox.configure(duration=[150, 150], frozen_clock=True)
    jobs = str(manifest(floraq, 4))
    worker = floraq.start("submit", jobs)
    try:
        deadline = time.monotonic() + 30
        while sandbox.stats()["runs_created"] < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
        busy = floraq("resume")
        assert worker.poll() is None  # the lock holder is still at work
    finally:
        worker.kill()
        worker.communicate()
        sandbox.configure(frozen_clock=False)
    assert busy.returncode == ExitCode.BUSY, busy.stderr
    assert busy.stdout == "" and busy.stderr.count("\n") == 1


def test_no_wait_exits_6_and_resume_finishes_with_0(floraq: Floraq, sandbox: SandboxServer) -> None:
    """`submit --no-wait` says "run me again later" (6); the later `resume` says done (0)."""
    sandbox.configure(duration=[1, 3])
    sent = floraq("submit", str(manifest(floraq, 6)), "--no-wait")
    assert sent.returncode == ExitCode.INCOMPLETE, sent.stderr
    assert "floraq resume" in sent.stderr
    assert floraq.states() == {"submitted": 6}
    done = floraq("resume")
    assert done.returncode == ExitCode.OK, done.stderr
    again = floraq("resume")
    assert again.returncode == ExitCode.OK
    assert sandbox.stats()["runs_created"] == 6


def cron_table() -> dict[int, str]:
    text = README.read_text()
    section = text.split("## Running from cron", 1)[1].split("\n## ", 1)[0]
    return {int(m[0]): m[1] for m in re.findall(r"^\| (\d+) \| (.+?) \|", section, re.M)}


def test_readme_cron_section_documents_every_exit_code() -> None:
    """The cron section has a row for every ExitCode, and a crontab line."""
    assert set(cron_table()) == {int(code) for code in ExitCode}
    section = README.read_text().split("## Running from cron", 1)[1]
    assert re.search(r"^\*/\d+ \* \* \* \* ", section, re.M)
    assert "**Reading `unknown_outcome`.**" in section


def test_help_and_readme_table_agree_with_the_exit_codes() -> None:
    """`floraq --help` and the README's exit code table list the same codes as ExitCode."""
    shown = subprocess.run(
        [sys.executable, "-m", "floraq", "--help"], capture_output=True, text=True, check=True
    ).stdout
    in_help = {int(m) for m in re.findall(r"^\s+(\d+)\s{1,2}\S", shown, re.M)}
    text = README.read_text()
    table = text.split("### Exit codes", 1)[1].split("\n#", 1)[0]
    in_readme = {int(m) for m in re.findall(r"^\| (\d+) \|", table, re.M)}
    documented = {int(code) for code in ExitCode}
    assert in_help == in_readme == documented
    later = re.search(r"(\d(?:, \d)*) and (\d+) mean \"run me again later\"", text)
    assert later is not None
    again = {int(n) for n in later.group(1).split(", ")} | {int(later.group(2))}
    assert again == {ExitCode.PAUSED, ExitCode.BUSY, ExitCode.INCOMPLETE, ExitCode.INTERRUPTED}
