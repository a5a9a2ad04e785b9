"""`wfopt.loop_results`: the loop's results table as data."""

from __future__ import annotations

from wfopt.loop_results import build_on


def test_next_episode_builds_on_the_best_validation_policy_so_far():
    rows = [
        {"split": "validation", "episode": 0, "accuracy": 0.10},
        {"split": "validation", "episode": 1, "accuracy": 0.00},
    ]
    checkpoints = {"1": "ckpt-1"}
    assert build_on(rows, checkpoints, "last") == "ckpt-1"
    assert build_on(rows, checkpoints, "best_val") is None  # back to the untrained policy
    rows.append({"split": "validation", "episode": 2, "accuracy": 0.10})
    checkpoints["2"] = "ckpt-2"
    assert build_on(rows, checkpoints, "best_val") == "ckpt-2"  # a tie: the later one
    rows += [
        {"split": "validation", "episode": 3, "accuracy": 0.05},
        {"split": "test", "episode": 3, "accuracy": 0.90},  # test rows never choose
    ]
    checkpoints["3"] = "ckpt-3"
    assert build_on(rows, checkpoints, "best_val") == "ckpt-2"
    assert build_on(rows, checkpoints, "last") == "ckpt-3"
