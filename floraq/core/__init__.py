"""The pure core: decisions as functions of their inputs, with no I/O.

Nothing under ``floraq.core`` may import httpx, sqlite3, os.environ, the clock or
randomness; ``tests/test_core_purity.py`` enforces it.
"""
