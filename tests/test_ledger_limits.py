"""The API limits every worker of a workspace shares, on both backends (``api_limits``)."""

from __future__ import annotations

import asyncio

from ledgers import NewLedger

from floraq.core.limits import LimitKey
from floraq.ledger import PostgresLedger, SqliteLedger
from floraq.retry import Throttle
from floraq.runner.limits import SharedRate, limit_key

KEY = LimitKey("api.example:443", "key:0123456789abcdef")


class FakeTime:
    def __init__(self) -> None:
        self.now = 5000.0

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds
        await asyncio.sleep(0)


def _same_ledger(new_ledger: NewLedger) -> NewLedger:
    """Opens one ledger again and again: PostgreSQL, a new session each time (as another
    worker would); SQLite in memory, the same connection (a new one would be empty)."""
    first = new_ledger()
    if isinstance(first, PostgresLedger):
        return new_ledger
    return lambda: first


def test_a_pause_is_kept_at_the_later_of_two_and_429s_are_counted(
    new_ledger: NewLedger,
) -> None:
    new_ledger = _same_ledger(new_ledger)
    first, second = new_ledger(), new_ledger()  # two workers (PostgreSQL: two sessions)
    assert first.api_limit(KEY) is None
    long = first.rate_limited(KEY, pause=30.0)
    assert long.recent_429s == 1 and 29.0 < long.pause_left <= 30.0
    short = second.rate_limited(KEY, pause=1.0)
    assert short.paused_until == long.paused_until  # the shorter pause never cuts it short
    assert short.recent_429s == 2
    seen = first.api_limit(KEY)
    assert seen is not None and seen.paused_until == long.paused_until
    assert seen.concurrency is None


def test_the_learned_concurrency_is_kept_per_host_and_workspace(new_ledger: NewLedger) -> None:
    new_ledger = _same_ledger(new_ledger)
    ledger = new_ledger()
    other = LimitKey("api.example:443", "key:fedcba9876543210")
    ledger.save_concurrency(KEY, 3)
    ledger.save_concurrency(other, 6)
    ledger.save_concurrency(KEY, 2)
    rows = {(r.api_host, r.workspace): r.concurrency for r in new_ledger().api_limits()}
    assert rows == {(KEY.api_host, KEY.workspace): 2, (other.api_host, other.workspace): 6}


def test_sqlite_uses_its_own_clock_and_restarts_the_count_after_a_quiet_spell() -> None:
    fake = FakeTime()
    ledger = SqliteLedger.in_memory(clock=fake.clock)
    row = ledger.rate_limited(KEY, pause=5.0)
    assert (row.paused_until, row.now, row.updated_at) == (5005.0, 5000.0, 5000.0)
    fake.now += 10_000
    again = ledger.rate_limited(KEY, pause=5.0)
    assert (again.paused_until, again.recent_429s) == (15005.0, 1)


def test_postgresql_times_a_pause_on_the_servers_clock(postgres_schema: str) -> None:
    """A worker whose own clock is days off still records a pause others can honour."""
    skewed = PostgresLedger.open(postgres_schema, clock=lambda: 42.0)
    honest = PostgresLedger.open(postgres_schema)
    try:
        row = skewed.rate_limited(KEY, pause=20.0)
        assert row.paused_until is not None and row.paused_until > 1_700_000_000
        seen = honest.api_limit(KEY)
        assert seen is not None and 19.0 < seen.pause_left <= 20.0
    finally:
        skewed.close()
        honest.close()


def _worker(ledger: SqliteLedger | PostgresLedger, fake: FakeTime, cap: int = 8) -> SharedRate:
    throttle = Throttle(max_concurrency=cap, clock=fake.clock, sleep=fake.sleep)
    return SharedRate(ledger, throttle, KEY, time_scale=1.0, clock=fake.clock)


def test_a_429_one_worker_sees_pauses_the_other(new_ledger: NewLedger) -> None:
    new_ledger = _same_ledger(new_ledger)
    fake = FakeTime()
    a, b = _worker(new_ledger(), fake), _worker(new_ledger(), fake)
    a.start()
    b.start()
    a._throttle.on_rate_limited()
    a._throttle.pause_all(12.0)
    a.sync()
    b.sync()
    assert 11.0 < b._throttle.paused_for() <= 12.0
    assert b._throttle.take_unshared() is None  # b does not write a's pause back
    assert [r.recent_429s for r in b._ledger.api_limits()] == [1]
    # a halved its limit (8 -> 4) and wrote it at once; b takes it up
    assert (a._throttle.limit, b._throttle.limit) == (4, 4)


def test_a_process_started_during_a_pause_waits_for_it(new_ledger: NewLedger) -> None:
    new_ledger = _same_ledger(new_ledger)
    fake = FakeTime()
    new_ledger().rate_limited(KEY, pause=9.0)
    late = _worker(new_ledger(), fake)
    late.start()
    slept: list[float] = []

    async def first_request() -> None:
        start = fake.now
        async with late._throttle:
            slept.append(fake.now - start)

    asyncio.run(first_request())
    assert 8.0 < slept[0] <= 9.0


def test_the_next_night_starts_where_the_last_ended_capped(new_ledger: NewLedger) -> None:
    new_ledger = _same_ledger(new_ledger)
    fake = FakeTime()
    ledger = new_ledger()
    tonight = _worker(ledger, fake)
    tonight.start()
    tonight._throttle.on_rate_limited()  # 8 -> 4
    tonight._throttle.on_rate_limited()  # 4 -> 2 (no pause set between them)
    tonight.finish()
    assert [r.concurrency for r in ledger.api_limits()] == [2]
    tomorrow = _worker(new_ledger(), fake)
    tomorrow.start()
    assert tomorrow._throttle.limit == 2
    small = _worker(new_ledger(), fake, cap=1)
    small.start()
    assert small._throttle.limit == 1  # never above this night's own cap
    small.finish()
    assert [r.concurrency for r in ledger.api_limits()] == [2]  # a cap is not a lesson


def test_the_shared_row_is_named_by_host_and_port_and_the_keys_fingerprint() -> None:
    key = limit_key("http://127.0.0.1:8123/api/v1", "0123456789abcdef")
    assert key == LimitKey("127.0.0.1:8123", "key:0123456789abcdef")
    assert limit_key("https://app.flora.ai/api/v1", "ab").api_host == "app.flora.ai"


def test_a_429_is_shared_at_once_not_at_the_next_read(new_ledger: NewLedger) -> None:
    """While ``run`` waits out its read interval (1 s here), our 429 reaches the ledger."""
    fake = FakeTime()
    ledger = new_ledger()
    worker = _worker(ledger, fake)
    worker.start()

    async def scenario() -> float | None:
        sharing = asyncio.create_task(worker.run())
        await asyncio.sleep(0)  # run is now asleep until its next read
        worker._throttle.pause_all(30.0)
        for _ in range(3):
            await asyncio.sleep(0)
        row = ledger.api_limit(KEY)
        sharing.cancel()
        await asyncio.gather(sharing, return_exceptions=True)
        return None if row is None else row.pause_left

    left = asyncio.run(scenario())
    assert left is not None and 29.0 < left <= 30.0
    assert worker._throttle.on_change is None  # let go of once run stops
