"""docs/architecture.md stays true of the code: what it names exists, and it names everything."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "architecture.md"
NAMED = re.compile(r"floraq/[A-Za-z0-9_/.]+\.(?:py|json)")


def named_paths() -> set[str]:
    return set(NAMED.findall(DOC.read_text(encoding="utf-8")))


def test_every_path_the_architecture_page_names_exists() -> None:
    """A module renamed or removed must be renamed or removed on the page too."""
    missing = sorted(p for p in named_paths() if not (ROOT / p).is_file())
    assert missing == []


def test_every_module_of_floraq_is_on_the_architecture_page() -> None:
    """A new module gets its one line on the page, so a newcomer can find it in one hop."""
    modules = {p.relative_to(ROOT).as_posix() for p in (ROOT / "floraq").rglob("*.py")}
    assert sorted(modules - named_paths()) == []


def test_the_use_cases_section_keeps_its_marker() -> None:
    """The use-case split fills in the section after this marker."""
    text = DOC.read_text(encoding="utf-8")
    assert "## Use cases\n\n<!-- use-cases -->" in text
