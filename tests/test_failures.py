"""Failed runs sort into four tiers, from either taxonomy of error codes."""

from __future__ import annotations

import pytest

from floraq.core.failures import FailureTier, classify_failure


@pytest.mark.parametrize(
    ("code", "message", "tier"),
    [
        ("model_timeout", "The model did not return in time.", FailureTier.RETRY_NOW),
        ("internal_error", None, FailureTier.RETRY_NOW),
        ("safety_blocked", None, FailureTier.CHANGE_INPUT),
        ("input_unreachable", "Could not fetch https://x/a.jpg", FailureTier.CHANGE_INPUT),
        ("GENERATION_TIMEOUT", "Generation timed out", FailureTier.RETRY_NOW),
        ("GENERATION_FAILED", "Generation failed", FailureTier.RETRY_LATER),
        ("GENERATION_OOM", None, FailureTier.RETRY_LATER),
        ("GPU_PROVIDER_ERROR", "GPU provider unavailable", FailureTier.RETRY_LATER),
        (
            "PROVIDER_ERROR",
            "The provider failed to complete the generation.",
            FailureTier.RETRY_LATER,
        ),
        ("provider_error", None, FailureTier.RETRY_LATER),
        ("Model_Timeout", None, FailureTier.RETRY_NOW),
        ("SOMETHING_NEW", "Unexpected", FailureTier.REPORT),
        (None, None, FailureTier.REPORT),
        ("", "", FailureTier.REPORT),
    ],
)
def test_codes_map_to_tiers(code: str | None, message: str | None, tier: FailureTier) -> None:
    """Documented and live codes land in the tier API-NOTES.md gives them."""
    assert classify_failure(code, message) is tier


@pytest.mark.parametrize(
    ("code", "message"),
    [
        ("PROVIDER_ERROR", "Request refused by content moderation policy"),
        ("GENERATION_TIMEOUT", "SAFETY filter triggered"),
        ("internal_error", "Blocked by policy"),
        ("SOMETHING_NEW", "The provider REFUSED this prompt"),
        (None, "moderated"),
    ],
)
def test_moderation_wording_wins_over_the_code(code: str | None, message: str) -> None:
    """A refusal hidden under a retryable code is still 'change the input'."""
    assert classify_failure(code, message) is FailureTier.CHANGE_INPUT


def test_tiers_are_strings_for_the_ledger() -> None:
    """Tiers are stored and printed by value."""
    assert [str(tier) for tier in FailureTier] == [
        "retry_now",
        "retry_later",
        "change_input",
        "report",
    ]
