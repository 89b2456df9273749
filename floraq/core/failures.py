"""What to do about a run that ended ``failed``, decided from its error code and message.

Two taxonomies reach us: the documented codes (``model_timeout``, ``safety_blocked``,
``input_unreachable``, ``internal_error``) and the codes seen live (``GENERATION_*``,
``GPU_PROVIDER_ERROR``, ``PROVIDER_ERROR``). Both are matched case-insensitively. A moderation
refusal is sometimes hidden under a provider code, so moderation wording in the message wins
over any code: re-running a refused input only spends money.

    code (any case)          tier
    model_timeout            retry_now
    internal_error           retry_now
    generation_timeout       retry_now
    generation_*             retry_later
    gpu_provider_error       retry_later
    provider_error           retry_later
    safety_blocked           change_input
    input_unreachable        change_input
    anything else, or none   report
    message mentions safety / moderat / refus / policy  ->  change_input, whatever the code
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from enum import StrEnum


class FailureTier(StrEnum):
    RETRY_NOW = "retry_now"  # transient: a new attempt may run at once
    RETRY_LATER = "retry_later"  # the provider is struggling: a new attempt after a pause
    CHANGE_INPUT = "change_input"  # the input was refused: never re-run it unchanged
    REPORT = "report"  # not understood: show it to a person rather than spend on a guess


_TIER_BY_CODE: Mapping[str, FailureTier] = {
    "model_timeout": FailureTier.RETRY_NOW,
    "internal_error": FailureTier.RETRY_NOW,
    "generation_timeout": FailureTier.RETRY_NOW,
    "gpu_provider_error": FailureTier.RETRY_LATER,
    "provider_error": FailureTier.RETRY_LATER,
    "safety_blocked": FailureTier.CHANGE_INPUT,
    "input_unreachable": FailureTier.CHANGE_INPUT,
}
_TIER_BY_PREFIX: Mapping[str, FailureTier] = {
    "generation_": FailureTier.RETRY_LATER,
}
_MODERATION = re.compile(r"safety|moderat|refus|policy", re.IGNORECASE)


def classify_failure(code: str | None, message: str | None) -> FailureTier:
    """The tier of a failed run from its ``error_code`` and ``error_message``, either absent."""
    if message and _MODERATION.search(message):
        return FailureTier.CHANGE_INPUT
    if not code:
        return FailureTier.REPORT
    normalized = code.strip().lower()
    if normalized in _TIER_BY_CODE:
        return _TIER_BY_CODE[normalized]
    for prefix, tier in _TIER_BY_PREFIX.items():
        if normalized.startswith(prefix):
            return tier
    return FailureTier.REPORT
