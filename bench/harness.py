"""The bench's moving parts: a sandbox in its own process, floraq as a measured child process.

The sandbox runs as ``python -m floraq.sandbox`` so the client's CPU is measured apart from
the server's; floraq runs as ``python -m bench.child`` (the real CLI, see there). Both get
``PYTHONPATH`` pointing at this checkout, so they run this tree's floraq whatever an
editable install elsewhere says.
"""

from __future__ import annotations

import csv
import json
import os
import re
import resource
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from bench.child import REPORT_ENV

REPO = Path(__file__).resolve().parent.parent
API_KEY = "sk_test_bench"
TIME_SCALE = 0.01  # sandbox durations and floraq's waits alike: 100x faster than real
TICKS = os.sysconf("SC_CLK_TCK")
IMAGE_URL = "https://storage.googleapis.com/floraq-bench/{n:06d}.jpg"
TECHNIQUE = "portrait-enhancer"  # one imageUrl input, one imageUrl output


_floraq_tree = REPO


def use_tree(tree: Path) -> None:
    """Run the floraq client from another checkout (to measure a change); the sandbox stays."""
    global _floraq_tree
    _floraq_tree = tree.resolve()


def child_env(*, client: bool = False, tree: Path | None = None, **extra: str) -> dict[str, str]:
    """The environment of every child: no developer FLORA settings; this checkout first.

    ``tree`` (for a client) overrides ``use_tree`` for this one child, so two clients from
    different checkouts can run side by side (the polling workloads' before and after).
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLORA", "BENCH_"))}
    chosen = tree.resolve() if tree is not None else _floraq_tree
    first = [str(chosen)] if client and chosen != REPO else []
    path = env.get("PYTHONPATH")
    env["PYTHONPATH"] = os.pathsep.join([*first, str(REPO), *([path] if path else [])])
    env.update(extra)
    return env


def proc_cpu(pid: int) -> float:
    """User + system CPU seconds of a live process, from /proc (0 if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICKS


def proc_rss_kb(pid: int) -> int:
    """Current resident set size of a live process in KiB (0 if it is gone)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    match = re.search(r"^VmRSS:\s+(\d+) kB", text, re.MULTILINE)
    return int(match.group(1)) if match else 0


class Sandbox:
    """A sandbox server in a child process; knobs as ``floraq sandbox`` flags."""

    def __init__(self, workdir: Path, **knobs: Any) -> None:
        self.workdir = workdir
        self.knobs = knobs
        self.base_url = ""
        self.root_url = ""
        self._proc: subprocess.Popen[bytes] | None = None
        self._http: httpx.Client | None = None
        self._log = workdir / "sandbox.log"

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    def __enter__(self) -> Sandbox:
        args = [sys.executable, "-m", "floraq.sandbox", "--port", "0", "--key", API_KEY]
        for name, value in self.knobs.items():
            flag = "--" + name.replace("_", "-")
            args += (
                [flag, *(str(v) for v in value)] if isinstance(value, tuple) else [flag, str(value)]
            )
        with self._log.open("wb") as log:
            self._proc = subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=child_env()
            )
        deadline = time.monotonic() + 20
        while not self.base_url:
            match = re.search(r"base URL:\s+(\S+)", self._log.read_text(errors="replace"))
            if match:
                self.base_url = match.group(1)
            elif self._proc.poll() is not None or time.monotonic() > deadline:
                self.__exit__()
                raise RuntimeError(f"the sandbox did not start: {self._log.read_text()}")
            else:
                time.sleep(0.05)
        self.root_url = self.base_url.removesuffix("/api/v1")
        self._http = httpx.Client(base_url=self.root_url, timeout=120, trust_env=False)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._http is not None:
            self._http.close()
            self._http = None
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        assert self._http is not None
        response = self._http.request(method, path, json=body)
        response.raise_for_status()
        return response.json()

    def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", "/_sandbox/stats")
        return result

    def runs(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._call("GET", "/_sandbox/runs")
        return result

    def reset(self) -> None:
        """Forget every run, key and counter (the knobs stay)."""
        self._call("POST", "/_sandbox/reset", {"restore_config": False})

    def cpu(self) -> float:
        return proc_cpu(self.pid)


@dataclass(slots=True)
class ChildRun:
    """What one floraq process did, as measured from outside and inside."""

    args: list[str]
    exit_code: int
    wall: float  # seconds, from spawn to reaped
    cpu: float  # user + system seconds, from the kernel's accounting of the reaped child
    started: float  # epoch seconds at spawn
    ended: float
    report: dict[str, Any]  # bench.child's own figures (commits, peak RSS, ...)
    rss_samples: list[tuple[float, int]] = field(default_factory=list)  # (seconds, KiB)
    stdout: str = ""
    stderr: str = ""

    @property
    def max_rss_mb(self) -> float:
        return float(self.report.get("max_rss_kb", 0)) / 1024

    @property
    def commits(self) -> int:
        return int(self.report.get("commits", 0))


def run_floraq(
    args: Sequence[str],
    *,
    cwd: Path,
    sandbox: Sandbox,
    ledger: Path,
    sample_rss: float | None = None,
    timeout: float = 1800,
    time_scale: float = TIME_SCALE,
    tree: Path | None = None,
) -> ChildRun:
    """Run `floraq ARGS` to the end, measuring wall time, CPU and (optionally) RSS over time."""
    report_path = cwd / f".child-{time.monotonic_ns()}.json"
    env = child_env(
        client=True,
        tree=tree,
        FLORA_API_KEY=API_KEY,
        FLORA_BASE_URL=sandbox.base_url,
        FLORAQ_LEDGER=str(ledger),
        FLORAQ_TIME_SCALE=str(time_scale),
        **{REPORT_ENV: str(report_path)},
    )
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started, t0 = time.time(), time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.child", *args],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    samples: list[tuple[float, int]] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(sample_rss or 1):
            kb = proc_rss_kb(proc.pid)
            if kb:
                samples.append((round(time.perf_counter() - t0, 2), kb))

    sampler = threading.Thread(target=sample, daemon=True) if sample_rss else None
    if sampler is not None:
        sampler.start()
    try:
        out, err = proc.communicate(timeout=timeout)
    except BaseException:
        proc.kill()
        proc.communicate()
        raise
    finally:
        stop.set()
        if sampler is not None:
            sampler.join()
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    report = json.loads(report_path.read_text()) if report_path.exists() else {}
    report_path.unlink(missing_ok=True)
    return ChildRun(
        args=list(args),
        exit_code=proc.returncode,
        wall=wall,
        cpu=cpu,
        started=started,
        ended=time.time(),
        report=report,
        rss_samples=samples,
        stdout=out,
        stderr=err,
    )


# -- workloads --------------------------------------------------------------------------------


def image_rows(count: int) -> Iterator[dict[str, str]]:
    """Distinct rows for the bench technique, on a host floraq does not warn about."""
    for n in range(count):
        yield {"input_image": IMAGE_URL.format(n=n)}


def write_inline_manifest(path: Path, *, batch: str, rows: int) -> Path:
    """A YAML manifest with every row inline (what a user writes for a few thousand rows)."""
    manifest = {
        "version": 1,
        "batch": batch,
        "output_dir": "outputs",
        "jobs": [{"technique": TECHNIQUE, "rows": list(image_rows(rows))}],
    }
    path.write_text(yaml.safe_dump(manifest, sort_keys=False))
    return path


def write_csv_manifest(path: Path, *, batch: str, rows: int) -> Path:
    """A YAML manifest whose rows come from a CSV export with a key column."""
    csv_path = path.with_suffix(".csv")
    with csv_path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["sku", "image_url"])
        for n, row in enumerate(image_rows(rows)):
            writer.writerow([f"SKU-{n:07d}", row["input_image"]])
    manifest = {
        "version": 1,
        "batch": batch,
        "output_dir": "outputs",
        "jobs": [
            {
                "technique": TECHNIQUE,
                "rows_from": {
                    "csv": csv_path.name,
                    "columns": {"input_image": "image_url"},
                    "key": "sku",
                },
            }
        ],
    }
    path.write_text(yaml.safe_dump(manifest, sort_keys=False))
    return path


def disk_bytes(ledger: Path) -> int:
    """The ledger's size on disk: the database and its WAL and shared-memory files."""
    total = 0
    for suffix in ("", "-wal", "-shm"):
        side = ledger.with_name(ledger.name + suffix)
        if side.exists():
            total += side.stat().st_blocks * 512
    return total
