"""End to end: the report's thumbnail cache beside the outputs, and what must ignore it."""

from __future__ import annotations

from pathlib import Path

from conftest import Floraq

from floraq.sandbox import SandboxServer

IMG = "https://storage.googleapis.com/floraq-demo/{n}.jpg"


def portraits(floraq: Floraq, batch: str, keys: list[str]) -> Path:
    """A batch of portrait-enhancer rows keyed by ``keys``, from a CSV."""
    csv = floraq.cwd / f"{batch}.csv"
    csv.write_text("k,input_image\n" + "".join(f"{k},{IMG.format(n=k)}\n" for k in keys))
    return floraq.write_manifest(
        name=f"{batch}.yaml",
        batch=batch,
        jobs=[{"technique": "portrait-enhancer", "rows_from": {"csv": csv.name, "key": "k"}}],
    )


def test_thumbnails_are_cached_by_sha256_and_ignored_by_verify_export_and_folders(
    floraq: Floraq, sandbox: SandboxServer
) -> None:
    """One WebP per image, named by its sha256, made once; verify/export/folder check unmoved."""
    assert floraq("submit", str(portraits(floraq, "a", ["1", "2"]))).returncode == 0
    assert floraq("report", "-o", "report.html").returncode == 0
    thumbs = floraq.cwd / "outputs" / ".floraq" / "thumbs"
    shas = {r["sha256"] for r in floraq.query("SELECT sha256 FROM outputs")}
    assert {p.name for p in thumbs.iterdir()} == {f"{s}.webp" for s in shas}
    first = {p.name: p.stat().st_mtime_ns for p in thumbs.iterdir()}
    assert floraq("report", "-o", "report.html").returncode == 0
    assert {p.name: p.stat().st_mtime_ns for p in thumbs.iterdir()} == first
    page = (floraq.cwd / "report.html").read_text()
    assert all(f'src="outputs/.floraq/thumbs/{s}.webp"' in page for s in shas)

    verified = floraq("verify")
    assert verified.returncode == 0
    assert "2 file(s) checked: 0 missing, 0 changed" in verified.stdout
    exported = floraq("export", "--format", "jsonl").stdout
    assert ".floraq" not in exported and len(exported.splitlines()) == 2
    # another batch in the same output_dir: new keys are fine, a taken key is still refused
    assert floraq("submit", str(portraits(floraq, "b", ["3"]))).returncode == 0
    clash = floraq("plan", str(portraits(floraq, "c", ["1"])))
    assert clash.returncode == 2
    assert "output folder portrait-enhancer/1 already holds the files of batch 'a'" in clash.stdout
