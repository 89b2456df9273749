"""sqlite-utils imported without numpy and pandas.

sqlite-utils imports both at start whenever they are installed, only to convert their
values on insert, which floraq never stores. In an environment that has them (any data
work) that costs every floraq command 25-200 MB of memory and 0.3-1 s of start-up. They
are hidden from that one import, then visible again to everything else in the process.
"""

from __future__ import annotations

import importlib
import sys

_HIDDEN = ("numpy", "pandas")


def _import_without_numpy() -> None:
    if "sqlite_utils.db" in sys.modules:
        return
    hidden = [name for name in _HIDDEN if name not in sys.modules]
    for name in hidden:
        sys.modules[name] = None  # type: ignore[assignment]  # makes `import name` fail
    try:
        importlib.import_module("sqlite_utils.db")
    finally:
        for name in hidden:
            if name in sys.modules and sys.modules[name] is None:
                del sys.modules[name]


_import_without_numpy()

from sqlite_utils import Database  # noqa: E402
from sqlite_utils.migrations import Migrations  # noqa: E402

__all__ = ["Database", "Migrations"]
