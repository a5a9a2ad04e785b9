"""`wfopt.search.driver`: the checks of the `mcts` config."""

from __future__ import annotations

import re

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


def test_policy_root_needs_policy_samples_to_root_at():
    check_mcts_config(mcts(policy_root=True, policy_samples=2))
    with pytest.raises(SearchError, match=re.escape("mcts.policy_samples >= 1 (is 0)")):
        check_mcts_config(mcts(policy_root=True, policy_samples=0))
    with pytest.raises(SearchError, match=re.escape("mcts.proposer=policy (is edits)")):
        check_mcts_config(mcts(policy_root=True, policy_samples=2, proposer="edits"))
