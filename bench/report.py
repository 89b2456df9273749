"""The contact sheet at 10,000 rows: write time, HTML size, first paint, browser memory.

    python3 -m bench.report [--rows 10000] [--keep]

Builds a real ledger against an in-process sandbox (``floraq submit``), writes the report
twice (cold: every thumbnail made; warm: all cached), then opens page 1 in headless
Debian Chromium through Playwright and reads the paint timings and the memory of every
Chromium process. Not a test; figures go in bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from floraq.sandbox import SandboxConfig, SandboxServer

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Installed before the page's own script: when each thumbnail finished loading.
RECORD_LOADS = """document.addEventListener('load', e => {
  if (e.target.classList && e.target.classList.contains('thumb'))
    e.target.dataset.loadedAt = String(performance.now()); }, true);"""
# The thumbnails on screen (the first 60 tiles hold it): all loaded, and when the last
# one was; 0 when the screen holds none (failed rows, first, have no output) or all were
# there before ``since``.
FIRST_SCREEN = """(since) => {
  const seen = [...document.querySelectorAll('.tile:not([hidden]) img.thumb')].slice(0, 60)
    .filter(i => { const r = i.getBoundingClientRect();
      return r.top < innerHeight && r.bottom > 0 })
  if (!seen.every(i => i.dataset.loadedAt)) return null;
  return {ms: Math.max(0, ...seen.map(i => Number(i.dataset.loadedAt) - since))};
}"""


def build(work: Path, rows: int, server: SandboxServer) -> dict[str, str]:
    """A batch of ``rows``: 90% portraits, 9% posters, 1% failing posters."""
    fails = max(1, rows // 100)
    posters = rows * 9 // 100
    portraits = rows - posters - fails
    (work / "portraits.csv").write_text(
        "k,input_image\n"
        + "".join(f"p{n},https://storage.googleapis.com/d/{n}.jpg\n" for n in range(portraits))
    )
    (work / "posters.csv").write_text(
        "k,prompt\n"
        + "".join(f"s{n},a poster number {n}\n" for n in range(posters))
        + "".join(f"f{n},[[fail:safety_blocked]] {n}\n" for n in range(fails))
    )
    (work / "jobs.yaml").write_text(
        "version: 1\nbatch: sheet\noutput_dir: outputs\nretry_failed_runs: 0\nconcurrency: 32\n"
        "jobs:\n"
        "  - technique: portrait-enhancer\n    rows_from: {csv: portraits.csv, key: k}\n"
        "  - technique: poster-maker\n    rows_from: {csv: posters.csv, key: k}\n"
    )
    env = {
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": str(REPO),
        "FLORA_API_KEY": server.api_key,
        "FLORA_BASE_URL": server.base_url,
        "FLORAQ_LEDGER": str(work / "state" / "floraq.db"),
        "FLORAQ_TIME_SCALE": "0.001",
    }
    started = time.monotonic()
    done = floraq(work, env, "submit", "jobs.yaml", "-q")
    print(f"submitted {rows} rows in {time.monotonic() - started:.0f} s (exit {done})", flush=True)
    return env


def floraq(work: Path, env: dict[str, str], *args: str) -> int:
    return subprocess.run(
        [sys.executable, "-m", "floraq", *args],
        cwd=work,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        check=False,
    ).returncode


def write(work: Path, env: dict[str, str]) -> float:
    started = time.monotonic()
    assert floraq(work, env, "report", "-o", "report.html") == 0
    return time.monotonic() - started


def chromium_pss_mb(profile: Path) -> float:
    """The summed proportional set size of every process started with this profile.

    PSS, not RSS: Chromium's processes share most of their pages, and RSS counts them
    once per process.
    """
    total = 0
    for proc in Path("/proc").iterdir():
        try:
            if str(profile) not in (proc / "cmdline").read_text(errors="replace"):
                continue
            status = (proc / "smaps_rollup").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("Pss:"):
                total += int(line.split()[1])
    return total / 1024


def browse(report: Path, profile: Path) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(profile),
            executable_path=CHROMIUM,
            headless=True,
            args=FLAGS,
            viewport={"width": 1280, "height": 900},
        )
        page = context.new_page()
        page.add_init_script(RECORD_LOADS)
        requests: list[str] = []
        page.on("request", lambda r: requests.append(r.url))
        page.goto(report.as_uri(), wait_until="load")
        shown = page.wait_for_function(FIRST_SCREEN, arg=0, timeout=60_000)
        first_screen = shown.json_value()["ms"]
        session = context.new_cdp_session(page)
        session.send("Performance.enable")
        pss_opened = chromium_pss_mb(profile)
        paint = page.evaluate(
            "() => Object.fromEntries(performance.getEntriesByType('paint')"
            ".map(e => [e.name, e.startTime]))"
        )
        nav = page.evaluate("() => performance.getEntriesByType('navigation')[0].toJSON()")
        metrics = {m["name"]: m["value"] for m in session.send("Performance.getMetrics")["metrics"]}
        page.evaluate("() => window.scrollTo(0, document.body.scrollHeight)")
        page.wait_for_timeout(3000)
        pss_scrolled = chromium_pss_mb(profile)
        context.close()
    return {
        "first_contentful_paint_ms": round(paint.get("first-contentful-paint", -1)),
        "first_screen_of_thumbnails_ms": round(first_screen),
        "dom_content_loaded_ms": round(nav["domContentLoadedEventEnd"]),
        "load_event_ms": round(nav["loadEventEnd"]),
        "js_heap_used_mb": round(metrics.get("JSHeapUsedSize", 0) / 2**20, 1),
        "dom_nodes": int(metrics.get("Nodes", 0)),
        "chromium_pss_opened_mb": round(pss_opened),
        "chromium_pss_after_scrolling_to_the_end_mb": round(pss_scrolled),
        "non_file_requests": len([u for u in requests if not u.startswith("file:")]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--reuse", type=Path, help="a folder --keep left: skip the submit")
    options = parser.parse_args()
    work = options.reuse or Path(tempfile.mkdtemp(prefix="floraq-bench-report-"))
    try:
        if options.reuse:
            env = json.loads((work / "env.json").read_text())
            shutil.rmtree(work / "outputs" / ".floraq", ignore_errors=True)  # a cold write
        else:
            config = SandboxConfig(seed=1, time_scale=0.001, capacity=256)
            with SandboxServer(config) as server:
                env = build(work, options.rows, server)
            (work / "env.json").write_text(json.dumps(env))
        cold, warm = write(work, env), write(work, env)
        pages = sorted(work.glob("report*.html"))
        figures: dict[str, Any] = {
            "rows": options.rows,
            "write_cold_s": round(cold, 2),
            "write_warm_s": round(warm, 2),
            "pages": len(pages),
            "page1_html_kb": round((work / "report.html").stat().st_size / 1000),
            "all_html_kb": round(sum(p.stat().st_size for p in pages) / 1000),
            "thumbs_kb": round(
                sum(p.stat().st_size for p in (work / "outputs/.floraq/thumbs").iterdir()) / 1000
            ),
            **browse(work / "report.html", work / "chromium-profile"),
        }
        print(json.dumps(figures, indent=2), flush=True)
        out = REPO / "bench" / "results"
        out.mkdir(exist_ok=True)
        (out / "report-latest.json").write_text(json.dumps(figures, indent=2) + "\n")
    finally:
        if options.keep or options.reuse:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
