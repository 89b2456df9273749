"""``floraq sandbox``: run the local FLORA-compatible server in the foreground."""

from __future__ import annotations

import signal
import sys
import threading
from types import FrameType
from typing import Any

import click

from floraq.errors import FloraqError
from floraq.sandbox.config import DEFAULT_API_KEY, SandboxConfig, load_catalog
from floraq.sandbox.server import SandboxServer

_RATE = click.FloatRange(0, 1)
_SECONDS = click.FloatRange(min=0)


@click.command(name="sandbox")
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=8765,
    show_default=True,
    help="API port (0: any free port).",
)
@click.option(
    "--media-port",
    type=click.IntRange(0, 65535),
    default=0,
    help="Media host port (default: any free port).",
)
@click.option(
    "--upload-port",
    type=click.IntRange(0, 65535),
    default=0,
    help="Upload host port, for assets (default: any free port).",
)
@click.option(
    "--asset-ready-delay",
    type=_SECONDS,
    help="Seconds after an asset's complete before it shows ready.",
)
@click.option("--asset-failure-rate", type=_RATE, help="Fraction of completed assets that fail.")
@click.option(
    "--upload-ttl",
    type=click.FloatRange(min=0, min_open=True),
    help="Seconds an upload reservation lasts.",
)
@click.option("--upload-5xx-rate", type=_RATE, help="Fraction of uploads answered 503.")
@click.option(
    "--check-asset-inputs",
    is_flag=True,
    default=None,
    help="Refuse runs whose asset inputs are not ready.",
)
@click.option(
    "--catalog",
    type=click.Path(exists=True, dir_okay=False),
    help="Technique catalog YAML (default: the packaged one).",
)
@click.option(
    "--key",
    default=DEFAULT_API_KEY,
    show_default=True,
    envvar="FLORA_API_KEY",
    show_envvar=True,
    help="The API key clients must send.",
)
@click.option("--seed", type=int, help="Seed for durations, failures, run ids and faults.")
@click.option(
    "--time-scale",
    type=click.FloatRange(min=0, min_open=True),
    help="Multiply run durations by this (0.01: a 30 s run takes 0.3 s).",
)
@click.option(
    "--duration",
    type=(float, float),
    help="Run duration range LO HI in seconds, for every technique.",
)
@click.option(
    "--capacity", type=click.IntRange(min=1), help="Runs running at once; others wait in pending."
)
@click.option(
    "--frozen-clock",
    is_flag=True,
    default=None,
    help='Stop the sandbox clock; POST /_sandbox/clock {"advance": S} moves it on.',
)
@click.option("--balance", type=_SECONDS, help="Workspace balance in USD.")
@click.option("--failure-rate", type=_RATE, help="Fraction of runs that fail.")
@click.option("--latency", type=_SECONDS, help="Seconds added to every API request.")
@click.option("--error-5xx-rate", type=_RATE, help="Fraction of API requests answered 500/503.")
@click.option(
    "--html-5xx", is_flag=True, default=None, help="Send 5xx bodies as HTML, like a load balancer."
)
@click.option("--rate-429", type=_RATE, help="Fraction of API requests answered 429.")
@click.option("--retry-after", type=_SECONDS, help="Retry-After seconds on a 429.")
@click.option("--no-retry-after", is_flag=True, help="Send 429s without a Retry-After header.")
@click.option(
    "--rate-limit-next-creates", type=click.IntRange(min=0), help="Answer the next N run POSTs 429."
)
@click.option(
    "--drop-rate", type=_RATE, help="Fraction of API connections dropped without an answer."
)
@click.option("--truncate-rate", type=_RATE, help="Fraction of media downloads cut short.")
@click.option(
    "--redirect-loop",
    is_flag=True,
    default=None,
    help="Every output URL answers 302 to itself (a broken CDN).",
)
@click.option(
    "--failure-charge",
    type=_RATE,
    help="Fraction of run_cost a failed run is charged [default: 0, refunded].",
)
@click.option(
    "--url-ttl",
    type=click.FloatRange(min=0, min_open=True),
    help="Seconds an output URL stays valid.",
)
@click.option(
    "--expired-status",
    type=click.Choice(["403", "404", "410"]),
    help="Status of an expired output URL.",
)
@click.option(
    "--idempotency",
    type=click.Choice(["replay", "suppress"]),
    help="A repeated key: replay the run, or 409.",
)
@click.option("--idempotency-window", type=_SECONDS, help="Seconds a key is remembered.")
@click.option(
    "--no-coalesce", is_flag=True, help="Let concurrent requests with one key both create runs."
)
@click.option(
    "--charged-cost-delay",
    type=_SECONDS,
    help="Seconds after completion before charged_cost shows.",
)
@click.option(
    "--omit-poll-url", is_flag=True, default=None, help="Leave poll_url out of run answers."
)
@click.option(
    "--run-id-style",
    type=click.Choice(["prefixed", "opaque"]),
    help="run_… ids, or opaque j57… ones.",
)
@click.option("--create-status", type=click.Choice(["200", "201"]), help="Status of a created run.")
def sandbox_command(
    host: str,
    port: int,
    media_port: int,
    upload_port: int,
    catalog: str | None,
    key: str,
    no_retry_after: bool,
    no_coalesce: bool,
    expired_status: str | None,
    create_status: str | None,
    **knobs: Any,
) -> None:
    """Run a local FLORA-compatible API server, with its media host, until Ctrl-C.

    Prints the base URL, the media URL and the API key to stderr. Every knob is
    optional; the defaults behave like FLORA's getting-started page. Time knobs are
    real seconds, except run durations, which --time-scale multiplies; with
    --frozen-clock, time moves only by POST /_sandbox/clock.

    Example:

    \b
        floraq sandbox --time-scale 0.05 --failure-rate 0.1 --rate-429 0.05
    """
    config = _config(
        knobs,
        key=key,
        catalog=catalog,
        no_retry_after=no_retry_after,
        no_coalesce=no_coalesce,
        expired_status=expired_status,
        create_status=create_status,
    )
    server = SandboxServer(
        config, host=host, port=port, media_port=media_port, upload_port=upload_port
    )
    try:
        server.start()
    except OSError as exc:
        raise click.ClickException(f"cannot listen on {host}: {exc.strerror or exc}") from exc
    _serve_until_stopped(server)


def _config(
    knobs: dict[str, Any],
    *,
    key: str,
    catalog: str | None,
    no_retry_after: bool,
    no_coalesce: bool,
    expired_status: str | None,
    create_status: str | None,
) -> SandboxConfig:
    """The options as a ``SandboxConfig``; a bad value or catalog is a usage error (exit 2)."""
    values = {name: value for name, value in knobs.items() if value is not None}
    values["api_keys"] = (key,)
    if catalog is not None:
        values["catalog"] = catalog
    if no_retry_after:
        values["retry_after"] = None
    if no_coalesce:
        values["coalesce"] = False
    if expired_status is not None:
        values["expired_status"] = int(expired_status)
    if create_status is not None:
        values["create_status"] = int(create_status)
    try:
        config = SandboxConfig(**values)
        load_catalog(config.catalog)
    except (ValueError, FloraqError) as exc:
        raise click.UsageError(str(exc)) from exc
    return config


def _serve_until_stopped(server: SandboxServer) -> None:
    """Say where the server is, then serve until Ctrl-C or SIGTERM."""
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _interrupt) if in_main else None
    try:
        click.echo("FLORA sandbox running (Ctrl-C to stop)", err=True)
        click.echo(f"  base URL:  {server.base_url}", err=True)
        click.echo(f"  media URL: {server.media_url}", err=True)
        from_env = click.get_current_context().get_parameter_source("key")
        secret = from_env is click.core.ParameterSource.ENVIRONMENT
        shown = "the value of FLORA_API_KEY" if secret else server.api_key
        click.echo(f"  API key:   {shown}", err=True)
        click.echo(f"  upload URL: {server.upload_url}", err=True)
        sys.stderr.flush()
        server.wait()
    except KeyboardInterrupt:
        click.echo("stopping", err=True)
    finally:
        server.stop()
        if in_main:
            signal.signal(signal.SIGTERM, previous)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    """SIGTERM stops the server as cleanly as Ctrl-C."""
    raise KeyboardInterrupt
