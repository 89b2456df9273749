"""floraq: run batches of FLORA techniques safely, cheaply and resumably."""

__version__ = "0.1.0"
