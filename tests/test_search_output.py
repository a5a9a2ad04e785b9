"""`wfopt.search.output`: reading a trajectories file back to resume."""

from __future__ import annotations

import json

import pytest

from wfopt.search.errors import SearchError
from wfopt.search.output import finished_problem_ids


def test_finished_problem_ids_cuts_a_torn_line_and_rejects_corruption(tmp_path):
    path = tmp_path / "trajectories.jsonl"
    good = json.dumps({"problem_id": 7, "problem": "q"}) + "\n"
    path.write_text(good + '{"problem_id": 8, "prob')
    assert finished_problem_ids(path) == {"7"}
    assert path.read_text() == good  # the torn line is gone, the finished one kept
    path.write_text("not json\n" + good)
    with pytest.raises(SearchError, match=":1: unreadable"):
        finished_problem_ids(path)
    assert path.read_text() == "not json\n" + good  # nothing lost
    assert finished_problem_ids(tmp_path / "missing.jsonl") == set()
