"""End to end: the budget cap, cost accounting and `retry`, against the real sandbox."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
import yaml
from conftest import Floraq, status_json

from floraq.sandbox import SandboxServer

IMG = "https://storage.googleapis.com/floraq-demo/{n}.jpg"
PORTRAIT = 0.05  # portrait-enhancer's run_cost in the sandbox catalog
CATALOG = Path(__file__).resolve().parents[1] / "floraq" / "sandbox" / "catalog.yaml"


def portraits(floraq: Floraq, rows: int, *, batch: str = "money", **manifest: object) -> Path:
    return floraq.write_manifest(
        batch=batch,
        jobs=[
            {
                "technique": "portrait-enhancer",
                "rows": [{"input_image": IMG.format(n=n)} for n in range(rows)],
            }
        ],
        **manifest,
    )


def run_watching_charges(floraq: Floraq, sandbox: SandboxServer, *args: str) -> tuple[int, float]:
    """Run floraq while sampling the sandbox's charged total; (exit code, highest total)."""
    proc = floraq.start(*args)
    highest = 0.0
    while proc.poll() is None:
        highest = max(highest, sandbox.stats()["charged_total"])
        time.sleep(0.005)
    proc.communicate()
    return proc.returncode, max(highest, sandbox.stats()["charged_total"])


def test_cap_below_the_batch_cost_stops_at_the_cap_and_pauses(
    floraq: Floraq, sandbox: SandboxServer
) -> None:
    """12 rows at 0.05 under a 0.32 cap: 6 done, 6 queued, exit 4, never charged past 0.32."""
    manifest = portraits(floraq, 12, max_cost=0.32)
    code, highest = run_watching_charges(floraq, sandbox, "submit", str(manifest))
    assert code == 4
    assert floraq.states() == {"downloaded": 6, "queued": 6}
    assert highest <= 0.32 and sandbox.stats()["runs_created"] == 6
    done = floraq("resume", "--max-cost", "0.6")
    assert done.returncode == 0, done.stderr
    assert floraq.states() == {"downloaded": 12}
    assert abs(sandbox.stats()["charged_total"] - 12 * PORTRAIT) < 1e-9


def test_max_cost_flag_wins_over_the_manifest(floraq: Floraq, sandbox: SandboxServer) -> None:
    """`--max-cost 0.2` beats the manifest's 5.00: 4 runs, and the pause is explained."""
    manifest = portraits(floraq, 8, max_cost=5.0, concurrency=8)
    done = floraq("submit", str(manifest), "--max-cost", "0.2")
    assert done.returncode == 4, done.stderr
    assert sandbox.stats()["runs_created"] == 4
    assert "paused (budget)" in done.stderr and "floraq resume" in done.stderr


def test_plan_prices_each_technique_and_says_the_cap_is_exceeded(
    floraq: Floraq, sandbox: SandboxServer
) -> None:
    """`plan`: rows x run_cost per technique, the total, and whether it fits max_cost."""
    manifest = floraq.write_manifest(
        batch="priced",
        max_cost=0.5,
        jobs=[
            {"technique": "portrait-enhancer", "rows": [{"input_image": IMG.format(n=1)}] * 1},
            {"technique": "poster-maker", "rows": [{"prompt": f"p{n}"} for n in range(10)]},
        ],
    )
    done = floraq("plan", str(manifest))
    assert done.returncode == 4, done.stdout + done.stderr  # submit would pause at the cap
    assert re.search(r"^portrait-enhancer\s+1\s+0\.0500\s+0\.0500$", done.stdout, re.M)
    assert re.search(r"^poster-maker\s+10\s+0\.0800\s+0\.8000$", done.stdout, re.M)
    assert re.search(r"^total\s+11\s+0\.8500$", done.stdout, re.M)
    assert "max_cost 0.50 USD: EXCEEDS the cap by 0.35 USD" in done.stdout
    assert sandbox.stats()["runs_created"] == 0


@pytest.mark.parametrize(
    ("max_cost", "line", "code"),
    [
        (0.001, "max_cost 0.001 USD: EXCEEDS the cap by 0.159 USD", 4),
        (0.16, "max_cost 0.16 USD: fits", 0),  # the total equals the cap: it fits
        (0.1601, "max_cost 0.1601 USD: fits", 0),
    ],
    ids=["a-tenth-of-a-cent", "exactly-the-total", "a-hair-over"],
)
def test_plan_compares_cost_and_cap_exactly(
    floraq: Floraq, max_cost: float, line: str, code: int
) -> None:
    """Two posters at 0.08: the cap is shown as given and compared without rounding."""
    manifest = floraq.write_manifest(
        batch="exact",
        max_cost=max_cost,
        jobs=[{"technique": "poster-maker", "rows": [{"prompt": "a"}, {"prompt": "b"}]}],
    )
    done = floraq("plan", str(manifest))
    assert done.returncode == code, done.stdout + done.stderr
    assert line in done.stdout.splitlines()


def test_price_change_since_the_batch_started_is_reported(
    floraq: Floraq, sandbox: SandboxServer
) -> None:
    """FLORA raises run_cost mid-batch: submit and status say the cost plan no longer holds."""
    assert floraq("submit", str(portraits(floraq, 2))).returncode == 0
    catalog = yaml.safe_load(CATALOG.read_text())
    catalog["techniques"][0]["run_cost"] = 0.07
    (floraq.cwd / "catalog.yaml").write_text(yaml.safe_dump(catalog))
    sandbox.configure(catalog=str(floraq.cwd / "catalog.yaml"))
    done = floraq("submit", str(portraits(floraq, 6)))
    assert done.returncode == 0, done.stderr
    assert "the price of portrait-enhancer changed since the batch started" in done.stderr
    assert "2 row(s) at 0.0500, 4 row(s) at 0.0700; run_cost is now 0.0700" in done.stderr
    change = status_json(floraq)["cost_changes"][0]
    assert change["technique"] == "portrait-enhancer" and change["run_cost"] == 0.07
    assert abs(sandbox.stats()["charged_total"] - (2 * 0.05 + 4 * 0.07)) < 1e-9


def test_unsettled_charges_make_the_total_a_floor(floraq: Floraq, sandbox: SandboxServer) -> None:
    """While FLORA has not reported charged_cost, totals are marked as a floor everywhere."""
    sandbox.configure(charged_cost_delay=60)
    manifest = floraq.write_manifest(
        batch="late",
        jobs=[
            {"technique": "portrait-enhancer", "rows": [{"input_image": IMG.format(n=1)}]},
            {"technique": "poster-maker", "rows": [{"prompt": "a lighthouse"}]},
        ],
    )
    done = floraq("submit", str(manifest))
    assert done.returncode == 0, done.stderr
    assert "charged 0.0000 USD (at least: 2 charge(s) not settled yet)" in done.stdout
    assert "portrait-enhancer: charged >=0.0000 USD, estimated 0.0500 USD" in done.stdout
    report = status_json(floraq)["batches"]["late"]
    assert report["charged_cost_is_floor"] and report["estimated_cost"] == 0.13
    assert report["technique_costs"]["poster-maker"]["charged_cost_is_floor"]


def test_retry_failed_until_every_row_is_done(floraq: Floraq, sandbox: SandboxServer) -> None:
    """failure_rate 0.3: `retry --failed` ends with every row done; runs = rows + failures."""
    sandbox.configure(failure_rate=0.3)
    manifest = portraits(floraq, 20, retry_failed_runs=0)
    first = floraq("submit", str(manifest))
    failures = floraq.states().get("failed", 0)
    assert first.returncode == 1 and failures > 0, first.stderr
    before = {r["id"]: r["idempotency_key"] for r in floraq.query("SELECT * FROM jobs")}
    for _ in range(10):
        done = floraq("retry", "--failed")
        if done.returncode == 0:
            break
        assert done.returncode == 1, done.stderr
        failures += floraq.states()["failed"]
    assert done.returncode == 0, done.stderr
    assert floraq.states() == {"downloaded": 20}
    assert sandbox.stats()["runs_created"] == 20 + failures
    jobs = floraq.query("SELECT id, attempt, idempotency_key FROM jobs")
    retried = [j for j in jobs if j["attempt"] > 1]
    assert all(before[j["id"]] == j["idempotency_key"] for j in jobs if j["attempt"] == 1)
    assert all(before[j["id"]] != j["idempotency_key"] for j in retried)
    history = floraq.query("SELECT detail FROM events WHERE kind = 'attempt_archived'")
    assert len(history) == failures
    assert all(json.loads(h["detail"])["run_id"].startswith("run_") for h in history)


def test_retry_needs_to_be_told_which_rows(floraq: Floraq, sandbox: SandboxServer) -> None:
    """`retry` with no state flag is a usage error that names the flags."""
    assert floraq("submit", str(portraits(floraq, 1))).returncode == 0
    done = floraq("retry")
    assert done.returncode == 2
    assert "--failed, --rejected, --expired, --download-failed and/or --unknown" in done.stderr


def test_retry_queue_only_leaves_the_rows_for_resume(
    floraq: Floraq, sandbox: SandboxServer
) -> None:
    """`retry --queue-only` re-queues failed rows with a new attempt and sends nothing."""
    manifest = floraq.write_manifest(
        batch="q",
        retry_failed_runs=0,
        jobs=[{"technique": "poster-maker", "rows": [{"prompt": "[[fail:model_timeout]] x"}]}],
    )
    assert floraq("submit", str(manifest)).returncode == 1
    done = floraq("retry", "--failed", "--queue-only")
    assert done.returncode == 0, done.stderr
    assert "1 row(s) given a new attempt: failed 1" in done.stdout
    assert floraq.query("SELECT state, attempt, error_code FROM jobs") == [
        {"state": "queued", "attempt": 2, "error_code": None}
    ]
    assert sandbox.stats()["runs_created"] == 1


def test_retry_unknown_outcome_sends_a_new_attempt(floraq: Floraq, sandbox: SandboxServer) -> None:
    """A 409 leaves a row unknown (status: a floor); `retry --unknown` runs it with a new key."""
    sandbox.configure(idempotency="suppress")
    manifest = portraits(floraq, 1)
    crashed = floraq("submit", str(manifest), FLORAQ_CRASH_AT="after_post_before_commit")
    assert crashed.returncode != 0
    assert floraq("resume").returncode == 1
    assert floraq.states() == {"unknown_outcome": 1}
    assert status_json(floraq)["batches"]["money"]["charged_cost_is_floor"]
    done = floraq("retry", "--unknown")
    assert done.returncode == 0, done.stderr
    assert floraq.query("SELECT state, attempt FROM jobs") == [
        {"state": "downloaded", "attempt": 2}
    ]
    assert sandbox.stats()["runs_created"] == 2


def test_retry_expired_counts_both_charges(floraq: Floraq, sandbox: SandboxServer) -> None:
    """An output URL that died before download: `retry --expired` pays again, and says so."""
    sandbox.configure(url_ttl=0.001)
    assert floraq("submit", str(portraits(floraq, 1))).returncode == 1
    assert floraq.states() == {"expired": 1}
    sandbox.configure(url_ttl=3600)
    done = floraq("retry", "--expired")
    assert done.returncode == 0, done.stderr
    assert floraq.states() == {"downloaded": 1} and sandbox.stats()["runs_created"] == 2
    report = status_json(floraq)["batches"]["money"]
    assert abs(report["charged_cost"] - 2 * PORTRAIT) < 1e-9
    assert abs(sandbox.stats()["charged_total"] - report["charged_cost"]) < 1e-9
    (old,) = floraq.query("SELECT detail FROM events WHERE kind = 'attempt_archived'")
    assert json.loads(old["detail"])["outputs"][0]["state"] == "expired"


def test_retry_rejected_skips_rows_that_are_still_invalid(
    floraq: Floraq, sandbox: SandboxServer
) -> None:
    """A row rejected for an http:// URL is not sent again: it is listed as still invalid."""
    manifest = floraq.write_manifest(
        batch="bad",
        jobs=[
            {
                "technique": "portrait-enhancer",
                "rows": [{"input_image": IMG.format(n=1)}, {"input_image": "http://x.test/a.jpg"}],
            }
        ],
    )
    assert floraq("submit", str(manifest), "--skip-invalid").returncode == 1
    done = floraq("retry", "--rejected")
    assert done.returncode == 0, done.stderr
    assert "skipped: " in done.stderr and "still invalid" in done.stderr
    assert "nothing to retry" in done.stdout
    assert floraq.states() == {"downloaded": 1, "rejected": 1}
    assert sandbox.stats()["runs_created"] == 1


def test_resume_quotes_and_caps_at_todays_price(floraq: Floraq, sandbox: SandboxServer) -> None:
    """A price rise between pause and resume: the resumed rows are quoted, and capped, anew."""
    manifest = portraits(floraq, 6, max_cost=0.1)
    assert floraq("submit", str(manifest)).returncode == 4
    catalog = yaml.safe_load(CATALOG.read_text())
    catalog["techniques"][0]["run_cost"] = 0.1
    (floraq.cwd / "catalog.yaml").write_text(yaml.safe_dump(catalog))
    sandbox.configure(catalog=str(floraq.cwd / "catalog.yaml"))
    done = floraq("resume", "--max-cost", "0.3")
    assert done.returncode == 4, done.stderr
    quotes = floraq.query(
        "SELECT estimated_micros / 1e6 AS q, COUNT(*) AS n FROM jobs GROUP BY q ORDER BY q"
    )
    assert [(r["q"], r["n"]) for r in quotes] == [(0.05, 4), (0.1, 2)]
    assert floraq.states() == {"downloaded": 4, "queued": 2}
    assert sandbox.stats()["charged_total"] <= 0.3 + 1e-9


def raise_price(floraq: Floraq, sandbox: SandboxServer, run_cost: float) -> None:
    """The sandbox's portrait-enhancer costs ``run_cost`` from now on."""
    catalog = yaml.safe_load(CATALOG.read_text())
    catalog["techniques"][0]["run_cost"] = run_cost
    (floraq.cwd / "catalog.yaml").write_text(yaml.safe_dump(catalog))
    sandbox.configure(catalog=str(floraq.cwd / "catalog.yaml"))


def test_a_price_raised_mid_batch_is_quoted_and_capped_at_once(
    floraq: Floraq, sandbox: SandboxServer
) -> None:
    """0.05 → 0.10 after 2 runs, under a 0.50 cap: FLORA never charges past 0.50.

    Ten rows fit the cap at the old price; the claims not sent yet are quoted again at
    the new one before their POST, so the rows the cap cannot pay stay queued (exit 4)
    and the warning names the price FLORA asks now.
    """
    sandbox.configure(latency=0.2)  # POSTs leave one by one while the price changes
    manifest = portraits(floraq, 20, max_cost=0.5, concurrency=1)
    proc = floraq.start("submit", str(manifest))
    highest, raised = 0.0, False
    while proc.poll() is None:
        stats = sandbox.stats()
        highest = max(highest, stats["charged_total"])
        if not raised and stats["runs_created"] >= 2:
            raise_price(floraq, sandbox, 0.1)
            raised = True
        time.sleep(0.005)
    _, stderr = proc.communicate()
    highest = max(highest, sandbox.stats()["charged_total"])
    assert raised and proc.returncode == 4, stderr
    assert highest <= 0.5 + 1e-9, f"charged {highest} past the 0.50 cap"
    states = floraq.states()
    assert states["queued"] >= 10 and set(states) == {"downloaded", "queued"}
    assert "run_cost is now 0.1000" in stderr
    assert "paused (budget)" in stderr
    saved = floraq.query("SELECT run_cost_micros FROM techniques")
    assert [r["run_cost_micros"] for r in saved] == [100_000]
    charged = status_json(floraq)["batches"]["money"]["charged_cost"]
    assert abs(sandbox.stats()["charged_total"] - charged) < 1e-9
