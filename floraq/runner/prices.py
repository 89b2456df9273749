"""A technique's price, re-checked while a batch runs: the cap holds at today's run_cost.

FLORA may change a technique's ``run_cost`` at any time, and it charges the price of the
moment a run is created. A quote taken when a row was claimed can therefore be stale by
the time its POST leaves. Re-GETting the technique before every POST would double the
requests of a batch, so the price is trusted for a while and checked again when any of
these holds (per technique):

- ``PRICE_TTL`` seconds (x the time scale) passed since the last check,
- ``PRICE_POSTS`` POSTs left since the last check,
- something said the price moved: a 402, or a run charged other than its quote.

When a check finds a new price, the claims not sent yet are quoted again (and capped)
at it before their POST, and a rise is also applied to the rows POSTed since the last
check (at most ``PRICE_POSTS``): FLORA may have charged them the new price already, and
the cap must count that until their charge is known.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

from floraq.core.lifecycle import QUOTE_COMMITTED
from floraq.core.technique import Technique
from floraq.ledger import LedgerBackend

PRICE_TTL = 30.0  # seconds (x time_scale) a fetched run_cost is trusted before a POST
PRICE_TTL_FLOOR = 0.1  # seconds: a time scale of 0 (no waits) must not mean a GET per POST
PRICE_POSTS = 50  # POSTs of one technique between two checks of its price
MAX_REQUOTES = 3  # re-quotes of one intent before its POST (a price that will not settle)


@dataclass(slots=True)
class _Watch:
    """One technique's last check: when, and which rows were POSTed since."""

    checked_at: float
    posted: list[int] = field(default_factory=list)  # job ids POSTed since the check
    doubted: bool = False  # a 402 or an off-quote charge: check before the next POST
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


@dataclass(slots=True)
class Prices:
    """When each technique's price is due a check (the runner keeps one per run)."""

    clock: Callable[[], float]
    ttl: float = PRICE_TTL
    every: int = PRICE_POSTS
    _watches: dict[str, _Watch] = field(default_factory=dict)

    def _watch(self, slug: str) -> _Watch:
        # The definitions a run starts with were just fetched (submit) or refreshed
        # (resume, retry), so the first check is one period away.
        if slug not in self._watches:
            self._watches[slug] = _Watch(checked_at=self.clock())
        return self._watches[slug]

    def due(self, slug: str) -> bool:
        watch = self._watch(slug)
        return (
            watch.doubted
            or len(watch.posted) >= self.every
            or self.clock() - watch.checked_at >= self.ttl
        )

    def doubt(self, slug: str) -> None:
        """Something suggests the price moved: check it before the next POST."""
        self._watch(slug).doubted = True

    def posted(self, slug: str, job_id: int) -> None:
        self._watch(slug).posted.append(job_id)

    def lock(self, slug: str) -> asyncio.Lock:
        """Held while one task checks: the others wait for its answer instead of asking."""
        return self._watch(slug).lock

    def failed(self, slug: str) -> None:
        """The check could not be made: keep the cached price for one more period."""
        watch = self._watch(slug)
        watch.checked_at, watch.doubted = self.clock(), False

    def checked(self, slug: str) -> list[int]:
        """Mark the price as just checked; the rows POSTed since the previous check."""
        watch = self._watch(slug)
        recent, watch.posted = watch.posted, []
        watch.checked_at, watch.doubted = self.clock(), False
        return recent


def price_ttl(time_scale: float) -> float:
    """How long a fetched price is trusted at this time scale."""
    return max(PRICE_TTL * time_scale, PRICE_TTL_FLOOR)


def save_price(ledger: LedgerBackend, fresh: Technique, recent: list[int], *, rise: bool) -> None:
    """Today's definition; after a rise, the new price on rows that may have been charged it."""
    ledger.save_technique(fresh.slug, fresh.to_api(), fresh.run_cost)
    if not rise:
        return
    for job_id in recent:
        job = ledger.job(job_id)
        if (
            job.charged_cost is None
            and job.state in QUOTE_COMMITTED
            and (job.estimated_cost is None or job.estimated_cost < fresh.run_cost)
        ):
            ledger.update(job_id, estimated_cost=fresh.run_cost)
