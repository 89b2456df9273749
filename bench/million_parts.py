"""`python -m bench.million_parts [--rows N]`: where `submit`'s per-row CPU goes, part by part.

In one process, no sandbox and no ledger checks: the bench's CSV job (``write_csv_manifest``)
parsed, checked, spooled, read back and inserted into a fresh SQLite ledger in one
transaction, each part timed with ``time.process_time``. Each part's output is kept in a
list for the next, so the cyclic garbage collector is switched off: it would scan those
lists again and again, which the streaming command never holds. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import gc
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.harness import write_csv_manifest
from floraq.admission import _RowCheck, check_rows
from floraq.core.technique import Technique
from floraq.ledger import open_ledger
from floraq.local_inputs import LocalFiles
from floraq.manifest_files import iter_job_rows, load_manifest
from floraq.row_spool import RowSpool

TECHNIQUE = Technique.from_api(
    "portrait-enhancer",
    {"technique_id": "tech_portrait01", "name": "Portrait Enhancer", "run_cost": 0.05,
     "inputs": [{"id": "input_image", "name": "Input Image", "type": "imageUrl"}],
     "outputs": [{"id": "output_image", "name": "Output Image", "type": "imageUrl"}]},
)  # fmt: skip


def _cpu(work: Callable[[], Any]) -> tuple[float, Any]:
    started = time.process_time()
    out = work()
    return time.process_time() - started, out


def measure(folder: Path, rows: int) -> dict[str, float]:
    """CPU seconds per part for ``rows`` rows."""
    gc.disable()
    manifest = load_manifest(write_csv_manifest(folder / "jobs.yaml", batch="parts", rows=rows))
    job = manifest.jobs[0]
    ids = [slot.id for slot in TECHNIQUE.inputs]
    found: dict[str, float] = {}
    found["csv"], parsed = _cpu(lambda: list(iter_job_rows(manifest, job, input_ids=ids)))
    check = _RowCheck(manifest, job, TECHNIQUE, LocalFiles())
    found["row checks + keys"], _ = _cpu(lambda: [check(row) for row in parsed])
    techniques: dict[str, Technique | None] = {TECHNIQUE.slug: TECHNIQUE}
    every, checked = _cpu(
        lambda: list(check_rows(manifest, techniques, [], None, Counter(), LocalFiles()))
    )
    found["duplicate check + loop"] = every - found["csv"] - found["row checks + keys"]
    spool = RowSpool()
    found["spool write"], _ = _cpu(lambda: [spool.add(c) for c in checked])
    found["spool read"], back = _cpu(lambda: list(spool.rows()))
    ledger = open_ledger(folder / "state" / "floraq.db")
    ledger.save_batch(manifest.batch, manifest_path="jobs.yaml", output_dir=str(
        manifest.output_dir), concurrency=None, max_cost=None, retry_failed_runs=0)  # fmt: skip

    def insert() -> None:
        with ledger.transaction():
            for start in range(0, len(back), 1000):
                ledger.insert_jobs([c.job for c in back[start : start + 1000]])

    found["ledger insert_jobs"], _ = _cpu(insert)
    ledger.close()
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.million_parts", description=__doc__)
    parser.add_argument("--rows", type=int, default=100_000)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="floraq-parts-") as tmp:
        found = measure(Path(tmp), args.rows)
    for part, cpu in found.items():
        print(f"{part:24s} {cpu:7.2f} s CPU  {cpu / args.rows * 1e6:6.1f} us/row")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
