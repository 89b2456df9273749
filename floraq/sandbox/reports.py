"""What the sandbox tells about itself: its counters, and every run with its exact outputs."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from floraq.sandbox.billing import Billing, usd
from floraq.sandbox.runs import Run, RunStatus, render
from floraq.sandbox.schedule import ideal_makespan

FAULT_NAMES = ("5xx", "429", "drop", "truncate")


@dataclass(slots=True)
class Counters:
    """What ``/_sandbox/stats`` reports; reset with the runs."""

    requests: Counter[str] = field(default_factory=Counter)
    runs_created: int = 0
    idempotent_replays: int = 0
    idempotency_rejections: int = 0
    downloads: int = 0
    media_requests: int = 0
    media_auth_rejections: int = 0
    assets_created: int = 0
    asset_replays: int = 0
    upload_requests: int = 0
    uploads: int = 0  # complete file bodies the upload host took
    upload_bytes: int = 0
    upload_auth_rejections: int = 0
    upload_faults: int = 0  # uploads answered 503 by the upload_5xx_rate knob
    faults: Counter[str] = field(default_factory=Counter)
    max_in_flight: int = 0  # the most API requests being answered at once


def stats_json(
    counters: Counters, billing: Billing, runs: Sequence[Run], capacity: int
) -> dict[str, Any]:
    """The counters as ``GET /_sandbox/stats`` returns them (settle the billing first)."""
    c = counters
    first = min((r.created for r in runs), default=0.0)
    last = max((r.ended for r in runs), default=0.0)
    durations = [r.ended - r.started for r in runs]
    return {
        "requests": dict(sorted(c.requests.items())),
        "runs_created": c.runs_created,
        "idempotent_replays": c.idempotent_replays,
        "idempotency_rejections": c.idempotency_rejections,
        "charged_total": usd(billing.charged_micros),
        "balance": usd(billing.balance_micros),
        "downloads": c.downloads,
        "media_requests": c.media_requests,
        "media_auth_rejections": c.media_auth_rejections,
        "assets_created": c.assets_created,
        "asset_replays": c.asset_replays,
        "upload_requests": c.upload_requests,
        "uploads": c.uploads,
        "upload_bytes": c.upload_bytes,
        "upload_auth_rejections": c.upload_auth_rejections,
        "upload_faults": c.upload_faults,
        "faults": {name: c.faults[name] for name in FAULT_NAMES},
        "max_in_flight": c.max_in_flight,
        "schedule": {
            "capacity": capacity,
            "ideal_makespan": ideal_makespan(durations, capacity) if runs else 0.0,
            "actual_makespan": last - first if runs else 0.0,
        },
    }


def run_report(run: Run, now: float) -> dict[str, Any]:
    """One run as ``GET /_sandbox/runs`` lists it, with the sha256 of each output's bytes."""
    status = run.status(now)
    done = status in (RunStatus.COMPLETED, RunStatus.FAILED)
    charged = None
    if done:
        charged = usd(run.charged_micros)
    return {
        "run_id": run.run_id,
        "slug": run.technique.slug,
        "idempotency_key": run.idempotency_key,
        "inputs": [{"id": i, "type": t, "value": v} for i, t, v in run.inputs],
        "status": status,
        "charged_cost": charged,
        "created_at": run.created_ms,
        "completed_at": run.epoch_ms(run.ended) if done else None,
        "error_code": run.failure[0] if done and run.failure else None,
        "outputs": _outputs(run) if status is RunStatus.COMPLETED else [],
    }


def _outputs(run: Run) -> list[dict[str, Any]]:
    outputs = []
    for port in run.technique.outputs:
        file = render(run, port)
        outputs.append(
            {
                "output_id": port.id,
                "type": port.type,
                "content_type": file.content_type,
                "sha256": file.sha256,
                "bytes": len(file.body),
            }
        )
    return outputs
