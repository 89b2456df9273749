"""floraq's ledger does not drag numpy (or pandas) into every command through sqlite-utils."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest


def test_opening_a_ledger_does_not_import_numpy_and_numpy_still_imports_after() -> None:
    pytest.importorskip("numpy")  # sqlite-utils imports it only where it is installed
    probe = textwrap.dedent(
        """
        import sys, tempfile, pathlib
        from floraq.ledger import open_ledger
        with tempfile.TemporaryDirectory() as tmp:
            ledger = open_ledger(pathlib.Path(tmp) / "floraq.db")
            ledger.close()
        print("numpy" in sys.modules, "pandas" in sys.modules)
        import numpy
        print(numpy.zeros(2).tolist())
        """
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["False False", "[0.0, 0.0]"]
