"""`python -m bench.child ARGS`: the real `floraq ARGS`, reporting what only the process knows.

It calls ``floraq.cli.main`` exactly as the `floraq` script does. At exit it writes, to the
file named by ``BENCH_CHILD_REPORT``, the ledger commits (every ``Ledger`` counts its own),
its own CPU time and peak RSS, and when it started and ended (epoch seconds). Nothing in
floraq is changed: ``Ledger.__init__`` is wrapped only to find the instances.
"""

from __future__ import annotations

import time

STARTED = time.time()

import atexit  # noqa: E402 - the clock above must run before the imports are paid for
import json  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402
import sys  # noqa: E402
from typing import Any  # noqa: E402

from floraq import cli  # noqa: E402
from floraq.ledger import Ledger  # noqa: E402

REPORT_ENV = "BENCH_CHILD_REPORT"

_ledgers: list[Ledger] = []
_original_init = Ledger.__init__


def _tracking_init(self: Ledger, *args: Any, **kwargs: Any) -> None:
    _original_init(self, *args, **kwargs)
    _ledgers.append(self)


def _write_report() -> None:
    path = os.environ.get(REPORT_ENV)
    if not path:
        return
    usage = resource.getrusage(resource.RUSAGE_SELF)
    report = {
        "started": STARTED,
        "imported": IMPORTED,
        "ended": time.time(),
        "commits": sum(ledger.commits for ledger in _ledgers),
        "cpu_user": usage.ru_utime,
        "cpu_sys": usage.ru_stime,
        "max_rss_kb": _peak_rss_kb(),
    }
    with open(path, "w", encoding="utf-8") as f:
        json.dump(report, f)


def _peak_rss_kb() -> int:
    """This process's peak RSS (VmHWM) in KiB.

    Not ``ru_maxrss``: Linux carries the pre-exec image's peak across exec, so a child
    spawned from a big parent would report at least the parent's size.
    """
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


IMPORTED = time.time()

if __name__ == "__main__":
    Ledger.__init__ = _tracking_init  # type: ignore[method-assign]
    atexit.register(_write_report)
    cli.main(sys.argv[1:])
