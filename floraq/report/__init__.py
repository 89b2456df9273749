"""The HTML report (a contact sheet): ``write_report`` and its ``Summary`` input."""

from floraq.report.cards import LocalInput
from floraq.report.page import (
    PAGE_ROWS,
    ReportWriter,
    Summary,
    page_name,
    remove_stale_pages,
    write_report,
)
from floraq.report.text import money
from floraq.report.thumbs import cache_dir

__all__ = [
    "PAGE_ROWS",
    "LocalInput",
    "ReportWriter",
    "Summary",
    "cache_dir",
    "money",
    "page_name",
    "remove_stale_pages",
    "write_report",
]
