"""The workspace balance: reserved when a run is created, refunded when it fails.

Kept in integer micro-dollars so that no number of charges and refunds drifts; shown
as USD only at the edge.
"""

from __future__ import annotations

import heapq

MICROS = 1_000_000


def micros(usd: float) -> int:
    return round(usd * MICROS)


def usd(amount_micros: int) -> float:
    return amount_micros / MICROS


class Billing:
    """The balance, the charged total, and the refunds due when failing runs end."""

    def __init__(self, balance_usd: float) -> None:
        self.balance_micros = micros(balance_usd)
        self.charged_micros = 0
        self._refunds: list[tuple[float, str, int]] = []  # (when, run id, micro-dollars)

    def set_balance(self, balance_usd: float) -> None:
        self.balance_micros = micros(balance_usd)

    def can_afford(self, cost_micros: int) -> bool:
        return self.balance_micros >= cost_micros

    def charge(
        self,
        run_id: str,
        cost_micros: int,
        *,
        refund_at: float | None,
        refund_micros: int | None = None,
    ) -> None:
        """Reserve a run's cost; ``refund_at`` is when it fails (FLORA bills completed runs),
        and ``refund_micros`` what comes back then (all of it unless a failure is charged)."""
        self.balance_micros -= cost_micros
        self.charged_micros += cost_micros
        refund = cost_micros if refund_micros is None else refund_micros
        if refund_at is not None and refund:
            heapq.heappush(self._refunds, (refund_at, run_id, refund))

    def settle(self, now: float) -> None:
        """Refund every run that has failed by ``now``."""
        while self._refunds and self._refunds[0][0] <= now:
            _, _, cost = heapq.heappop(self._refunds)
            self.balance_micros += cost
            self.charged_micros -= cost
