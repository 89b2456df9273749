"""What `status` and `batches` show, as lines of text and as JSON documents (no printing:
``floraq.console`` prints them), and the one way costs are written for people."""

from __future__ import annotations

import time
from collections import defaultdict
from decimal import Decimal
from typing import Any

from floraq.core.lifecycle import ACTIVE, PROBLEM_STATES, JobState
from floraq.core.money import CostTotals, as_json, totals_by, usd
from floraq.results import BatchSummary, StatusResult, limit_json, limit_line


def status_lines(result: StatusResult) -> list[str]:
    """The status table, the warnings, the workers, the rows that need a look, the limits."""
    lines = _status_rows(result)
    lines += [limit_line(limit) for limit in result.api_limits]  # what the next start uses
    return lines


def _status_rows(result: StatusResult) -> list[str]:
    lines: list[str] = []
    out = lines.append
    per_batch: dict[str, dict[str, dict[str, int]]] = defaultdict(lambda: defaultdict(dict))
    for count in result.counts:
        per_batch[count.batch][count.technique][count.state] = count.count
    if not per_batch:
        return ["no jobs in the ledger"]
    states = [s.value for s in JobState]
    for batch, techniques in per_batch.items():
        rows = [c for c in result.counts if c.batch == batch]
        sub = StatusResult(counts=rows, failures=[])
        out(f"batch {batch}: {sub.total()} row(s); {cost_text(sub)}")
        shown = [s for s in states if any(s in t for t in techniques.values())]
        costs = sub.totals_by_technique()
        out(
            f"  {'technique':<26}"
            + "".join(f" {s:>15}" for s in shown)
            + f" {'charged':>12} {'estimated':>12}"
        )
        for slug, counts in techniques.items():
            t = costs[(batch, slug)]
            out(
                f"  {slug:<26}"
                + "".join(f" {counts.get(s, 0):>15}" for s in shown)
                + f" {money(t.charged, t.unsettled):>12} {money(t.estimated):>12}"
            )
    for change in result.cost_changes:
        out(f"warning: {change.describe()}")
    for line in result.workers.lines() if result.workers is not None else []:
        out(line)
    if result.failures:
        out("")
        out("rows that need a look:")
        for f in result.failures:
            rid = f" request-id {f['request_id']}" if f.get("request_id") else ""
            run = f" run {f['run_id']}" if f.get("run_id") else ""
            tier = f" [{f['failure_tier']}]" if f.get("failure_tier") else ""
            out(
                f"  {f['location']}: {f['state']}{tier} {f.get('error_code') or ''}:"
                f" {f.get('error_message') or ''}{run}{rid}"
            )

    return lines


def status_document(result: StatusResult) -> dict[str, Any]:
    """``status --json``: amounts are Decimal (written as JSON numbers by the caller)."""
    batches: dict[str, Any] = {}
    for c in result.counts:
        b = batches.setdefault(c.batch, {"rows": 0, "states": {}, "techniques": {}})
        b["rows"] += c.count
        b["states"][c.state] = b["states"].get(c.state, 0) + c.count
        b["techniques"].setdefault(c.technique, {})[c.state] = c.count
    for name, totals in totals_by((c.batch, c.totals) for c in result.counts).items():
        batches[name].update(_totals_json(totals))
    for (name, slug), totals in result.totals_by_technique().items():
        batches[name].setdefault("technique_costs", {})[slug] = _totals_json(totals)
    changes = [
        {
            "batch": c.batch,
            "technique": c.technique,
            "quotes": [{"run_cost": as_json(price), "rows": n} for price, n in c.quotes],
            "run_cost": None if c.run_cost is None else as_json(c.run_cost),
            "charged_other_than_quoted": c.differs,
            "message": c.describe(),
        }
        for c in result.cost_changes
    ]
    data = {"batches": batches, "failures": result.failures, "cost_changes": changes}
    data["api_limits"] = [limit_json(row) for row in result.api_limits]
    if result.workers is not None:
        data.update(result.workers.as_json())
    return data


def _totals_json(totals: CostTotals) -> dict[str, Any]:
    """The money keys of ``status --json``, amounts as JSON numbers written from Decimal."""
    return {
        "charged_cost": as_json(totals.charged),
        "estimated_cost": as_json(totals.estimated),
        "unsettled_runs": totals.unsettled,
        "charged_cost_is_floor": totals.is_floor,
    }


def cost_text(status: StatusResult) -> str:
    floor = f" (at least: {status.unsettled} charge(s) not settled yet)" if status.unsettled else ""
    return f"charged {money(status.charged)} USD{floor}, estimated {money(status.estimated)} USD"


def technique_cost_lines(status: StatusResult) -> list[str]:
    costs = status.totals_by_technique()
    if len(costs) < 2:
        return []
    return [
        f"  {s}: charged {money(t.charged, t.unsettled)} USD, estimated {money(t.estimated)} USD"
        for (_, s), t in costs.items()
    ]


def money(amount: Decimal, unsettled: int = 0) -> str:
    """A cost as status shows it: 4 decimals, more when its micro-dollars are not zero (as the
    report and status --json have it); ">=" marks a floor (charges not settled yet)."""
    return f"{'>=' if unsettled else ''}{usd(amount, places=4)}"


def batches_lines(items: list[BatchSummary]) -> list[str]:
    if not items:
        return ["no batches in the ledger"]
    lines: list[str] = []
    out = lines.append
    out(
        f"{'batch':<30} {'rows':>7} {'done':>7} {'problems':>9} {'active':>7}"
        f" {'charged':>12} {'estimated':>12}  last activity"
    )
    for b in items:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(b.last_activity))
        out(
            f"{b.name:<30} {b.rows:>7} {b.states.get('downloaded', 0):>7}"
            f" {b.count(PROBLEM_STATES):>9} {b.count(ACTIVE):>7}"
            f" {money(b.charged, b.unsettled):>12} {money(b.estimated):>12}  {when}"
        )

    return lines


def batches_document(items: list[BatchSummary]) -> dict[str, Any]:
    data = [
        {
            "batch": b.name,
            "rows": b.rows,
            "states": b.states,
            "charged_cost": as_json(b.charged),
            "charged_cost_is_floor": b.unsettled > 0,
            "estimated_cost": as_json(b.estimated),
            "last_activity": b.last_activity,
        }
        for b in items
    ]
    return {"batches": data}
