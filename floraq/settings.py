"""Flags > environment > defaults, resolved once into a frozen Settings.

Nothing else in floraq reads ``os.environ``. The API key comes from the
environment only (never a flag: flags end up in shell history and `ps`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from floraq.core.money import MAX_AMOUNT, amount
from floraq.crashpoints import CrashPoints
from floraq.errors import UsageError
from floraq.ledger.pg_connection import is_postgres_url, masked

DEFAULT_BASE_URL = "https://app.flora.ai/api/v1"
DEFAULT_LEDGER = Path("state/floraq.db")
DEFAULT_SANDBOX_LEDGER = Path("state/sandbox.db")
DEFAULT_CONCURRENCY = 8
DEFAULT_IDEMPOTENCY_WINDOW = 7200.0  # seconds: the shortest window any source states
DEFAULT_WINDOW_MARGIN = 600.0  # never re-send when this close to the window's end
DEFAULT_LEASE_SECONDS = 60.0  # a PostgreSQL worker's lease on its rows, renewed by heartbeat
MIN_LEASE_SECONDS = 1.0  # shorter, a heartbeat could not keep up (and no POST could leave)

ENV_API_KEY = "FLORA_API_KEY"
ENV_BASE_URL = "FLORA_BASE_URL"
ENV_LEDGER = "FLORAQ_LEDGER"
ENV_TIME_SCALE = "FLORAQ_TIME_SCALE"
ENV_CRASH_AT = "FLORAQ_CRASH_AT"
ENV_IDEMPOTENCY_WINDOW = "FLORAQ_IDEMPOTENCY_WINDOW"
ENV_LEASE_SECONDS = "FLORAQ_LEASE_SECONDS"


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything a command needs to know about its environment, resolved once."""

    base_url: str = DEFAULT_BASE_URL
    api_key: str | None = field(default=None, repr=False)
    ledger_path: Path = DEFAULT_LEDGER
    ledger_url: str | None = field(default=None, repr=False)  # a PostgreSQL ledger: wins
    concurrency: int | None = None  # None: the manifest's, else DEFAULT_CONCURRENCY
    max_cost: float | None = None  # overrides the manifest's cap
    idempotency_window: float = DEFAULT_IDEMPOTENCY_WINDOW
    window_margin: float = DEFAULT_WINDOW_MARGIN
    time_scale: float = 1.0  # multiplies every wait: polls, back-off (tests use 0.01)
    crash_at: str | None = None  # testing only: die at this named point
    lease_seconds: float = DEFAULT_LEASE_SECONDS  # PostgreSQL workers only
    verbose: int = 0
    quiet: bool = False
    progress_bars: bool = False  # tqdm bars: only when stderr is a terminal
    upload_concurrency: int = 4  # local files uploading at once, beside the runs
    upload_remote: bool = False  # --upload-remote: as the manifest's upload_remote: true

    @property
    def ledger_target(self) -> str | Path:
        """What ``open_ledger`` opens: the PostgreSQL URL if one was given, else the path."""
        return self.ledger_url if self.ledger_url is not None else self.ledger_path

    @property
    def ledger_shown(self) -> str:
        """How messages name the ledger: its path, or its URL with the password masked."""
        return masked(self.ledger_url) if self.ledger_url is not None else str(self.ledger_path)

    def require_key(self) -> str:
        """The API key, or a usage error that says where to put it."""
        if not self.api_key:
            raise UsageError(
                f"no API key: set {ENV_API_KEY} (create one in FLORA under Settings > API Keys),"
                " or use --sandbox to try floraq against the local sandbox"
            )
        return self.api_key


def resolve(
    *,
    env: Mapping[str, str] | None = None,
    base_url: str | None = None,
    ledger: str | Path | None = None,
    sandbox: bool = False,
    concurrency: int | None = None,
    max_cost: float | None = None,
    verbose: int = 0,
    quiet: bool = False,
    stderr_is_tty: bool = False,
) -> Settings:
    """Flags win over the environment, which wins over the defaults."""
    env = os.environ if env is None else env
    default_ledger = DEFAULT_SANDBOX_LEDGER if sandbox else DEFAULT_LEDGER
    crash_at = env.get(ENV_CRASH_AT) or None
    CrashPoints(crash_at)  # a typo fails here, before anything is written or sent
    ledger_path, ledger_url = _ledger_target(ledger or env.get(ENV_LEDGER) or default_ledger)
    return Settings(
        base_url=(base_url or env.get(ENV_BASE_URL) or DEFAULT_BASE_URL).rstrip("/"),
        api_key=_api_key(env),
        ledger_path=ledger_path,
        ledger_url=ledger_url,
        concurrency=concurrency,
        max_cost=_cap(max_cost),
        idempotency_window=_env_float(env, ENV_IDEMPOTENCY_WINDOW, DEFAULT_IDEMPOTENCY_WINDOW),
        time_scale=_env_float(env, ENV_TIME_SCALE, 1.0),
        crash_at=crash_at,
        lease_seconds=_lease_seconds(env),
        verbose=verbose,
        quiet=quiet,
        progress_bars=stderr_is_tty and not quiet,
    )


def _api_key(env: Mapping[str, str]) -> str | None:
    """The key exactly as it is sent and fingerprinted: stripped here, and only here.

    A trailing newline from ``export FLORA_API_KEY=$(cat file)`` must not make the key
    look rotated (its fingerprint guards re-sending an intent under another key).
    """
    key = (env.get(ENV_API_KEY) or "").strip()
    return key or None


def _cap(max_cost: float | None) -> float | None:
    """A cost cap is a finite amount >= 0: NaN would compare false and cap nothing."""
    if max_cost is not None and (not math.isfinite(max_cost) or max_cost < 0):
        raise UsageError(f"--max-cost {max_cost}: give a finite amount of USD, 0 or more")
    if max_cost is not None and amount(max_cost) is None:
        raise UsageError(f"--max-cost {max_cost:g}: give at most {MAX_AMOUNT:,} USD")
    return max_cost


def _ledger_target(raw: str | Path) -> tuple[Path, str | None]:
    """The ledger's path, and its PostgreSQL URL when it is one (kept exactly as typed).

    A URL read as a path would become a local SQLite file named after it, password and
    all; so it stays a string, and ``ledger_path`` keeps the default, never used.
    """
    text = str(raw)
    if is_postgres_url(text):
        return DEFAULT_LEDGER, text
    if is_postgres_url(text.lower()):
        raise UsageError(
            f"--ledger {masked(text)}: write the URL's scheme in lower case (postgresql://…)"
        )
    return Path(raw), None


def _lease_seconds(env: Mapping[str, str]) -> float:
    """How long a worker's lease lasts: a number of seconds, at least MIN_LEASE_SECONDS."""
    value = _env_float(env, ENV_LEASE_SECONDS, DEFAULT_LEASE_SECONDS)
    if value < MIN_LEASE_SECONDS:
        raise UsageError(
            f"{ENV_LEASE_SECONDS}={env.get(ENV_LEASE_SECONDS)!r} must be at least"
            f" {MIN_LEASE_SECONDS:g} s (a worker's lease on a PostgreSQL ledger)"
        )
    return value


def _env_float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise UsageError(f"{name}={raw!r} is not a number") from None
    if not math.isfinite(value) or value < 0:
        raise UsageError(f"{name}={raw!r} must be a finite number, 0 or more")
    return value
