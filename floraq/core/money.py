"""Exact money: every amount is a ``Decimal`` of US dollars, stored as integer micro-dollars.

FLORA sends prices and charges as JSON numbers; floraq reads them as decimals (never
through ``float``), quantizes them to a millionth of a dollar, and stores and sums them
as integers, so 1,000 charges of 0.1 add up to exactly 100. A value that is not a
finite, non-negative number is not an amount: it reads as "unknown" (``None``), never
as a credit.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from typing import TypeVar

MICRO = Decimal("0.000001")  # the unit amounts are kept in: a millionth of a dollar
ZERO = Decimal("0.000000")
# The largest amount floraq takes (a billion dollars): beyond it a price, a charge or a cap
# is not money but a mistake, and its micro-dollars would not fit a 64-bit column.
MAX_AMOUNT = Decimal(10) ** 9

K = TypeVar("K")


def amount(value: object) -> Decimal | None:
    """An amount from a JSON value (int, float, Decimal or numeric string); None if unusable.

    A float is read through its shortest repr (``0.1`` is ``Decimal("0.1")``), so a value
    that came through ``json.loads`` without ``parse_float=Decimal`` is still exact.
    """
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, float):
        value = repr(value)
    if not isinstance(value, int | str | Decimal):
        return None
    try:
        number = Decimal(value)
        if not number.is_finite() or number < 0 or number > MAX_AMOUNT:
            return None
        return number.quantize(MICRO, rounding=ROUND_HALF_EVEN)
    except (InvalidOperation, ValueError):
        return None


def to_micros(value: Decimal) -> int:
    """The integer number of micro-dollars a ledger column stores."""
    return int(value.quantize(MICRO, rounding=ROUND_HALF_EVEN).scaleb(6))


def from_micros(micros: int) -> Decimal:
    """The amount an integer micro-dollar column holds."""
    return (Decimal(micros) * MICRO).quantize(MICRO)


def usd(value: Decimal, *, places: int = 2) -> str:
    """An amount for people: at least ``places`` decimals, more only when they are not zero.

    ``usd(Decimal("0.05"))`` is ``0.05``, ``usd(Decimal("0.0125"))`` is ``0.0125``: a
    price is never shown rounded to something it is not.
    """
    text = f"{value.normalize():f}"
    whole, _, fraction = text.partition(".")
    return f"{whole}.{fraction.ljust(places, '0')}"


def as_json(value: Decimal) -> float:
    """An amount as a JSON number, at the very edge of output (never summed afterwards).

    ``repr`` of the nearest float is the shortest text that reads back as that float, and
    for an amount of micro-dollars (< 10**9 USD) that text is the amount itself:
    ``Decimal("100.000000")`` prints ``100.0``, ``Decimal("0.13")`` prints ``0.13``.
    """
    return float(value)


@dataclass(frozen=True, slots=True)
class CostTotals:
    """Rows, what they were quoted and charged, and how many charges are still unsettled.

    The one place totals and floors are computed: ``status``, ``batches``, the report
    and ``export`` all add these up instead of summing amounts themselves.
    """

    rows: int = 0
    estimated: Decimal = ZERO
    charged: Decimal = ZERO
    unsettled: int = 0  # finished runs (or earlier attempts) whose charge is not known yet

    @property
    def is_floor(self) -> bool:
        """The charged total is only a lower bound while any charge is unsettled."""
        return self.unsettled > 0

    def __add__(self, other: CostTotals) -> CostTotals:
        return CostTotals(
            rows=self.rows + other.rows,
            estimated=self.estimated + other.estimated,
            charged=self.charged + other.charged,
            unsettled=self.unsettled + other.unsettled,
        )


def total(items: Iterable[CostTotals]) -> CostTotals:
    """The sum of ``items`` (exact: amounts are Decimals of micro-dollars)."""
    result = CostTotals()
    for item in items:
        result = result + item
    return result


def totals_by(items: Iterable[tuple[K, CostTotals]]) -> dict[K, CostTotals]:
    """Totals per key, keys in first-seen order (per batch, per technique, ...)."""
    grouped: dict[K, CostTotals] = {}
    for key, item in items:
        grouped[key] = grouped.get(key, CostTotals()) + item
    return grouped
