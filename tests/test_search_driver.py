"""`wfopt.search.driver`: the checks of the `mcts` config."""

from __future__ import annotations

import pytest
from conftest import mcts

from wfopt.search.driver import check_mcts_config
from wfopt.search.errors import SearchError


def test_check_mcts_config_names_each_bad_key():
    check_mcts_config(mcts(edit_first=["swap_operator", "add_review"]))
    with pytest.raises(SearchError) as error:
        check_mcts_config(mcts(edit_first=["swap_operators"], edit_share=1.5, rollouts=0))
    message = str(error.value)
    assert "swap_operators" in message and "edit_share=1.5" in message
    assert "mcts.rollouts=0 (must be >= 1)" in message
