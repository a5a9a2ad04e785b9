"""`wfopt.loop_state`: the loop's `state.json`."""

from __future__ import annotations

import pytest

from wfopt.loop_errors import LoopError
from wfopt.loop_state import load_state, new_state, save_state


def test_state_is_saved_atomically_and_read_back(tmp_path):
    state = new_state()
    state.update(episode=3, cursor=18, checkpoint="/x/step-000004", wandb_run_id="abc")
    save_state(tmp_path, state)
    assert load_state(tmp_path) == state
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]  # no temp file left
    (tmp_path / "state.json").write_text("{broken")
    with pytest.raises(LoopError, match="unreadable"):
        load_state(tmp_path)
    with pytest.raises(LoopError, match=r"no state\.json"):
        load_state(tmp_path / "missing")
