"""Fault injection end to end: the sandbox misbehaves, floraq pays once and loses nothing."""

from __future__ import annotations

import re
import signal
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from conftest import Floraq, ledger_states, output_files, status_json
from test_e2e_crash import assert_sound, manifest

from floraq.sandbox import SandboxServer

POSTS = "POST /techniques/{slug}/runs"


def rows_of(technique: str, values: list[str], field: str = "prompt") -> dict[str, Any]:
    return {"technique": technique, "rows": [{field: v} for v in values]}


def catalog_without(tmp: Path, drop: str, *, retype: str | None = None) -> str:
    """A copy of the packaged catalog with one technique removed, or one input made an image."""
    packaged = Path(__file__).resolve().parent.parent / "floraq" / "sandbox" / "catalog.yaml"
    data = yaml.safe_load(packaged.read_text())
    techniques = []
    for t in data["techniques"]:
        if t["slug"] == drop:
            if retype is None:
                continue
            for slot in t["inputs"]:
                if slot["id"] == retype:
                    slot["type"] = "imageUrl"
        techniques.append(t)
    path = tmp / "catalog.yaml"
    path.write_text(yaml.safe_dump({"techniques": techniques}))
    return str(path)


# -- the mix ---------------------------------------------------------------------------------------


def test_fault_mix_completes_with_no_duplicate_and_no_lost_output(
    floraq: Floraq, sandbox: SandboxServer
) -> None:
    """20% 5xx, 10% 429, 5% drops, 10% cut bodies, URLs that expire: every row once, every file."""
    sandbox.configure(
        duration=[1, 5],
        error_5xx_rate=0.2,
        rate_429=0.1,
        drop_rate=0.05,
        truncate_rate=0.1,
        url_ttl=0.4,
    )
    jobs = manifest(floraq, 60)
    crashed = floraq("submit", str(jobs), FLORAQ_CRASH_AT="mid_download:25")
    assert crashed.returncode == -signal.SIGKILL
    time.sleep(0.5)  # the URLs the ledger holds for the completed runs are dead now
    done = floraq("resume", "-v")
    assert done.returncode == 0, done.stderr[-3000:]
    assert assert_sound(floraq, sandbox, 60) == {"downloaded": 60}
    stats = sandbox.stats()
    assert stats["runs_created"] == 60
    assert all(stats["faults"][kind] > 0 for kind in ("5xx", "429", "drop", "truncate"))
    assert re.search(r"request: GET http://127\.0\.0\.1:\d+/media/\S+ -> 403", done.stderr)


def test_verbose_logs_one_line_per_request_and_never_the_key(
    floraq: Floraq, sandbox: SandboxServer
) -> None:
    """-v: one stderr line per API request (as many as the sandbox counted), one per download."""
    sandbox.configure(duration=[1, 3])
    done = floraq("submit", str(manifest(floraq, 6)), "-v")
    assert done.returncode == 0, done.stderr
    lines = [x for x in done.stderr.splitlines() if x.startswith("request: ")]
    media = [x for x in lines if "/media/" in x]
    stats = sandbox.stats()
    assert len(lines) - len(media) == sum(stats["requests"].values())
    assert len(media) == stats["media_requests"]
    assert all(re.search(r" -> \d{3} in \d+ ms", x) for x in lines)
    assert all("request-id req_" in x for x in lines if x not in media)
    assert sandbox.api_key not in done.stderr and "?exp=" not in done.stderr


def test_html_error_pages_are_retried_like_json_ones(
    floraq: Floraq, sandbox: SandboxServer
) -> None:
    """A load balancer's HTML 500/503 pages are retried like any 5xx: the batch completes."""
    sandbox.configure(error_5xx_rate=0.3, html_5xx=True, duration=[1, 3])
    done = floraq("submit", str(manifest(floraq, 12)))
    assert done.returncode == 0, done.stderr
    assert sandbox.stats()["faults"]["5xx"] > 0
    assert assert_sound(floraq, sandbox, 12) == {"downloaded": 12}


@pytest.mark.parametrize("retry_after", [None, 1.0], ids=["no-header", "header"])
def test_rate_limits_slow_down_and_every_row_still_runs_once(
    floraq: Floraq, sandbox: SandboxServer, retry_after: float | None
) -> None:
    """Under 40% 429s, with or without Retry-After, the batch completes with one run a row."""
    sandbox.configure(rate_429=0.4, retry_after=retry_after, duration=[1, 3])
    done = floraq("submit", str(manifest(floraq, 8)))
    assert done.returncode == 0, done.stderr
    assert sandbox.stats()["faults"]["429"] > 0
    assert assert_sound(floraq, sandbox, 8) == {"downloaded": 8}


def test_cut_bodies_are_resumed_with_range_and_never_saved(
    floraq: Floraq, sandbox: SandboxServer
) -> None:
    """Half the bodies are cut: the rest is fetched with Range; every file is verified."""
    sandbox.configure(truncate_rate=0.5, duration=[1, 3])
    done = floraq("submit", str(manifest(floraq, 12)), "-v")
    assert done.returncode == 0, done.stderr
    assert sandbox.stats()["faults"]["truncate"] > 0
    assert re.search(r"request: GET \S+/media/\S+ from byte \d+ -> 206", done.stderr)
    assert assert_sound(floraq, sandbox, 12) == {"downloaded": 12}


# -- credits, budget, credentials ------------------------------------------------------------------


@pytest.mark.parametrize("concurrency", [1, 4])
def test_credits_running_out_pause_then_resume_finishes(
    floraq: Floraq, sandbox: SandboxServer, concurrency: int
) -> None:
    """Credits for 30 of 50 rows: exit 4, the 30 downloaded, the rest queued; a top-up finishes."""
    sandbox.configure(balance=30 * 0.05, duration=[1, 3])
    images = [f"https://storage.googleapis.com/credits/{n}.jpg" for n in range(50)]
    jobs = floraq.write_manifest(
        batch="credits",
        concurrency=concurrency,
        jobs=[rows_of("portrait-enhancer", images, "input_image")],
    )
    paused = floraq("submit", str(jobs))
    assert paused.returncode == 4, paused.stderr
    assert "paused (insufficient credits)" in paused.stderr
    assert floraq.states() == {"downloaded": 30, "queued": 20}
    assert sandbox.stats()["requests"][POSTS] <= 30 + concurrency
    sandbox.configure(balance=10.0)
    done = floraq("resume")
    assert done.returncode == 0, done.stderr
    assert assert_sound(floraq, sandbox, 50) == {"downloaded": 50}


def test_cost_cap_pauses_and_a_higher_cap_finishes(floraq: Floraq, sandbox: SandboxServer) -> None:
    """max_cost for 10 of 20 rows: exit 4 with 10 runs; `resume --max-cost` runs the rest."""
    sandbox.configure(duration=[1, 3])
    prompts = [f"a poster of harbour number {n}" for n in range(20)]
    jobs = floraq.write_manifest(
        batch="capped", max_cost=0.8, jobs=[rows_of("poster-maker", prompts)]
    )
    paused = floraq("submit", str(jobs))
    assert paused.returncode == 4, paused.stderr
    assert floraq.states() == {"downloaded": 10, "queued": 10}
    assert sandbox.stats()["requests"][POSTS] == 10
    done = floraq("resume", "--max-cost", "2")
    assert done.returncode == 0, done.stderr
    assert sandbox.stats()["runs_created"] == 20


def test_key_revoked_mid_batch_stops_everything_at_once(
    floraq: Floraq, sandbox: SandboxServer
) -> None:
    """A 401 while runs are in flight ends the process within 2 s, exit 3, nothing lost."""
    sandbox.configure(duration=[80, 80])  # 0.8 s runs: every row is being polled
    jobs = manifest(floraq, 12)
    proc = floraq.start("submit", str(jobs))
    deadline = time.monotonic() + 20
    while ledger_states(floraq) != {"submitted": 12} and time.monotonic() < deadline:
        time.sleep(0.01)  # every run id committed, so the 401 meets only polls
    sandbox.configure(revoked_keys=[sandbox.api_key])
    revoked = time.monotonic()
    _, err = proc.communicate(timeout=20)
    assert time.monotonic() - revoked < 2.0
    assert proc.returncode == 3, err
    assert "the API refused the key" in err and "Traceback" not in err
    assert floraq.states() == {"submitted": 12}
    sandbox.configure(revoked_keys=[])
    done = floraq("resume")
    assert done.returncode == 0, done.stderr
    assert assert_sound(floraq, sandbox, 12) == {"downloaded": 12}


def test_key_without_run_permission_stops_submitting(
    floraq: Floraq, sandbox: SandboxServer
) -> None:
    """A 403 on POST: exit 3, no run, at most one POST per request slot, rows stay queued."""
    sandbox.configure(read_only_keys=[sandbox.api_key])
    jobs = manifest(floraq, 20, concurrency=4)
    done = floraq("submit", str(jobs))
    assert done.returncode == 3, done.stderr
    assert "the API refused the key: This API key cannot create runs." in done.stderr
    assert sandbox.stats()["runs_created"] == 0
    posts = sandbox.stats()["requests"][POSTS]
    assert posts <= 4
    states = floraq.states()  # a POST cut off in flight keeps its intent, to re-send its key
    assert states.get("queued", 0) >= 20 - posts and set(states) <= {"queued", "submitting"}


# -- answers that reject a row ---------------------------------------------------------------------


REFUSALS = [("retyped", "input_validation_error"), ("removed", "not_found")]


def refused_batch(floraq: Floraq) -> Path:
    """A caption row (0.02) then two poster rows (0.08 each), one request at a time."""
    return floraq.write_manifest(
        batch="refused",
        concurrency=1,
        jobs=[
            rows_of("caption-writer", ["https://storage.googleapis.com/k/1.jpg"], "input_image"),
            rows_of("poster-maker", ["a red kite", "a blue kite"]),
        ],
    )


@pytest.mark.parametrize(("change", "code"), REFUSALS)
def test_server_refusals_reject_the_rows_with_fields_and_request_id(
    floraq: Floraq, sandbox: SandboxServer, tmp_path: Path, change: str, code: str
) -> None:
    """A 400 (an input changed type) or 404 (it is gone) to a fresh POST rejects the row."""
    paused = floraq("submit", str(refused_batch(floraq)), "--max-cost", "0.02")
    assert paused.returncode == 4 and floraq.states() == {"downloaded": 1, "queued": 2}
    retype = "prompt" if change == "retyped" else None
    sandbox.configure(catalog=catalog_without(tmp_path, "poster-maker", retype=retype))
    done = floraq("resume", "--max-cost", "1")
    assert done.returncode == 1, done.stderr
    assert floraq.states() == {"rejected": 2, "downloaded": 1}
    failures = status_json(floraq)["failures"]
    assert [f["error_code"] for f in failures] == [code, code]
    assert all(f["request_id"].startswith("req_") for f in failures)
    if change == "retyped":
        assert '"field": "inputs[0].value"' in failures[0]["error_fields"], failures[0]
    assert sandbox.stats()["runs_created"] == 1


@pytest.mark.parametrize(("change", "code"), REFUSALS)
def test_refusal_of_an_intent_from_before_a_crash_is_an_unknown_outcome(
    floraq: Floraq, sandbox: SandboxServer, tmp_path: Path, change: str, code: str
) -> None:
    """After a crash floraq cannot know if the POST left: a 400/404 then is no proof of no run."""
    crashed = floraq("submit", str(refused_batch(floraq)), FLORAQ_CRASH_AT="after_intent_commit")
    assert crashed.returncode == -signal.SIGKILL
    retype = "prompt" if change == "retyped" else None
    sandbox.configure(catalog=catalog_without(tmp_path, "poster-maker", retype=retype))
    done = floraq("resume")
    assert done.returncode == 1, done.stderr
    assert floraq.states() == {"unknown_outcome": 2, "downloaded": 1}
    failures = status_json(floraq)["failures"]
    assert [f["error_code"] for f in failures] == [code, code]
    assert all(f["request_id"].startswith("req_") for f in failures)
    assert sandbox.stats()["runs_created"] == 1


@pytest.mark.parametrize("retries", [1, 0])
def test_failed_runs_are_tiered_and_only_retry_now_is_rerun(
    floraq: Floraq, sandbox: SandboxServer, retries: int
) -> None:
    """model_timeout is re-run (new key) `retry_failed_runs` times; the other tiers never are."""
    prompts = {
        "timeout": "a lighthouse [[fail:model_timeout]]",
        "moderated": "a lighthouse [[fail:moderation]]",
        "gpu": "a lighthouse [[fail:GPU_PROVIDER_ERROR]]",
        "odd": "a lighthouse [[fail:mystery]]",
        "fine": "a lighthouse at noon",
    }
    jobs = floraq.write_manifest(
        batch="tiers",
        retry_failed_runs=retries,
        jobs=[rows_of("poster-maker", list(prompts.values()))],
    )
    done = floraq("submit", str(jobs))
    assert done.returncode == 1, done.stderr
    assert sandbox.stats()["runs_created"] == 5 + retries
    got = {
        r["inputs"]: (r["state"], r["failure_tier"], r["attempt"])
        for r in floraq.query("SELECT inputs, state, failure_tier, attempt FROM jobs")
    }
    tiers = {name: got[f'{{"prompt":"{prompt}"}}'] for name, prompt in prompts.items()}
    assert tiers == {
        "timeout": ("failed", "retry_now", 1 + retries),
        "moderated": ("failed", "change_input", 1),
        "gpu": ("failed", "retry_later", 1),
        "odd": ("failed", "report", 1),
        "fine": ("downloaded", None, 1),
    }


# -- a row the API answers with the same 500, again and again --------------------------------------


class _Poisoned(BaseHTTPRequestHandler):
    """Forwards to the sandbox, except POSTs carrying `ws_bad`: always 500 unknown_error."""

    upstream: str = ""
    poisoned_posts = 0
    client: httpx.Client

    def _forward(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        if self.command == "POST" and b"ws_bad" in body:
            type(self).poisoned_posts += 1
            self._answer(
                500,
                {"request-id": "req_poisoned"},
                b'{"error": {"code": "unknown_error", "message": "An unknown error occurred."}}',
            )
            return
        headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
        got = self.client.request(
            self.command, self.upstream + self.path, headers=headers, content=body
        )
        keep = {
            k: v
            for k, v in got.headers.items()
            if k.lower() in ("request-id", "idempotent-replayed", "retry-after", "content-type")
        }
        self._answer(got.status_code, keep, got.content)

    def _answer(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _forward

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def poisoned(sandbox: SandboxServer) -> Iterator[str]:
    """A base URL in front of the sandbox (the sandbox has no knob for a per-row 500)."""
    _Poisoned.upstream = sandbox.root_url
    _Poisoned.poisoned_posts = 0
    with httpx.Client(timeout=10) as client:
        _Poisoned.client = client
        server = ThreadingHTTPServer(("127.0.0.1", 0), _Poisoned)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield f"http://127.0.0.1:{server.server_address[1]}/api/v1"
        finally:
            server.shutdown()
            server.server_close()
            thread.join()


def test_same_500_again_and_again_stops_that_row_only(
    floraq: Floraq, sandbox: SandboxServer, poisoned: str
) -> None:
    """A row that always gets the same 500 stops after two rounds and is reported; others run."""
    prompts = ["a kite", "a kite over ws_bad", "a kite at dusk"]
    jobs = floraq.write_manifest(batch="poison", jobs=[rows_of("poster-maker", prompts)])
    done = floraq("submit", str(jobs), FLORA_BASE_URL=poisoned)
    assert done.returncode == 1, done.stderr
    assert floraq.states() == {"downloaded": 2, "failed": 1}
    [row] = status_json(floraq)["failures"]
    assert (row["error_code"], row["failure_tier"], row["request_id"]) == (
        "unknown_error",
        "report",
        "req_poisoned",
    )
    assert _Poisoned.poisoned_posts == 6  # three identical answers, twice
    assert sandbox.stats()["runs_created"] == 2


# -- expired output URLs ---------------------------------------------------------------------------


@pytest.mark.parametrize("status", [404, 410])  # 403: the fault mix
def test_expired_urls_are_refreshed_by_polling_never_by_rerunning(
    floraq: Floraq, sandbox: SandboxServer, status: int
) -> None:
    """URLs that died while floraq was down are fetched again from a fresh poll: no new run."""
    sandbox.configure(url_ttl=0.3, expired_status=status, duration=[1, 3])
    jobs = manifest(floraq, 4, concurrency=1)
    assert floraq("submit", str(jobs), FLORAQ_CRASH_AT="mid_download").returncode < 0
    time.sleep(0.4)
    posts = sandbox.stats()["requests"][POSTS]
    done = floraq("resume", "-v")
    assert done.returncode == 0, done.stderr
    assert f"-> {status}" in done.stderr
    assert sandbox.stats()["requests"][POSTS] == posts
    assert assert_sound(floraq, sandbox, 4) == {"downloaded": 4}


def test_urls_that_never_work_mark_the_output_expired(
    floraq: Floraq, sandbox: SandboxServer
) -> None:
    """When even fresh URLs are dead, the row is `expired` and reported; nothing is re-run."""
    sandbox.configure(url_ttl=0.001, duration=[1, 3])
    done = floraq("submit", str(manifest(floraq, 3)))
    assert done.returncode == 1, done.stderr
    assert floraq.states() == {"expired": 3}
    assert sandbox.stats()["runs_created"] == 3
    assert {f["error_code"] for f in status_json(floraq)["failures"]} == {"output_expired"}
    assert {o["state"] for o in floraq.query("SELECT state FROM outputs")} == {"expired"}
    assert output_files(floraq.cwd / "outputs", "*.*") == []
