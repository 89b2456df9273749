"""The CLI documents itself: every command has help with an example and is in the README."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from conftest import Floraq, clean_env

from floraq.cli import _register_sandbox, cli
from floraq.cli_options import common_options, session, session_options
from floraq.errors import ExitCode, UsageError
from floraq.sandbox import SandboxServer
from floraq.settings import Settings, resolve

README_PATH = Path(__file__).resolve().parent.parent / "README.md"
README = README_PATH.read_text()
_register_sandbox()
COMMANDS = sorted(cli.commands)


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_has_help_with_an_example(name: str) -> None:
    """`floraq NAME --help` works and shows an example."""
    result = CliRunner().invoke(cli, [name, "--help"])
    assert result.exit_code == 0, result.output
    assert "Example" in result.output or "example" in result.output


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_is_in_the_readme(name: str) -> None:
    """The README's command table lists every command."""
    assert re.search(rf"`floraq {name}\b", README), f"floraq {name} is not documented"


@pytest.mark.parametrize("code", list(ExitCode))
def test_every_exit_code_is_documented(code: ExitCode) -> None:
    """Each exit code appears in `floraq --help` and in the README's table."""
    help_text = CliRunner().invoke(cli, ["--help"]).output
    assert re.search(rf"^\s+{int(code)}\s", help_text, re.M), f"{int(code)} missing from --help"
    tables = re.findall(rf"^\| {int(code)} \|", README, re.M)
    assert len(tables) == 2, f"{int(code)} missing from a README exit-code table"
    cron = README.split("## Running from cron", 1)[1].split("```crontab", 1)[0]
    handled = {n for arm in re.findall(r"^  ([\d|]+)\)", cron, re.M) for n in arm.split("|")}
    if code not in (ExitCode.USAGE, ExitCode.AUTH, ExitCode.INTERNAL):  # "*": a person
        assert str(int(code)) in handled, f"the cron wrapper has no arm for {int(code)}"


def test_no_api_key_flag() -> None:
    """The API key comes from the environment only: no command accepts a key flag."""
    for name in COMMANDS:
        params = {opt for p in cli.commands[name].params for opt in getattr(p, "opts", [])}
        assert not {o for o in params if "key" in o.lower() and "api" in o.lower()}, name


def test_missing_key_is_one_line_and_exit_2(tmp_path: Path) -> None:
    """Without FLORA_API_KEY, floraq says where to put it; no traceback."""
    (tmp_path / "jobs.yaml").write_text(
        "version: 1\nbatch: b\noutput_dir: out\njobs:\n"
        "  - technique: poster-maker\n    rows: [{prompt: hi}]\n"
    )
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PYTHONPATH": str(README_PATH.parent)}
    done = subprocess.run(
        [sys.executable, "-m", "floraq", "plan", "jobs.yaml"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.startswith("floraq: error: no API key: set FLORA_API_KEY")
    assert "Traceback" not in done.stderr and done.stderr.count("\n") == 1


def test_a_bug_exits_70_with_a_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """An unexpected exception prints its traceback and exits 70, never 1 (rows need a look)."""
    from floraq import review
    from floraq.cli import main

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(review, "status", broken)
    with pytest.raises(SystemExit) as exited:
        main(["status"])
    assert exited.value.code == ExitCode.INTERNAL == 70
    err = capsys.readouterr().err
    assert "Traceback" in err and "RuntimeError: boom" in err
    assert "this is a bug in floraq" in err


def test_sandbox_takes_the_key_from_the_environment_and_never_prints_it(tmp_path: Path) -> None:
    """`floraq sandbox` with FLORA_API_KEY set accepts that key and does not echo it.

    The test waits for the banner (printed once the server is up) rather than racing it.
    """
    import os
    import signal
    import socket
    import threading

    import httpx

    canary = "sk_live_CANARY_0123456789"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "FLORA_API_KEY": canary, "PYTHONPATH": str(README_PATH.parent)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "floraq", "sandbox", "--port", str(port)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    lines: list[str] = []
    banner = threading.Event()

    def read_stderr() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)
            if "API key:" in line:
                banner.set()

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    try:
        assert banner.wait(timeout=60), "".join(lines)  # a bound on start-up, not a target
        url = f"http://127.0.0.1:{port}/api/v1/techniques/poster-maker"
        answer = httpx.get(url, headers={"Authorization": f"Bearer {canary}"})
        assert answer.status_code == 200
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=10)
        reader.join(timeout=10)
        assert proc.stdout is not None and proc.stderr is not None
        out = proc.stdout.read()
        proc.stdout.close()
        proc.stderr.close()
    err = "".join(lines)
    assert "API key:" in err and canary not in err + out


# --- global options: before the command as well as after it ------------------------------

GLOBAL_OPTIONS = ["-v", "--verbose", "-q", "--quiet", "--ledger", "--base-url", "--sandbox"]


def one_row_manifest(floraq: Floraq) -> Path:
    return floraq.write_manifest(
        batch="b", jobs=[{"technique": "poster-maker", "rows": [{"prompt": "a lighthouse"}]}]
    )


def shown_states(done: subprocess.CompletedProcess[str]) -> dict[str, int]:
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout)["batches"]["b"]["states"])


def test_help_documents_the_global_options() -> None:
    """`floraq --help` lists every global option and says it may go before the command."""
    help_text = CliRunner().invoke(cli, ["--help"]).output
    assert all(re.search(rf"(^|\s){re.escape(o)}\b", help_text) for o in GLOBAL_OPTIONS)
    assert "before the command or after it" in help_text


def test_ledger_before_the_command_is_the_one_written_and_read(floraq: Floraq) -> None:
    """`floraq --ledger X submit` writes X, not FLORAQ_LEDGER; `--ledger X status` reads X."""
    other = floraq.cwd / "other.db"
    done = floraq("--ledger", str(other), "submit", str(one_row_manifest(floraq)))
    assert done.returncode == 0, done.stderr
    assert other.exists() and not floraq.ledger_path.exists()
    assert shown_states(floraq("--ledger", str(other), "status", "--json")) == {"downloaded": 1}
    assert shown_states(floraq("status", "--json", "--ledger", str(other))) == {"downloaded": 1}


def test_the_option_after_the_command_wins(floraq: Floraq) -> None:
    """Given before and after the command, the value after it is used."""
    other = floraq.cwd / "other.db"
    assert floraq("submit", str(one_row_manifest(floraq)), "--ledger", str(other)).returncode == 0
    read = floraq("--ledger", "missing.db", "status", "--json", "--ledger", str(other))
    assert shown_states(read) == {"downloaded": 1}
    refused = floraq("--ledger", str(other), "status", "--ledger", "missing.db")
    assert refused.returncode == ExitCode.USAGE
    assert refused.stderr.startswith("floraq: error: no ledger at missing.db")


@pytest.mark.parametrize(
    "args",
    [["-v", "techniques", "poster-maker"], ["techniques", "poster-maker", "-v"]],
    ids=["before", "after"],
)
def test_verbose_logs_each_request_before_or_after(floraq: Floraq, args: list[str]) -> None:
    """`floraq -v techniques X` logs its request line on stderr, as `techniques X -v` does."""
    done = floraq(*args)
    assert done.returncode == 0, done.stderr
    assert re.search(r"^request: GET /techniques/poster-maker -> 200 in \d+ ms", done.stderr, re.M)


def test_base_url_before_the_command_wins_over_the_environment(
    floraq: Floraq, sandbox: SandboxServer
) -> None:
    """`floraq --base-url U techniques` asks U even when FLORA_BASE_URL names a dead port."""
    dead = "http://127.0.0.1:9/api/v1"
    done = floraq("--base-url", sandbox.base_url, "techniques", FLORA_BASE_URL=dead)
    assert done.returncode == 0, done.stderr
    assert "tech_portrait01" in done.stdout
    failed = floraq("--base-url", sandbox.base_url, "techniques", "--base-url", dead)
    assert failed.returncode == ExitCode.FAILURES
    assert "no answer from 127.0.0.1" in failed.stderr


@pytest.mark.parametrize(("quiet", "announced"), [([], True), (["-q"], False)])
def test_sandbox_and_quiet_before_the_command(
    tmp_path: Path, quiet: list[str], announced: bool
) -> None:
    """`floraq --sandbox plan` needs no key; `-q` before the command hides the sandbox line."""
    floraq = Floraq(cwd=tmp_path, env=clean_env())
    done = floraq("--sandbox", *quiet, "plan", str(one_row_manifest(floraq)))
    assert done.returncode == 0, done.stderr
    assert ("sandbox: serving a local FLORA API" in done.stderr) is announced


@pytest.mark.parametrize("source", ["flag", "env"])
def test_a_postgres_url_is_kept_as_typed_and_shown_masked(source: str) -> None:
    """`--ledger URL` / FLORAQ_LEDGER: the URL itself (not a path that collapsed its `//`)."""
    url = "postgresql://ops:s3cret@db.example:5432/floraq?sslmode=require"
    seen: list[object] = []

    @click.command()
    @common_options
    def probe(**kwargs: object) -> None:
        with session(**session_options(dict(kwargs))) as settings:
            seen.append(settings)

    args, env = (["--ledger", url], {}) if source == "flag" else ([], {"FLORAQ_LEDGER": url})
    done = CliRunner().invoke(probe, args, env=env)
    assert done.exit_code == 0, done.output
    [settings] = seen
    assert isinstance(settings, Settings)
    assert settings.ledger_url == settings.ledger_target == url
    assert settings.ledger_shown == "postgresql://ops:***@db.example:5432/floraq?sslmode=require"
    assert "s3cret" not in repr(settings)


def test_an_upper_case_postgres_scheme_is_one_line_masked() -> None:
    """Not a local file named after the URL: a usage error, the password masked."""
    with pytest.raises(UsageError) as refused:
        resolve(env={}, ledger="POSTGRESQL://ops:s3cret@db/floraq")
    assert str(refused.value) == (
        "--ledger POSTGRESQL://ops:***@db/floraq: write the URL's scheme in lower case"
        " (postgresql://…)"
    )
