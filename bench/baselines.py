"""What a user writes without floraq: the reference's loop, and the same loop in 8 threads.

Each row: POST the run, sleep the fixed poll interval (the reference's 2 s, scaled), GET
until ``completed`` or ``failed``, download every output with a plain GET, write it to a
file, next row. No ledger, no retries, no adaptive anything. The POST carries the
idempotency key floraq would send for the same row, only so the sandbox draws the same
run durations for both (the sandbox derives a run's length from seed, slug and key).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx

POLL_EVERY = 2.0  # seconds, as the reference says ("poll every 2-5 seconds"), before scaling


@dataclass(frozen=True, slots=True)
class Seen:
    """When the baseline saw one run finished (epoch seconds), and how many polls it took."""

    run_id: str
    seen_at: float
    polls: int


@dataclass(frozen=True, slots=True)
class BaselineRow:
    """One row to run: the technique's input list and the key floraq would use."""

    number: int
    inputs: list[dict[str, str]]
    idempotency_key: str


def run_rows(
    rows: Sequence[BaselineRow],
    *,
    base_url: str,
    api_key: str,
    slug: str,
    out_dir: Path,
    workers: int,
    poll_every: float,
) -> list[Seen]:
    """Run every row with ``workers`` threads, each doing submit → poll → download in turn."""
    out_dir.mkdir(parents=True, exist_ok=True)
    local = threading.local()
    clients: list[httpx.Client] = []
    lock = threading.Lock()

    def client() -> httpx.Client:
        if not hasattr(local, "client"):
            local.client = httpx.Client(
                base_url=base_url,
                headers={"Authorization": f"Bearer {api_key}"},
                timeout=60,
                trust_env=False,
            )
            with lock:
                clients.append(local.client)
        http: httpx.Client = local.client
        return http

    def one(row: BaselineRow) -> Seen:
        http = client()
        created = http.post(
            f"/techniques/{slug}/runs",
            json={"inputs": row.inputs, "mode": "async", "idempotency_key": row.idempotency_key},
        )
        created.raise_for_status()
        run_id = created.json()["run_id"]
        polls = 0
        while True:
            time.sleep(poll_every)
            answer = http.get(f"/techniques/{slug}/runs/{run_id}")
            answer.raise_for_status()
            polls += 1
            run = answer.json()
            if run["status"] in ("completed", "failed"):
                break
        seen_at = time.time()
        for output in run.get("outputs") or []:
            media = httpx.get(output["url"], timeout=60, trust_env=False)
            media.raise_for_status()
            (out_dir / f"{row.number:07d}-{output['output_id']}").write_bytes(media.content)
        return Seen(run_id=run_id, seen_at=seen_at, polls=polls)

    try:
        if workers == 1:
            return [one(row) for row in rows]
        with ThreadPoolExecutor(max_workers=workers) as pool:
            return list(pool.map(one, rows))
    finally:
        for http in clients:
            http.close()
