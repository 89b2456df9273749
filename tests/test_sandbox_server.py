"""Starting, driving and stopping the sandbox: the Python API, the inspection endpoints, the CLI."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner
from sandbox_fixtures import *  # noqa: F403
from sandbox_fixtures import FAST, auth, portrait, wait_done

from floraq.sandbox import SandboxConfig, SandboxServer
from floraq.sandbox.cli import sandbox_command


def test_start_and_stop_are_quick() -> None:
    """A sandbox starts, answers and stops in well under a second."""
    started = time.monotonic()
    with SandboxServer(FAST) as sandbox:
        response = httpx.get(f"{sandbox.base_url}/workspaces", headers=auth(sandbox.api_key))
        assert response.status_code == 200
    assert time.monotonic() - started < 1.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def test_fixed_ports_are_used() -> None:
    """SandboxServer(config, port=N, media_port=M) serves exactly there."""
    port, media_port = free_port(), free_port()
    with SandboxServer(FAST, port=port, media_port=media_port) as sandbox:
        assert sandbox.base_url == f"http://127.0.0.1:{port}/api/v1"
        assert sandbox.media_url == f"http://127.0.0.1:{media_port}"
        assert sandbox.api_key == "sk_test_sandbox"


def test_port_in_use_fails_at_start() -> None:
    """A taken port raises OSError from start() and leaves nothing running."""
    with SandboxServer(FAST) as running, pytest.raises(OSError):
        SandboxServer(FAST, port=running.port).start()


def test_custom_catalog_file_replaces_the_packaged_one(tmp_path: Path) -> None:
    """SandboxConfig(catalog=FILE) serves that file's techniques only."""
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(
        "techniques:\n  - {slug: echo, technique_id: tech_echo, name: Echo, run_cost: 0.01,"
        " duration: [1, 1], inputs: [{id: words, name: Words, type: text}],"
        " outputs: [{id: said, name: Said, type: text}]}\n"
    )
    with SandboxServer(SandboxConfig(catalog=str(catalog))) as sandbox:
        listing = httpx.get(f"{sandbox.base_url}/techniques", headers=auth(sandbox.api_key))
    assert [t["technique_id"] for t in listing.json()["techniques"]] == ["tech_echo"]


def test_configure_reports_bad_knobs(shared_sandbox: SandboxServer) -> None:
    """configure() with an unknown knob or a bad value fails and changes nothing."""
    with pytest.raises(ValueError, match="400"):
        shared_sandbox.configure(capacity=0, wobble=1)
    assert httpx.get(f"{shared_sandbox.root_url}/_sandbox/config").json()["capacity"] == 8


def test_configure_balance_sets_the_live_balance(shared_sandbox: SandboxServer) -> None:
    """configure(balance=x) is the balance stats report at once."""
    assert shared_sandbox.configure(balance=12.5)["balance"] == 12.5
    assert shared_sandbox.stats()["balance"] == 12.5


def test_frozen_clock_moves_only_when_advanced(
    shared_sandbox: SandboxServer, api: httpx.Client
) -> None:
    """With frozen_clock a 0.1 s run waits at 0 % however long it takes; an advance ends it."""
    shared_sandbox.configure(duration=[100, 100], frozen_clock=True)
    poll_url = api.post("/techniques/portrait-enhancer/runs", json=portrait()).json()["poll_url"]
    time.sleep(0.12)
    assert api.get(poll_url).json()["progress"] == 0
    shared_sandbox.advance_clock(0.11)
    assert api.get(poll_url).json()["status"] == "completed"


@pytest.mark.parametrize("advance", [-1, "1", None, True])
def test_clock_refuses_anything_but_seconds_forward(
    shared_sandbox: SandboxServer, advance: object
) -> None:
    """POST /_sandbox/clock with a negative or non-numeric advance is a 400 naming `advance`."""
    refused = httpx.post(f"{shared_sandbox.root_url}/_sandbox/clock", json={"advance": advance})
    assert refused.status_code == 400
    assert refused.json()["error"]["fields"] == [
        {"field": "advance", "message": "Must be a finite number of seconds >= 0"}
    ]


def test_restoring_the_config_lets_a_frozen_clock_run_again(
    shared_sandbox: SandboxServer, api: httpx.Client
) -> None:
    """reset(restore_config=True) undoes frozen_clock: runs finish on their own again."""
    shared_sandbox.configure(frozen_clock=True)
    shared_sandbox.reset(restore_config=True)
    poll_url = api.post("/techniques/portrait-enhancer/runs", json=portrait()).json()["poll_url"]
    assert wait_done(api, poll_url)["status"] == "completed"


def test_reset_clears_runs_and_counters(shared_sandbox: SandboxServer, api: httpx.Client) -> None:
    """POST /_sandbox/reset forgets runs, keys and counters but keeps the knobs."""
    shared_sandbox.configure(run_id_style="opaque")
    api.post("/techniques/portrait-enhancer/runs", json=portrait(idempotency_key="k"))
    shared_sandbox.reset()
    stats = shared_sandbox.stats()
    assert (stats["runs_created"], stats["requests"], shared_sandbox.runs()) == (0, {}, [])
    response = api.post("/techniques/portrait-enhancer/runs", json=portrait(idempotency_key="k"))
    assert "idempotent-replayed" not in response.headers
    assert response.json()["run_id"].startswith("j57")


def test_runs_report_lists_every_run(shared_sandbox: SandboxServer, api: httpx.Client) -> None:
    """GET /_sandbox/runs lists each run with slug, key, inputs and status."""
    shared_sandbox.configure(duration=[1000, 1000])
    api.post("/techniques/portrait-enhancer/runs", json=portrait(idempotency_key="k1"))
    (run,) = shared_sandbox.runs()
    assert (run["slug"], run["idempotency_key"], run["status"]) == (
        "portrait-enhancer",
        "k1",
        "running",
    )
    assert run["inputs"] == portrait()["inputs"]
    assert run["charged_cost"] is None and run["outputs"] == []


def test_stats_expose_the_ideal_makespan(shared_sandbox: SandboxServer, api: httpx.Client) -> None:
    """Stats report the ideal makespan of the runs so far next to the actual one."""
    shared_sandbox.configure(duration=[100, 100], capacity=2)
    for n in range(4):
        api.post("/techniques/portrait-enhancer/runs", json=portrait(f"https://e.com/{n}.jpg"))
    schedule = shared_sandbox.stats()["schedule"]
    assert schedule["capacity"] == 2
    assert schedule["ideal_makespan"] == pytest.approx(0.2)
    assert schedule["actual_makespan"] >= schedule["ideal_makespan"]


def test_cli_help_ends_with_an_example() -> None:
    """`floraq sandbox --help` documents the command and ends with an example."""
    result = CliRunner().invoke(sandbox_command, ["--help"])
    assert result.exit_code == 0
    assert "floraq sandbox --time-scale" in result.output.split("Options:")[0]
    assert "--frozen-clock" in result.output and "/_sandbox/clock" in result.output


def test_cli_rejects_bad_knob_values() -> None:
    """An out-of-range knob is a usage error (exit 2) before anything listens."""
    result = CliRunner().invoke(sandbox_command, ["--failure-rate", "2"])
    assert result.exit_code == 2 and "--failure-rate" in result.output


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM])
def test_module_runs_in_foreground_and_stops_cleanly(stop: signal.Signals) -> None:
    """`python -m floraq.sandbox` prints URLs and key, serves, and exits 0 on Ctrl-C or TERM."""
    process = subprocess.Popen(
        [
            sys.executable,
            "-W",
            "error",
            "-m",
            "floraq.sandbox",
            "--port",
            "0",
            "--key",
            "sk_test_x",
            "--time-scale",
            "0.01",
            "--run-id-style",
            "opaque",
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None
    lines = [process.stderr.readline() for _ in range(4)]
    base_url = re.search(r"base URL:\s+(\S+)", lines[1]).group(1)  # type: ignore[union-attr]
    assert re.search(r"media URL:\s+http://127\.0\.0\.1:\d+", lines[2])
    assert lines[3].split() == ["API", "key:", "sk_test_x"]
    created = httpx.post(
        f"{base_url}/techniques/portrait-enhancer/runs", json=portrait(), headers=auth("sk_test_x")
    )
    assert created.json()["run_id"].startswith("j57")
    process.send_signal(stop)
    assert process.wait(timeout=10) == 0
    assert "stopping" in process.stderr.read()
    process.stderr.close()
