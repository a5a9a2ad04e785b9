"""`LoopError`: the one error of the loop's own making, shared by its config checks
(`loop_config.py`), its state file (`loop_state.py`) and `wfopt loop` (`loop.py`)."""

from __future__ import annotations


class LoopError(RuntimeError):
    """A loop that cannot start or go on; the message says what to do."""
