"""Capability suites: named grids of ordinary training runs (tasks × mixers × sizes × learning rates) with a report.

``algornn-suite run NAME [--scale cpu|paper] [--only PATTERN]``, ``algornn-suite report NAME``, ``algornn-suite list``
(or ``python -m algornn.experiments.suite``). The suites and their protocols: ``suites.py``; docs/experiments.md
§Capability suites.
"""

from algornn.experiments.suite.report import best_per_cell, collect, write_report
from algornn.experiments.suite.run import is_finished, run_suite
from algornn.experiments.suite.spec import SCALES, Reference, Run, Suite
from algornn.experiments.suite.suites import SUITES, get_suite

__all__ = [
    "SCALES",
    "SUITES",
    "Reference",
    "Run",
    "Suite",
    "best_per_cell",
    "collect",
    "get_suite",
    "is_finished",
    "run_suite",
    "write_report",
]
