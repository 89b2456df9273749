"""A technique's definition as ``GET /techniques/{slug}`` returns it: what a row must supply.

Parsing is tolerant of fields we do not know (responses grow) and strict about the few we
rely on, so a changed API fails here with a clear message rather than deep in a batch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from floraq.core.money import amount
from floraq.core.text import is_unprintable, one_line

MEDIA_TYPES = frozenset({"imageUrl", "videoUrl", "audioUrl", "documentUrl"})


@dataclass(frozen=True, slots=True)
class TechniqueIO:
    """One input or output slot; ``type`` is kept as sent, even a type we do not know."""

    id: str
    name: str
    type: str

    @property
    def is_media(self) -> bool:
        """Whether the value is a URL to a file (every ``…Url`` type, known or not)."""
        return self.type in MEDIA_TYPES or self.type.endswith("Url")

    def to_api(self) -> dict[str, str]:
        return {"id": self.id, "name": self.name, "type": self.type}


@dataclass(frozen=True, slots=True)
class Technique:
    """The parts of a technique floraq uses; ``technique_id`` is opaque."""

    slug: str
    technique_id: str
    name: str
    run_cost: Decimal
    inputs: tuple[TechniqueIO, ...]
    outputs: tuple[TechniqueIO, ...]

    @classmethod
    def from_api(cls, slug: str, data: Mapping[str, Any]) -> Technique:
        """Build from the API's JSON object; ValueError naming the field if one is unusable."""
        where = f"technique '{slug}'"
        if not isinstance(data, Mapping):
            raise ValueError(f"{where}: expected a JSON object, got {_kind(data)}")
        run_cost = data.get("run_cost")
        if isinstance(run_cost, bool) or not isinstance(run_cost, int | float):
            raise ValueError(f"{where}: 'run_cost' must be a number, got {_kind(run_cost)}")
        if not math.isfinite(run_cost) or run_cost < 0:
            raise ValueError(f"{where}: 'run_cost' must be a finite number >= 0, got {run_cost}")
        price = amount(run_cost)
        if price is None:  # pragma: no cover - the checks above leave only usable numbers
            raise ValueError(f"{where}: 'run_cost' must be a finite number >= 0, got {run_cost}")
        return cls(
            slug=slug,
            technique_id=_string(data, "technique_id", where),
            name=_string(data, "name", where),
            run_cost=price,
            inputs=_slots(data, "inputs", where),
            outputs=_slots(data, "outputs", where),
        )

    def to_api(self) -> dict[str, Any]:
        """The JSON object ``from_api`` reads back into an equal Technique (for caching)."""
        return {
            "technique_id": self.technique_id,
            "name": self.name,
            # A JSON number, as the API sends it; from_api reads it back exactly.
            "run_cost": float(self.run_cost),
            "inputs": [slot.to_api() for slot in self.inputs],
            "outputs": [slot.to_api() for slot in self.outputs],
        }

    def input(self, input_id: str) -> TechniqueIO | None:
        """The input slot with this id, if the technique has one."""
        return next((slot for slot in self.inputs if slot.id == input_id), None)


def _string(data: Mapping[str, Any], field: str, where: str) -> str:
    """A string field. Ids go back to the API as sent, so one with control characters is
    refused rather than quietly changed; names are only shown, so they are cleaned."""
    value = data.get(field)
    if not isinstance(value, str):
        raise ValueError(f"{where}: '{field}' must be a string, got {_kind(value)}")
    if field == "name":
        return one_line(value, limit=500)
    if is_unprintable(value):
        raise ValueError(f"{where}: '{field}' contains control characters or line breaks")
    return value


def _slots(data: Mapping[str, Any], field: str, where: str) -> tuple[TechniqueIO, ...]:
    items = data.get(field)
    if not isinstance(items, list):
        raise ValueError(f"{where}: '{field}' must be a list, got {_kind(items)}")
    slots: list[TechniqueIO] = []
    for index, item in enumerate(items):
        at = f"{where}: {field}[{index}]"
        if not isinstance(item, Mapping):
            raise ValueError(f"{at} must be an object, got {_kind(item)}")
        slot = TechniqueIO(
            id=_string(item, "id", at),
            name=_string(item, "name", at),
            type=_string(item, "type", at),
        )
        if any(seen.id == slot.id for seen in slots):
            raise ValueError(f"{at}: duplicate id '{slot.id}'")
        slots.append(slot)
    return tuple(slots)


def _kind(value: object) -> str:
    """How a JSON value reads in an error message."""
    if value is None:
        return "nothing (missing or null)"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    return "an object" if isinstance(value, Mapping) else type(value).__name__
