"""Workflow search (MCTS): the tree (tree.py), selection rules (selection.py), structural edits
(edits.py), the algorithm (mcts.py), and `wfopt search` with its output files (runner.py)."""

from __future__ import annotations

from wfopt.search.runner import SearchError, SearchReport, run, search_problems

__all__ = ["SearchError", "SearchReport", "run", "search_problems"]
