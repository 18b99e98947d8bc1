"""One experiment's research report, and the overview of all; knows no comparison or server.

- ``write``: RESEARCH_REPORT.md and figures/ built in a staging folder and swapped in whole;
- ``sections``: the training sections; ``results``: 5CAT and evaluation sections;
- ``figures``: the report's PNG figures.
"""

from __future__ import annotations

from backlm.report.write import ReportResult, overview, write_report

__all__ = ["ReportResult", "overview", "write_report"]
