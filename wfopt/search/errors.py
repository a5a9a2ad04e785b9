"""`SearchError`: the one error of the search's own making, shared by its config checks
(`driver.py`), its resume files (`output.py`) and `wfopt search` (`runner.py`)."""

from __future__ import annotations


class SearchError(RuntimeError):
    """A search that cannot start or continue (bad config, unreadable resume file)."""
