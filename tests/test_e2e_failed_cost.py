"""End to end: a failed run that FLORA charged costs the same in the report as in
`status --json` (and in `export`), for the row and for the totals, to the micro-dollar."""

from __future__ import annotations

import csv
import io
import re
from decimal import Decimal

from conftest import Floraq, status_json

from floraq.errors import ExitCode
from floraq.sandbox import SandboxServer

# poster-maker costs 0.08; a failed run keeps a third of it: 0.026667 (micro-dollars).
KEPT = Decimal("0.026667")
PROMPTS = {
    "kite": "a kite",  # completes: 0.08
    "boat": "a boat [[fail:safety_blocked]]",  # fails once, not re-run: 0.026667
    "cat": "a cat [[fail:model_timeout]]",  # fails, re-run once, fails again: 2 x 0.026667
}
COSTS = {"kite": Decimal("0.08"), "boat": KEPT, "cat": 2 * KEPT}


def _tiles(page: str) -> dict[str, str]:
    """Each tile's detail, by its row key."""
    found: dict[str, str] = {}
    for tile in re.findall(r"<article .*?</article>", page, flags=re.S):
        key = re.search(r'<span class="key">([^<]*)</span>', tile)
        assert key is not None
        found[key.group(1)] = tile
    return found


def test_a_charged_failure_reads_the_same_in_the_report_as_in_status(
    floraq: Floraq, sandbox: SandboxServer
) -> None:
    sandbox.configure(failure_charge=1 / 3)
    (floraq.cwd / "rows.csv").write_text(
        "sku,prompt\n" + "".join(f"{k},{p}\n" for k, p in PROMPTS.items())
    )
    jobs = floraq.write_manifest(
        batch="charged",
        jobs=[{"technique": "poster-maker", "rows_from": {"csv": "rows.csv", "key": "sku"}}],
    )
    done = floraq("submit", str(jobs))
    assert done.returncode == ExitCode.FAILURES, done.stdout + done.stderr
    total = sum(COSTS.values(), Decimal(0))
    assert total == Decimal("0.160001")
    assert Decimal(str(sandbox.stats()["charged_total"])) == total

    status = status_json(floraq)
    batch = status["batches"]["charged"]
    assert Decimal(str(batch["charged_cost"])) == total and not batch["charged_cost_is_floor"]
    assert "charged 0.160001 USD, estimated" in floraq("status").stdout  # the table too
    failed = {f["row_key"]: f for f in status["failures"]}
    assert {f["state"] for f in status["failures"]} == {"failed"} and len(failed) == 2
    exported = {
        r["row_key"]: r
        for r in csv.DictReader(io.StringIO(floraq("export", "--format", "csv").stdout))
    }

    assert floraq("report", "-o", "report.html").returncode == 0
    page = (floraq.cwd / "report.html").read_text()
    summary = re.search(r'<span class="charged">([^<]*)</span>', page)
    assert summary is not None and Decimal(summary.group(1)) == total
    tiles = _tiles(page)
    for key, cost in COSTS.items():
        shown = re.search(r"<dd>charged ([0-9.]+) USD", tiles[key])
        assert shown is not None, tiles[key]
        assert Decimal(shown.group(1)) == cost, key
        assert Decimal(exported[key]["charged_cost"]) == cost, key
    for key in ("boat", "cat"):
        assert Decimal(str(failed[key]["charged_cost"])) == COSTS[key], key
        assert repr(failed[key]["charged_cost"]) == str(COSTS[key])  # 0.026667, exactly
