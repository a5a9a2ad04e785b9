"""The trajectory: one problem's group of (workflow, reward), as search writes it and GRPO
reads it. This dataclass is the one definition of the `trajectories.jsonl` schema.

A file is JSONL, one problem per line. Per-workflow fields are parallel lists:

    {"problem": str, "problem_id": str | int,
     "workflow_codes": [str, ...], "rewards": [float, ...],          # required
     "sources": [str, ...],      # where each came from (see `source_kind`)
     "prompt_ids": [[int, ...] | null, ...],      # policy samples: the exact prompt ids,
     "completion_ids": [[int, ...] | null, ...],  # the exact completion ids (stop token
     "stopped": [bool | null, ...],               # included when it emitted one)
     "scores", "costs", "tokens", "hashes", "parents": [...],        # reports only
     "dataset": str, "split": str, "kind": "math" | "code"}   # kind: the prompt's operators

Only the first four are required, so hand-made files (`wfopt train trajectories=...`) stay
easy to write; a workflow without ids is trained as off-policy data (grpo/data.py).

`read_trajectories` validates every line and fails on the first bad one with
`<file>:<line>: <reason>`. Blank lines are ignored.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# the file a problem-scope search appends to, one trajectory per line (`wfopt.search.output`)
TRAJECTORIES = "trajectories.jsonl"
REQUIRED_FIELDS = ("problem", "problem_id", "workflow_codes", "rewards")
TOKEN_FIELDS = ("prompt_ids", "completion_ids", "stopped")
# the origins of tree nodes and policy samples, grouped for training and its metrics
SOURCE_KINDS = ("policy_sample", "search", "edit", "seed")


def source_kind(origin: str | None) -> str:
    """The kind of a workflow's origin: `policy_sample` (the policy, training prompt, valid or
    not), `search` (the policy, a search expansion's prompt), `edit` (a structural edit),
    `seed` (the seed workflow, or unknown)."""
    head = (origin or "seed").split(":")[0]
    if head in ("policy_sample", "invalid_sample"):  # invalid_sample: files of wfopt <= 0.1
        return "policy_sample"
    if head == "policy":
        return "search"
    return head if head in SOURCE_KINDS else "seed"


class TrajectoryError(ValueError):
    """A trajectories file (or record) that cannot be trained on; the message names where."""


@dataclass
class Trajectory:
    """One problem's group. `sources`, `prompt_ids`, `completion_ids`, `stopped` have one entry
    per workflow (None entries: not known); `extra` holds the report-only fields."""

    problem: str
    problem_id: str | int
    workflow_codes: list[str]
    rewards: list[float]
    sources: list[str | None] = field(default_factory=list)
    prompt_ids: list[list[int] | None] = field(default_factory=list)
    completion_ids: list[list[int] | None] = field(default_factory=list)
    stopped: list[bool | None] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.workflow_codes)
        for name in ("sources", *TOKEN_FIELDS):
            if not getattr(self, name):
                setattr(self, name, [None] * n)

    def to_json(self) -> dict[str, Any]:
        return {
            "problem": self.problem,
            "problem_id": self.problem_id,
            "workflow_codes": self.workflow_codes,
            "rewards": self.rewards,
            "sources": self.sources,
            "prompt_ids": self.prompt_ids,
            "completion_ids": self.completion_ids,
            "stopped": self.stopped,
            **self.extra,
        }


def _int_list(value: Any) -> bool:
    return isinstance(value, list) and all(
        isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in value
    )


def parse_trajectory(record: Any, where: str) -> Trajectory:
    """Validate one decoded record; `where` (e.g. `file.jsonl:3`) prefixes every error."""

    def fail(reason: str) -> TrajectoryError:
        return TrajectoryError(f"{where}: {reason}")

    if not isinstance(record, dict):
        raise fail(f"expected a JSON object, got {type(record).__name__}")
    for key in REQUIRED_FIELDS:
        if key not in record:
            raise fail(f"missing field {key!r}")
    problem, problem_id = record["problem"], record["problem_id"]
    codes, rewards = record["workflow_codes"], record["rewards"]
    if not isinstance(problem, str):
        raise fail(f"'problem' must be a string, got {type(problem).__name__}")
    if isinstance(problem_id, bool) or not isinstance(problem_id, (str, int)):
        raise fail(f"'problem_id' must be a string or an integer, got {type(problem_id).__name__}")
    if not isinstance(codes, list) or not all(isinstance(c, str) for c in codes):
        raise fail("'workflow_codes' must be a list of strings")
    if not isinstance(rewards, list):
        raise fail("'rewards' must be a list of numbers")
    for i, r in enumerate(rewards):
        if isinstance(r, bool) or not isinstance(r, (int, float)):
            raise fail(f"rewards[{i}] is not a number: {r!r}")
        if not math.isfinite(r):
            raise fail(f"rewards[{i}] is not finite ({r})")
    n = len(codes)
    if len(rewards) != n:
        raise fail(f"list lengths differ: {n} workflow_codes but {len(rewards)} rewards")
    for key in ("costs", "sources", *TOKEN_FIELDS):
        value = record.get(key)
        if value is not None and (not isinstance(value, list) or len(value) != n):
            got = len(value) if isinstance(value, list) else type(value).__name__
            raise fail(f"list lengths differ: {n} workflow_codes but {got} {key}")
    for key in ("prompt_ids", "completion_ids"):
        for i, ids in enumerate(record.get(key) or []):
            if ids is not None and not _int_list(ids):
                raise fail(f"{key}[{i}] must be a list of token ids (non-negative integers)")
    for i, flag in enumerate(record.get("stopped") or []):
        if flag is not None and not isinstance(flag, bool):
            raise fail(f"stopped[{i}] must be true, false or null")
    known = (*REQUIRED_FIELDS, "sources", *TOKEN_FIELDS)
    return Trajectory(
        problem,
        problem_id,
        list(codes),
        [float(r) for r in rewards],
        sources=list(record.get("sources") or []),
        prompt_ids=list(record.get("prompt_ids") or []),
        completion_ids=list(record.get("completion_ids") or []),
        stopped=list(record.get("stopped") or []),
        extra={k: v for k, v in record.items() if k not in known},
    )


def read_trajectories(path: str | Path) -> list[Trajectory]:
    """All trajectories of a JSONL file; `TrajectoryError` names the file, line and reason."""
    path = Path(path)
    if not path.is_file():
        raise TrajectoryError(f"{path}: no such trajectories file")
    trajectories = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise TrajectoryError(
                    f"{where}: invalid JSON ({err.msg} at column {err.colno})"
                ) from None
            trajectories.append(parse_trajectory(record, where))
    if not trajectories:
        raise TrajectoryError(f"{path}: no trajectories (empty file)")
    return trajectories


def in_problem_order(trajectories: Iterable[Trajectory]) -> list[Trajectory]:
    """The groups sorted by problem id (stable: one problem's groups keep their order). A
    search writes each group when its tree finishes, so a file's order depends on timing;
    training batches in this order instead, so a run's data alone decides its updates."""
    return sorted(trajectories, key=lambda t: str(t.problem_id))
