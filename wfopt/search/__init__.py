"""Workflow search (MCTS): the tree (tree.py), selection rules (selection.py), structural edits
(edits.py), the algorithm (mcts.py), searching problems and datasets (driver.py), what a search
writes (output.py), its summary (report.py), its error (errors.py), and the `wfopt search`
command (runner.py)."""

from __future__ import annotations

from wfopt.search.driver import search_problems
from wfopt.search.errors import SearchError
from wfopt.search.report import SearchReport
from wfopt.search.runner import run

__all__ = ["SearchError", "SearchReport", "run", "search_problems"]
