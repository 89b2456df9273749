"""Exact money: every amount is a ``Decimal`` of US dollars, stored as integer micro-dollars.

FLORA sends prices and charges as JSON numbers; floraq reads them as decimals (never
through ``float``), quantizes them to a millionth of a dollar, and stores and sums them
as integers, so 1,000 charges of 0.1 add up to exactly 100. A value that is not a
finite, non-negative number is not an amount: it reads as "unknown" (``None``), never
as a credit.
"""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation

MICRO = Decimal("0.000001")  # the unit amounts are kept in: a millionth of a dollar
ZERO = Decimal("0.000000")


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
    except (InvalidOperation, ValueError):
        return None
    if not number.is_finite() or number < 0:
        return None
    return number.quantize(MICRO, rounding=ROUND_HALF_EVEN)


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
