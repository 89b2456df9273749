"""The options every floraq command shares, and the session they resolve into.

``-v``, ``-q``, ``--ledger``, ``--base-url`` and ``--sandbox`` are accepted after the
command name and, as users of git-style tools type them, before it; given in both places,
the one after the command wins, and either wins over the environment.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import click
from click.core import ParameterSource

from floraq import console
from floraq.ledger.pg_connection import URL_SCHEMES
from floraq.request_log import show_requests
from floraq.settings import ENV_BASE_URL, ENV_LEDGER, Settings, resolve

SESSION_OPTIONS = ("base_url", "ledger", "sandbox", "verbose", "quiet")

F = TypeVar("F", bound=Callable[..., Any])

SANDBOX_TIME_SCALE = 0.02  # --sandbox: a 5-60 s run takes 0.1-1.2 s


class LedgerParam(click.ParamType[str | Path]):
    """A SQLite path (checked as ``click.Path`` does), or a PostgreSQL URL kept as typed.

    ``click.Path`` would collapse the URL's ``//`` and make it a local file name.
    """

    name = "path_or_url"
    _path = click.Path(dir_okay=False, path_type=Path)

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> str | Path:
        if isinstance(value, str) and value.lower().startswith(URL_SCHEMES):
            return value
        return Path(os.fsdecode(self._path.convert(value, param, ctx)))


def common_options(fn: F) -> F:
    """The shared options, for each command and for the ``floraq`` group itself."""
    options = [
        click.option(
            "--base-url",
            envvar=ENV_BASE_URL,
            show_envvar=True,
            help="FLORA API base URL [default: https://app.flora.ai/api/v1].",
        ),
        click.option(
            "--ledger",
            type=LedgerParam(),
            envvar=ENV_LEDGER,
            show_envvar=True,
            help="The ledger: a SQLite file, or a postgresql:// URL (one process at a time)"
            " [default: state/floraq.db; state/sandbox.db with --sandbox].",
        ),
        click.option(
            "--sandbox",
            is_flag=True,
            help="Start a local FLORA-compatible sandbox and run against it (no key, no cost).",
        ),
        click.option("-v", "--verbose", count=True, help="Log every request (never the key)."),
        click.option("-q", "--quiet", is_flag=True, help="Print only the final summary."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


@contextmanager
def session(
    *,
    base_url: str | None,
    ledger: str | Path | None,
    sandbox: bool,
    verbose: int,
    quiet: bool,
    concurrency: int | None = None,
    max_cost: float | None = None,
) -> Iterator[Settings]:
    """Settings for one command, with an in-process sandbox behind them if asked."""
    settings = resolve(
        base_url=base_url,
        ledger=ledger,
        sandbox=sandbox,
        concurrency=concurrency,
        max_cost=max_cost,
        verbose=verbose,
        quiet=quiet,
        stderr_is_tty=sys.stderr.isatty() and sys.stdout.isatty(),
    )
    if verbose and not quiet:
        show_requests(sys.stderr)  # -v: one line per HTTP request (the key already removed)
    if not sandbox:
        yield settings
        return
    from floraq.sandbox import SandboxConfig, SandboxServer

    with SandboxServer(SandboxConfig(time_scale=SANDBOX_TIME_SCALE)) as server:
        if not quiet:
            console.err(f"sandbox: serving a local FLORA API at {server.base_url}")
        yield dataclasses.replace(
            settings,
            base_url=server.base_url,
            api_key=server.api_key,
            time_scale=min(settings.time_scale, SANDBOX_TIME_SCALE),
        )


def _typed(ctx: click.Context, name: str) -> bool:
    return ctx.get_parameter_source(name) is ParameterSource.COMMANDLINE


def progress_display(settings: Settings) -> console.ProgressDisplay:
    """The progress bars (or quiet) a running command shows on stderr."""
    return console.ProgressDisplay(bars=settings.progress_bars, quiet=settings.quiet)


def session_options(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Pop the shared options from a command's ``kwargs``, merged with those given before it.

    A value typed after the command wins; else one typed before it (``floraq -v submit``);
    else the command's own value, which is the environment's or the default.
    """
    ctx = click.get_current_context()
    before = ctx.parent
    options: dict[str, Any] = {}
    for name in SESSION_OPTIONS:
        options[name] = kwargs.pop(name)
        if before is not None and _typed(before, name) and not _typed(ctx, name):
            options[name] = before.params[name]
    return options
