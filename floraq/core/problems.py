"""A problem found in a manifest or a row, located precisely enough to fix it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Severity = Literal["error", "warning"]


@dataclass(frozen=True, slots=True, order=True)
class Problem:
    """One thing wrong with the input, where it is, and what to do about it.

    ``location`` reads like ``jobs.yaml: job 2 (product-shot), row 14 (products.csv
    line 15), field 'input_image'``; ``message`` says what is wrong and how to fix it.
    """

    location: str
    message: str
    severity: Severity = "error"

    def __str__(self) -> str:
        return f"{self.location}: {self.message}"
