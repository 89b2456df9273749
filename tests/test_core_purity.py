"""floraq.core decides and never acts: no network, database, environment, clock, chance or files.

The rule is checked on the source of every module under floraq/core, with an allow-list of
imports, so a new module or a new import has to pass it too.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import floraq.core

CORE = Path(floraq.core.__file__).parent
MODULES = sorted(CORE.glob("*.py"))

ALLOWED_IMPORTS = frozenset(
    {
        "__future__",
        "abc",
        "bisect",
        "codecs",
        "collections",
        "collections.abc",
        "csv",
        "dataclasses",
        "decimal",  # exact money (core/money.py)
        "difflib",
        "enum",
        "functools",
        "hashlib",
        "io",
        "itertools",
        "json",
        "math",
        "operator",
        "re",
        "statistics",
        "string",
        "textwrap",
        "types",
        "typing",
        "unicodedata",
        "urllib.parse",
        "pathlib",  # pure paths only: see PURE_PATHS
        "yaml",  # parses text handed in
        "jsonschema",  # validates values handed in
        "floraq.errors",
    }
)
PURE_PATHS = frozenset({"PurePath", "PurePosixPath", "PureWindowsPath"})
FORBIDDEN_NAMES = frozenset({"open", "print", "input", "exec", "eval", "__import__"})
FORBIDDEN_ATTRIBUTES = frozenset(
    {"open", "read_text", "read_bytes", "write_text", "write_bytes", "field_size_limit"}
)


def impurities(source: str) -> list[str]:
    """Every import or call in ``source`` that would let core do I/O, as 'line N: what'."""
    found: list[str] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [
                f"line {node.lineno}: import {alias.name}"
                for alias in node.names
                if not _allowed(alias.name)
            ]
        elif isinstance(node, ast.ImportFrom):
            module = "." * node.level + (node.module or "")
            if not _allowed(module):
                found.append(f"line {node.lineno}: from {module} import ...")
            elif module == "pathlib":
                found += [
                    f"line {node.lineno}: from pathlib import {alias.name}"
                    for alias in node.names
                    if alias.name not in PURE_PATHS
                ]
        elif isinstance(node, ast.Name) and node.id in FORBIDDEN_NAMES:
            found.append(f"line {node.lineno}: {node.id}")
        elif isinstance(node, ast.Attribute) and node.attr in FORBIDDEN_ATTRIBUTES:
            found.append(f"line {node.lineno}: .{node.attr}")
        elif (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id == "pathlib"
            and node.attr not in PURE_PATHS
        ):
            found.append(f"line {node.lineno}: pathlib.{node.attr}")
    return found


def _allowed(module: str) -> bool:
    if module.startswith(".") or module == "floraq.core" or module.startswith("floraq.core."):
        return True
    return module in ALLOWED_IMPORTS


def test_core_has_modules() -> None:
    """The glob finds the core (a moved package must not make this test vacuous)."""
    assert {"manifest.py", "keys.py", "polling.py", "validation.py"} <= {m.name for m in MODULES}


@pytest.mark.parametrize("module", MODULES, ids=[m.name for m in MODULES])
def test_core_module_is_pure(module: Path) -> None:
    """No import outside the allow-list, no file, print or process-wide call."""
    assert impurities(module.read_text(encoding="utf-8")) == []


@pytest.mark.parametrize(
    ("source", "found"),
    [
        ("import os", ["line 1: import os"]),
        ("import os.path", ["line 1: import os.path"]),
        ("from os import environ", ["line 1: from os import ..."]),
        ("import httpx", ["line 1: import httpx"]),
        ("import sqlite3", ["line 1: import sqlite3"]),
        ("import sqlite_utils", ["line 1: import sqlite_utils"]),
        ("from time import monotonic", ["line 1: from time import ..."]),
        ("import datetime", ["line 1: import datetime"]),
        ("import random", ["line 1: import random"]),
        ("import urllib.request", ["line 1: import urllib.request"]),
        ("from importlib import resources", ["line 1: from importlib import ..."]),
        ("from floraq import api", ["line 1: from floraq import ..."]),
        ("from pathlib import Path", ["line 1: from pathlib import Path"]),
        ("import pathlib\npathlib.Path('x')", ["line 2: pathlib.Path"]),
        ("data = open('x').read()", ["line 1: open"]),
        ("text = path.read_text()", ["line 1: .read_text"]),
        ("import csv\ncsv.field_size_limit(9)", ["line 2: .field_size_limit"]),
        ("print('hi')", ["line 1: print"]),
        ("from pathlib import PurePath\nimport json, re", []),
    ],
)
def test_checker_catches_impurities(source: str, found: list[str]) -> None:
    """The checker itself flags each way core could reach the outside world."""
    assert impurities(source) == found


def test_importing_core_loads_no_io_library() -> None:
    """Transitively too (through floraq.errors, yaml, jsonschema): no HTTP or SQLite client."""
    names = ", ".join(f"floraq.core.{m.stem}" for m in MODULES if m.stem != "__init__")
    code = (
        f"import sys, {names}\n"
        "print(sorted(m for m in ('httpx', 'sqlite3', 'sqlite_utils') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        cwd=CORE.parents[1],
    )
    assert result.stdout.strip() == "[]"
