"""What a problem-scope search writes per finished tree, and reads back to resume.

- `trajectory_record`: the tree's group, one line of `trajectories.jsonl` (the schema is
  `wfopt.trajectory.Trajectory`, which `wfopt train` reads);
- `finished_problem_ids`: the problems a trajectories file already holds (a torn last line,
  left by a killed search, is cut off);
- `safe_name`: the file name of a tree's dump, `trees/<safe_name(problem_id)>.json`.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

from wfopt.search.errors import SearchError
from wfopt.search.mcts import TreeSearch
from wfopt.trajectory import Trajectory

log = logging.getLogger(__name__)


def trajectory_record(
    problem: Any, search: TreeSearch, dataset: str, split: str, keep_invalid: bool = True
) -> dict[str, Any]:
    """One problem's group (`wfopt.trajectory.Trajectory`, the schema `wfopt train` reads):
    every tree node, then every policy sample that made no node of its own: duplicates at the
    reward of the node they repeat, and (`keep_invalid`) invalid ones at
    `mcts.invalid_reward` (GRPO then pushes the policy away from invalid code). Policy samples
    carry their exact prompt and completion ids."""
    invalid_reward = float(search.cfg.invalid_reward)
    # one row per workflow: (code, origin, policy sample or None, evaluation numbers)
    rows: list[tuple[str, str, Any, dict[str, Any]]] = []
    for n in search.tree.nodes:
        runs = max(n.ledger.get("runs", 1), 1)
        cost = n.ledger.get("cost_usd")
        tokens = n.ledger.get("prompt_tokens", 0) + n.ledger.get("completion_tokens", 0)
        evaluation = {
            "rewards": n.reward,
            "scores": n.score,
            "costs": None if cost is None else cost / runs,  # mean USD per run
            "tokens": tokens / runs,
            "hashes": n.hash,
            "parents": n.parent,
        }
        rows.append((n.source, n.origin, n.sample, evaluation))
    invalid = {"rewards": invalid_reward, "scores": 0.0, "costs": 0.0, "tokens": 0}
    for extra in search.extra_samples:
        if extra.node is not None:  # a duplicate shares its node's evaluation
            rows.append((extra.sample.code, extra.origin, extra.sample, rows[extra.node][3]))
        elif keep_invalid:
            evaluation = {**invalid, "hashes": None, "parents": None}
            rows.append((extra.sample.code, extra.origin, extra.sample, evaluation))
    samples = [sample for _, _, sample, _ in rows]
    report_only = ("scores", "costs", "tokens", "hashes", "parents")
    return Trajectory(
        problem=problem.question,
        problem_id=problem.id,
        workflow_codes=[code for code, _, _, _ in rows],
        rewards=[evaluation["rewards"] for _, _, _, evaluation in rows],
        sources=[origin for _, origin, _, _ in rows],
        prompt_ids=[None if s is None else s.prompt_ids for s in samples],
        completion_ids=[None if s is None else s.completion_ids for s in samples],
        stopped=[None if s is None else s.stopped for s in samples],
        extra={
            **{key: [evaluation[key] for *_, evaluation in rows] for key in report_only},
            "dataset": dataset,
            "split": split,
            "kind": problem.kind,  # which operators the policy's prompt lists
        },
    ).to_json()


def finished_problem_ids(path: Path) -> set[str]:
    """Problem ids already in a trajectories file.

    A torn last line (the process was killed mid-write) is cut off with a warning; any other
    unreadable line is an error, because silently dropping finished work would lose it.
    """
    if not path.exists():
        return set()
    lines = path.read_bytes().split(b"\n")
    done: set[str] = set()
    good_bytes = 0
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            good_bytes += len(line) + 1
            continue
        try:
            record = json.loads(line)
            done.add(str(record["problem_id"]))
        except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as err:
            if number < len(lines) - 1 or (number == len(lines) - 1 and lines[-1]):
                raise SearchError(f"{path}:{number}: unreadable trajectory line ({err})") from None
            log.warning(
                "%s:%d: dropping a torn last line (the previous run was killed)", path, number
            )
            with path.open("r+b") as f:
                f.truncate(good_bytes)
            break
        good_bytes += len(line) + 1
    return done


def safe_name(problem_id: Any) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(problem_id))[:100] or "problem"
