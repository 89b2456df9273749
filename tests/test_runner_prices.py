"""The runner re-checks a technique's price mid-batch (``runner.prices``), off the hot path.

Against httpx.MockTransport with clocks the test drives: no check within the period, a
check once it has passed, and a check after a charge unlike the quote.
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import httpx
from ledgers import LedgerWith
from test_runner_rounds import DONE, POSTER, drive, media, states

from floraq.runner.prices import PRICE_POSTS, PRICE_TTL, Prices

TECHNIQUE = "/api/v1/techniques/poster"
Handler = Callable[[httpx.Request], httpx.Response]


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def flora(price: float, seen: list[str], clock: Clock, *, moves: float = 0.0) -> Handler:
    """FLORA asking ``price`` now; the first POST moves ``clock`` on by ``moves`` seconds."""

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "media.test":
            return media(request)
        seen.append(f"{request.method} {request.url.path}")
        if request.method == "GET" and request.url.path == TECHNIQUE:
            return httpx.Response(200, json={**POSTER, "run_cost": price})
        if request.method == "POST" and seen.count(seen[-1]) == 1:
            clock.now += moves
        return httpx.Response(200, json=DONE)

    return handler


def test_no_price_check_within_the_period(ledger_with: LedgerWith, tmp_path: Path) -> None:
    """A short batch whose charges match their quotes: not one extra GET of the technique."""
    seen: list[str] = []
    clock = Clock()
    ledger = ledger_with(["a", "b", "c"])
    drive(ledger, flora(0.2, seen, clock), tmp_path, clock=clock, time_scale=1.0)
    assert states(ledger) == {"downloaded": 3}
    assert f"GET {TECHNIQUE}" not in seen


def test_a_price_due_a_check_is_checked_once_before_the_next_post(
    ledger_with: LedgerWith, tmp_path: Path
) -> None:
    """The period passes after the first POST: one GET, the next POST quoted at 0.2.

    The row POSTed before the check may have been charged the new price too: its quote
    rises with it (its charge, 0.1 here, replaces the quote once FLORA reports it).
    """
    seen: list[str] = []
    clock = Clock()
    ledger = ledger_with(["a", "b"])
    handler = flora(0.2, seen, clock, moves=PRICE_TTL)
    drive(ledger, handler, tmp_path, clock=clock, slots=1, time_scale=1.0)
    assert states(ledger) == {"downloaded": 2}
    assert seen.count(f"GET {TECHNIQUE}") == 1
    assert seen.index(f"GET {TECHNIQUE}") == 1  # after the first POST, before the second
    quotes = ledger.query("SELECT estimated_micros AS q FROM jobs ORDER BY id")
    assert [r["q"] for r in quotes] == [200_000, 200_000]
    [saved] = ledger.query("SELECT run_cost_micros FROM techniques")
    assert saved["run_cost_micros"] == 200_000
    assert ledger.committed_cost("b") == Decimal("0.2")  # both charged 0.1 in the end


def test_prices_are_due_by_time_by_posts_and_by_doubt() -> None:
    """The three reasons for a check, and a check resets them all."""
    clock = Clock()
    prices = Prices(clock=clock, ttl=30.0)
    assert not prices.due("poster")
    clock.now += 30.0
    assert prices.due("poster")
    assert prices.checked("poster") == []
    for job_id in range(PRICE_POSTS):
        prices.posted("poster", job_id)
    assert prices.due("poster")
    assert prices.checked("poster") == list(range(PRICE_POSTS))
    assert not prices.due("poster")
    prices.doubt("poster")
    assert prices.due("poster")
    prices.failed("poster")
    assert not prices.due("poster")
