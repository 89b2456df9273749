"""One rate for every worker of a workspace: the shared 429 pause and the learned concurrency.

FLORA's limits are per workspace, so a 429 seen by one floraq process must slow every
process sending under that workspace, and the concurrency one night learned is where the
next night starts. The ledger keeps one row per API host and workspace (``ApiLimit``);
the rules for reading, merging and writing it are here, free of I/O, so they can be
tested without a clock or a database.

Until a manifest names its workspace, the API key stands in for it (``key_workspace``):
FLORA ties a key to one workspace, and the stand-in is the key's fingerprint, never the key.
"""

from __future__ import annotations

from dataclasses import dataclass

# A 429 more than this long after the last pause ended starts the count of recent ones again.
RECENT_429_WINDOW = 600.0
READ_EVERY = 1.0  # seconds between reads of the shared row (x time_scale)
WRITE_EVERY = 5.0  # seconds between writes of a rising concurrency (x time_scale)
# Real seconds: under a tiny time_scale (tests, benchmarks) a pause lasts milliseconds and
# is over before another process could read it, so reading faster only costs CPU.
MIN_SYNC_INTERVAL = 0.25


@dataclass(frozen=True, slots=True)
class LimitKey:
    """Which shared limit: the API's host (and port) and the workspace sent under."""

    api_host: str
    workspace: str


def key_workspace(key_fingerprint: str) -> str:
    """The workspace stand-in for an API key: its fingerprint, marked as such.

    The ``key:`` prefix keeps it apart from a real workspace id (``ws_…``), which is meant
    to replace it once the manifest names one.
    """
    return f"key:{key_fingerprint}"


@dataclass(frozen=True, slots=True)
class ApiLimit:
    """One row of the shared limits, as read at ``now`` on the ledger's clock.

    ``paused_until`` and ``now`` are epoch seconds of one clock (PostgreSQL's server
    clock, or the SQLite process's own), so ``pause_left`` means the same to every worker
    whatever its own clock says.
    """

    api_host: str
    workspace: str
    paused_until: float | None
    concurrency: int | None
    recent_429s: int
    updated_at: float
    now: float

    @property
    def pause_left(self) -> float:
        """Seconds of shared pause still in force (0 when none)."""
        if self.paused_until is None:
            return 0.0
        return max(0.0, self.paused_until - self.now)


def later_pause(existing: float | None, new: float) -> float:
    """Two workers' pauses merge to the later one: a shorter pause never cuts a longer."""
    return new if existing is None else max(existing, new)


def recent_429s(count: int, paused_until: float | None, now: float, new: int = 1) -> int:
    """The count of recent 429s after ``new`` more at ``now``: restarted after a quiet spell."""
    if paused_until is None or now - paused_until > RECENT_429_WINDOW:
        return new
    return count + new


def start_limit(learned: int | None, cap: int) -> int:
    """Where a night starts: the learned concurrency, never above the manifest's/flag's cap."""
    if learned is None:
        return cap
    return max(1, min(learned, cap))


def sync_interval(every: float, time_scale: float) -> float:
    """Seconds between two syncs: scaled like every other wait, with a floor."""
    return max(MIN_SYNC_INTERVAL, every * time_scale)


@dataclass(frozen=True, slots=True)
class Learned:
    """What one worker knows of the shared concurrency since it last synced.

    ``seen``: the ledger's value when this worker last read or wrote it (None: no value);
    ``set_to``: the limit it last gave its throttle or wrote; ``written_at``: when it last
    wrote (None: never).
    """

    seen: int | None
    set_to: int
    written_at: float | None = None


@dataclass(frozen=True, slots=True)
class SyncStep:
    """What one sync does: set the throttle (None: leave it), write (None: do not)."""

    limit: int | None
    write: int | None
    learned: Learned


def starting(learned: int | None, cap: int) -> Learned:
    """The state of a worker that has just read the row (or found none) and set its limit."""
    return Learned(seen=learned, set_to=start_limit(learned, cap))


def reconcile(
    state: Learned,
    *,
    local: int,
    shared: int | None,
    cap: int,
    now: float,
    write_every: float,
    final: bool = False,
) -> SyncStep:
    """Merge this worker's limit (``local``) with the ledger's (``shared``).

    Another worker's change (the row moved since we saw it) is taken up, capped; our own
    decrease (a 429 here) still wins if it is lower, and is written at once so the others
    slow down too. Our own rise is written at most every ``write_every`` seconds (and at
    the end, ``final``), so a busy night does not write the row on every success.
    """
    mine = local != state.set_to
    if shared is not None and shared != state.seen:
        target = start_limit(shared, cap)
        if mine and local < state.set_to:
            target = min(target, local)
        write = target if target < start_limit(shared, cap) else None
        return SyncStep(
            limit=target if target != local else None,
            write=write,
            learned=Learned(
                seen=shared if write is None else write,
                set_to=target,
                written_at=now if write is not None else state.written_at,
            ),
        )
    if not mine:
        return SyncStep(limit=None, write=None, learned=state)
    due = (
        final
        or local < state.set_to
        or state.written_at is None
        or now - state.written_at >= write_every
    )
    if not due:
        return SyncStep(limit=None, write=None, learned=state)
    return SyncStep(limit=None, write=local, learned=Learned(local, local, now))
