"""Exact money: amounts read from JSON, stored as micro-dollars, summed without drift."""

from __future__ import annotations

from decimal import Decimal

import pytest

from floraq.core.money import ZERO, amount, from_micros, to_micros, usd


def test_a_thousand_charges_of_a_dime_are_exactly_a_hundred_dollars() -> None:
    """The float sum drifts (99.9999999999986); the exact one does not."""
    total = sum((amount(0.1) or ZERO for _ in range(1000)), ZERO)
    assert total == Decimal(100)
    assert sum(to_micros(amount(0.1) or ZERO) for _ in range(1000)) == 100_000_000


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (0.05, Decimal("0.05")),
        ("0.0125", Decimal("0.0125")),
        (3, Decimal(3)),
        (Decimal("1.5"), Decimal("1.5")),
        ("0.0000004", Decimal(0)),  # below a micro-dollar: rounds half-even
    ],
)
def test_amounts_read_exactly(raw: object, expected: Decimal) -> None:
    """Numbers and numeric strings become decimals without passing through binary floats."""
    assert amount(raw) == expected


@pytest.mark.parametrize(
    "raw", [None, True, False, float("nan"), float("inf"), -0.01, "-1", "abc", [], {}]
)
def test_anything_else_is_not_an_amount(raw: object) -> None:
    """Negative, non-finite or non-numeric values are unknown, never a credit."""
    assert amount(raw) is None


def test_micros_round_trip() -> None:
    """What a ledger column stores reads back as the same amount."""
    for text in ("0", "0.000001", "0.05", "12.345678", "99999.999999"):
        assert from_micros(to_micros(Decimal(text))) == Decimal(text)


@pytest.mark.parametrize(
    ("value", "shown"),
    [("0.05", "0.05"), ("0.0125", "0.0125"), ("12", "12.00"), ("100", "100.00"), ("0", "0.00")],
)
def test_amounts_for_people_never_hide_a_digit(value: str, shown: str) -> None:
    """Two decimals at least; more only where the amount has them."""
    assert usd(Decimal(value)) == shown
