"""The floraq command line: each command parses, calls one batch function, prints the result.

Exit codes (also in the README):

\b
  0  every row is done: nothing more to do
  1  finished; some rows failed, were rejected, expired, could not be downloaded
     (download_failed) or have an unknown outcome
  2  invalid manifest, CSV, flags or settings, or an unreadable ledger; nothing sent
  3  the API refused the key; nothing more was sent
  4  paused by credits or the budget cap; rows stay queued: run again later
  5  another floraq process holds this (SQLite) ledger: try again later
  6  runs still in flight (--no-wait, network trouble, a lapsed lease): `floraq resume` later
  7  the disk refused a write (full, read-only, not a folder): fix it, `floraq resume`
  8  the PostgreSQL ledger's connection broke: check the server, `floraq resume`
  70 a bug in floraq (a traceback was printed); the ledger is safe: report it
  130 interrupted (Ctrl-C / SIGTERM): `floraq resume` continues
"""

from __future__ import annotations

import dataclasses
import sys
import traceback
from pathlib import Path
from typing import Any

import click

from floraq import batch, console, review
from floraq.cli_options import common_options, progress_display, session, session_options
from floraq.errors import ExitCode, FloraqError, ManifestError
from floraq.export import FORMATS
from floraq.results import RetryKind


@click.group(
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    epilog=__doc__.split("\n\n", 1)[1] if __doc__ else None,
)
@click.version_option(package_name="floraq")
@common_options
def cli(**global_options: Any) -> None:
    """Run batches of FLORA techniques safely, cheaply and resumably.

    Write a manifest (see jobs.example.yaml), check it with `floraq plan`, run it with
    `floraq submit`; `floraq resume` finishes whatever an interrupted run left.
    The API key comes from FLORA_API_KEY (never a flag).

    The options below go before the command or after it (`floraq -v submit jobs.yaml`
    is `floraq submit -v jobs.yaml`); given in both places, the one after the command wins.
    """


UPLOAD_REMOTE = click.option(
    "--upload-remote",
    is_flag=True,
    help="Download https:// inputs on hosts FLORA does not list, and upload them as assets.",
)


@cli.command()
@click.argument("manifest", type=click.Path(path_type=Path))
@UPLOAD_REMOTE
@common_options
def plan(manifest: Path, upload_remote: bool, **kwargs: Any) -> int:
    """Validate every row and show the cost per technique; sends no run.

    Example: floraq plan jobs.yaml
    """
    options = session_options(kwargs)
    with session(**options) as settings:
        if upload_remote:
            settings = dataclasses.replace(settings, upload_remote=True)
        result = batch.plan(settings, manifest)
    console.plan(result, quiet=options["quiet"])
    if result.errors:
        return int(ExitCode.USAGE)
    return int(ExitCode.OK if result.fits else ExitCode.PAUSED)  # submit would pause at the cap


@cli.command()
@click.argument("manifest", type=click.Path(path_type=Path))
@click.option("--no-wait", is_flag=True, help="Submit the runs and exit; `resume` finishes them.")
@click.option(
    "--skip-invalid", is_flag=True, help="Submit the valid rows; record the others as rejected."
)
@click.option(
    "--reupload",
    is_flag=True,
    help="Upload the manifest's local files again as new assets, even if uploaded before.",
)
@UPLOAD_REMOTE
@click.option("--concurrency", type=click.IntRange(1, 64), help="HTTP requests in flight.")
@click.option("--max-cost", type=click.FloatRange(min=0), help="USD cap (wins over max_cost).")
@common_options
def submit(
    manifest: Path,
    no_wait: bool,
    skip_invalid: bool,
    reupload: bool,
    upload_remote: bool,
    concurrency: int | None,
    max_cost: float | None,
    **kwargs: Any,
) -> int:
    """Validate, record and run every new row of MANIFEST; download every output.

    Re-running it is safe: rows already in the ledger are never sent again.

    Example: floraq submit jobs.yaml
    """
    options = session_options(kwargs)
    with (
        session(**options, concurrency=concurrency, max_cost=max_cost) as settings,
        progress_display(settings) as progress,
    ):
        if upload_remote:
            settings = dataclasses.replace(settings, upload_remote=True)
        result = batch.submit(
            settings,
            manifest,
            wait=not no_wait,
            skip_invalid=skip_invalid,
            progress=progress,
            reupload=reupload,
        )
    console.run_summary(result, quiet=options["quiet"])
    return int(result.exit_code)


@cli.command()
@click.option("--batch", "batch_name", help="Only this batch [default: every batch].")
@click.option("--concurrency", type=click.IntRange(1, 64), help="HTTP requests in flight.")
@click.option("--max-cost", type=click.FloatRange(min=0), help="USD cap (wins over max_cost).")
@click.option(
    "--redownload-missing",
    is_flag=True,
    help="First fetch again every downloaded file missing or changed on disk, and expired"
    " outputs (re-polling runs for fresh URLs).",
)
@common_options
def resume(
    batch_name: str | None,
    concurrency: int | None,
    max_cost: float | None,
    redownload_missing: bool,
    **kwargs: Any,
) -> int:
    """Continue every unfinished row where the ledger left it (safe from cron).

    Example: floraq resume --batch product-photos-2026-11
    """
    options = session_options(kwargs)
    with (
        session(**options, concurrency=concurrency, max_cost=max_cost) as settings,
        progress_display(settings) as progress,
    ):
        result = batch.resume(
            settings,
            batch=batch_name,
            progress=progress,
            redownload_missing=redownload_missing,
        )
    console.run_summary(result, quiet=options["quiet"])
    return int(result.exit_code)


@cli.command()
@click.option("--batch", "batch_name", help="Only this batch [default: every batch].")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@common_options
def status(batch_name: str | None, as_json: bool, **kwargs: Any) -> int:
    """Counts per state and technique, costs, and every row that needs a look.

    Example: floraq status --batch product-photos-2026-11 --json
    """
    with session(**session_options(kwargs)) as settings:
        result = review.status(settings, batch=batch_name)
    if as_json:
        console.status_json(result)
    else:
        console.status(result)
    return int(ExitCode.OK)


@cli.command()
@click.argument("slug", required=False)
@common_options
def techniques(slug: str | None, **kwargs: Any) -> int:
    """List the techniques your key can run, or show one's inputs, outputs and cost.

    Example: floraq techniques portrait-enhancer
    """
    with session(**session_options(kwargs)) as settings:
        items = batch.techniques(settings, slug)
    console.techniques(items, detailed=slug is not None)
    return int(ExitCode.OK)


@cli.command()
@click.option("--batch", "batch_name", help="Only this batch [default: every batch].")
@click.option("--technique", help="Only the rows of this technique.")
@click.option(
    "--format", "fmt", type=click.Choice(FORMATS), default="csv", show_default=True, help="Format."
)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write to this file [default: stdout].",
)
@click.option(
    "--excel-safe",
    is_flag=True,
    help="Prefix cells starting with = + - @ with ' so a spreadsheet shows, not runs, them"
    " (the CSV then no longer reads back exactly as rows_from).",
)
@common_options
def export(
    batch_name: str | None,
    technique: str | None,
    fmt: str,
    output: Path | None,
    excel_safe: bool,
    **kwargs: Any,
) -> int:
    """One line per row: inputs, run id, status, error, request id, costs and output files.

    A CSV export is a valid `rows_from.csv` for a new manifest (each input is a column
    named by its id; `key: row_key` keeps the folder names): reprocess the rows with
    another technique.

    Example: floraq export --batch product-photos-2026-11 -o results.csv
    """
    with session(**session_options(kwargs)) as settings:
        result = review.export(
            settings,
            batch=batch_name,
            technique=technique,
            fmt="jsonl" if fmt == "jsonl" else "csv",
            output=None if output is None or str(output) == "-" else output,
            stream=console.data_stream(),
            spreadsheet_safe=excel_safe,
        )
    console.export_done(result)
    return int(ExitCode.OK)


@cli.command()
@click.option("--batch", "batch_name", help="Only this batch [default: every batch].")
@click.option("--failed", is_flag=True, help="Rows whose run failed.")
@click.option("--rejected", is_flag=True, help="Rows refused (ones still invalid are skipped).")
@click.option(
    "--expired", is_flag=True, help="Rows whose outputs expired (try resume --redownload-missing)."
)
@click.option(
    "--download-failed",
    is_flag=True,
    help="Rows whose files could not be fetched (a redirect loop, a refused URL): fetch"
    " them again from the same run, once the cause is fixed (no new run, no new charge).",
)
@click.option(
    "--unknown",
    is_flag=True,
    help="Rows of unknown outcome, once you checked FLORA (may pay twice).",
)
@click.option("--queue-only", is_flag=True, help="Only re-queue them; `floraq resume` sends them.")
@click.option("--concurrency", type=click.IntRange(1, 64), help="HTTP requests in flight.")
@click.option("--max-cost", type=click.FloatRange(min=0), help="USD cap (wins over max_cost).")
@common_options
def retry(
    batch_name: str | None,
    queue_only: bool,
    concurrency: int | None,
    max_cost: float | None,
    **kwargs: Any,
) -> int:
    """Give exactly these rows a new attempt (a new idempotency key), then run them.

    Every other row is left alone; the ledger keeps each earlier attempt in its events.
    The batches with re-queued rows then run as `floraq resume --batch` would, so the
    exit code is resume's; with --queue-only, nothing is sent until `floraq resume`.

    Example: floraq retry --batch product-photos-2026-11 --failed
    """
    flags: tuple[RetryKind, ...] = ("failed", "rejected", "expired", "download_failed", "unknown")
    kinds = [k for k in flags if kwargs.pop(k)]
    options = session_options(kwargs)
    with (
        session(**options, concurrency=concurrency, max_cost=max_cost) as settings,
        progress_display(settings) as progress,
    ):
        result = batch.retry(
            settings,
            kinds=kinds,
            batch=batch_name,
            queue_only=queue_only,
            progress=progress,
        )
    console.retry_summary(result, quiet=options["quiet"])
    return int(result.exit_code)


@cli.command()
@click.option("--batch", "batch_name", help="Only this batch [default: every batch].")
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("report.html"),
    show_default=True,
    help="The HTML file to write; output files are linked relative to it.",
)
@common_options
def report(batch_name: str | None, output: Path, **kwargs: Any) -> int:
    """Write a contact sheet: a grid of thumbnails, one tile per row, to review a batch.

    Failed rows come first; click a tile for its inputs, outputs, costs and errors; filter
    by state or technique, or search. Thumbnails are cached in OUTPUT_DIR/.floraq/thumbs.
    It loads nothing from the network: keep it beside the output folder. Above 1,000 rows
    it continues on report-2.html, report-3.html, ...

    Example: floraq report --batch product-photos-2026-11 -o report.html
    """
    with session(**session_options(kwargs)) as settings:
        result = review.report(settings, batch=batch_name, output=output)
    console.report_done(result)
    return int(ExitCode.OK)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@common_options
def batches(as_json: bool, **kwargs: Any) -> int:
    """Every batch in the ledger with its counts, cost and last activity.

    Example: floraq batches --json
    """
    with session(**session_options(kwargs)) as settings:
        items = review.batches(settings)
    if as_json:
        console.batches_json(items)
    else:
        console.batches(items)
    return int(ExitCode.OK)


@cli.command()
@click.option("--batch", "batch_name", help="Only this batch [default: every batch].")
@common_options
def verify(batch_name: str | None, **kwargs: Any) -> int:
    """Re-hash every downloaded file against the ledger; list the missing or changed ones.

    Exits 1 if any; `floraq resume --redownload-missing` fetches them again.

    Example: floraq verify --batch product-photos-2026-11
    """
    options = session_options(kwargs)
    with session(**options) as settings:
        result = review.verify(settings, batch=batch_name)
    console.verify(result, quiet=options["quiet"])
    return int(result.exit_code)


def _register_sandbox() -> None:
    from floraq.sandbox.cli import sandbox_command

    cli.add_command(sandbox_command, name="sandbox")


def main(argv: list[str] | None = None) -> None:
    """Entry point: one line for every error floraq expects; a traceback only for bugs."""
    _register_sandbox()
    try:
        code = cli.main(args=argv, prog_name="floraq", standalone_mode=False)
    except ManifestError as e:
        console.problems(e.problems)
        errors = sum(1 for p in e.problems if p.severity == "error")
        console.error_line(f"{errors} problem(s) in the input; nothing was sent")
        sys.exit(e.exit_code)
    except FloraqError as e:
        console.error_line(str(e))
        sys.exit(e.exit_code)
    except click.exceptions.Abort:
        console.error_line("interrupted")
        sys.exit(ExitCode.INTERRUPTED)
    except click.ClickException as e:
        e.show()
        sys.exit(ExitCode.USAGE)
    except KeyboardInterrupt:
        console.error_line("interrupted; run `floraq resume` to continue")
        sys.exit(ExitCode.INTERRUPTED)
    except Exception:
        traceback.print_exc()
        console.error_line(
            "this is a bug in floraq: please report it with the traceback above."
            " Every state change so far is saved in the ledger; `floraq resume` continues"
        )
        sys.exit(ExitCode.INTERNAL)
    sys.exit(code if isinstance(code, int) else 0)
