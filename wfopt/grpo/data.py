"""Search trajectories -> tokenized GRPO samples with precomputed group advantages.

A trajectories file (what `wfopt search` writes) is JSONL, one problem per line:

    {"problem": str, "problem_id": str | int, "workflow_codes": [str, ...],
     "rewards": [float, ...], ...optional: "costs", "dataset", "split"}

`read_trajectories` validates every line and fails on the first bad one with
`<file>:<line>: <reason>` (invalid JSON, missing/mistyped field, list lengths that differ,
a non-finite reward). Blank lines are ignored.

`TrajectoryDataset` expands each trajectory into one sample per workflow. Advantages are
computed per trajectory (= group) over *all* its workflows, before any filtering, batching or
shuffling. Groups with a single workflow carry no signal and are skipped (counted in `stats`).

Tokenization: `prompt ids + code ids + [EOS]` with the prompt from the shared
`wfopt.policy.build_policy_prompt`; `response_mask` is 1 exactly on the code ids and the EOS.
Length policy (`truncation`), never cutting the prompt:

- `"drop"` (default): a sample longer than `max_length` tokens, or whose code + EOS exceeds
  `max_response_length`, is dropped and counted (`stats["dropped_too_long"]`).
- `"truncate"`: the code is cut to fit (no EOS is appended then, since the workflow does not
  end there) and the mask covers what is kept (`stats["truncated"]`); a sample whose prompt
  leaves no room for a single code token is still dropped.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from wfopt.grpo.advantages import get_advantage_estimator
from wfopt.policy import build_policy_prompt, encode_prompt, encode_response

REQUIRED_FIELDS = ("problem", "problem_id", "workflow_codes", "rewards")


class TrajectoryError(ValueError):
    """A trajectories file (or record) that cannot be trained on; the message names where."""


@dataclass
class Trajectory:
    problem: str
    problem_id: str | int
    workflow_codes: list[str]
    rewards: list[float]
    extra: dict[str, Any] = field(default_factory=dict)


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
    if len(codes) != len(rewards):
        raise fail(f"list lengths differ: {len(codes)} workflow_codes but {len(rewards)} rewards")
    costs = record.get("costs")
    if isinstance(costs, list) and len(costs) != len(codes):
        raise fail(f"list lengths differ: {len(codes)} workflow_codes but {len(costs)} costs")
    extra = {k: v for k, v in record.items() if k not in REQUIRED_FIELDS}
    return Trajectory(problem, problem_id, list(codes), [float(r) for r in rewards], extra)


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


class TrajectoryDataset(torch.utils.data.Dataset):
    """One sample per (problem, workflow), tokenized, with its group's advantage.

    Each item is a dict: `problem`, `workflow_code`, `problem_id`, `group_id` (int, one per
    trajectory), `reward`, `advantage` (float), `group_reward_std` (0 for all-equal groups),
    and 1-D tensors `input_ids`, `attention_mask`, `response_mask` (`(T_i,)`, unpadded).
    `stats` counts groups, samples, skipped singletons, dropped/truncated samples.
    """

    def __init__(
        self,
        trajectories: str | Path | Iterable[Trajectory | dict[str, Any]],
        tokenizer: Any,
        max_length: int,
        *,
        max_response_length: int | None = None,
        truncation: str = "drop",
        norm_by_std: bool = True,
        eps: float = 1e-4,
        estimator: str = "grpo",
        chat_template: bool = True,
    ) -> None:
        if truncation not in ("drop", "truncate"):
            raise ValueError(f"truncation must be 'drop' or 'truncate', got {truncation!r}")
        if isinstance(trajectories, (str, Path)):
            trajectories = read_trajectories(trajectories)
        trajs = [
            t if isinstance(t, Trajectory) else parse_trajectory(t, f"trajectory {i}")
            for i, t in enumerate(trajectories)
        ]
        advantage_fn = get_advantage_estimator(estimator)
        if tokenizer.eos_token_id is None:
            raise ValueError("the tokenizer has no EOS token; cannot end workflows")
        self.samples: list[dict[str, Any]] = []
        self.stats = {
            "groups": len(trajs),
            "groups_used": 0,
            "singleton_groups_skipped": 0,
            "zero_std_groups": 0,
            "samples": 0,
            "dropped_too_long": 0,
            "truncated": 0,
        }
        response_cap = max_response_length if max_response_length else max_length
        for group_id, traj in enumerate(trajs):
            if len(traj.workflow_codes) < 2:
                self.stats["singleton_groups_skipped"] += 1
                continue
            self.stats["groups_used"] += 1
            rewards = torch.tensor(traj.rewards, dtype=torch.float64)
            # the whole group, before any sample is dropped: its baseline is every workflow
            adv = advantage_fn(rewards, [0] * len(rewards), norm_by_std=norm_by_std, eps=eps)
            group_std = float(rewards.std()) if len(rewards) > 1 else 0.0
            if max(traj.rewards) == min(traj.rewards):
                self.stats["zero_std_groups"] += 1
                group_std = 0.0
            prompt = build_policy_prompt(traj.problem, tokenizer if chat_template else None)
            prompt_ids = encode_prompt(prompt, tokenizer)
            room = min(max_length - len(prompt_ids), response_cap)
            for code, reward, a in zip(
                traj.workflow_codes, traj.rewards, adv.tolist(), strict=True
            ):
                response = encode_response(code, tokenizer)
                if len(response) > room:
                    if truncation == "drop" or room < 1:
                        self.stats["dropped_too_long"] += 1
                        continue
                    response = response[:room]
                    self.stats["truncated"] += 1
                ids = prompt_ids + response
                self.samples.append(
                    {
                        "problem": traj.problem,
                        "problem_id": traj.problem_id,
                        "workflow_code": code,
                        "group_id": group_id,
                        "reward": float(reward),
                        "advantage": float(a),
                        "group_reward_std": group_std,
                        "input_ids": torch.tensor(ids, dtype=torch.long),
                        "attention_mask": torch.ones(len(ids), dtype=torch.long),
                        "response_mask": torch.tensor(
                            [0] * len(prompt_ids) + [1] * len(response), dtype=torch.long
                        ),
                    }
                )
        self.stats["samples"] = len(self.samples)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.samples[index]


def collate_samples(
    samples: Sequence[dict[str, Any]], pad_token_id: int, padding_side: str = "right"
) -> dict[str, Tensor]:
    """Pad samples into a batch: `input_ids`, `attention_mask`, `response_mask` `(B, T)`;
    `advantages`, `rewards`, `group_reward_std` `(B,)` float32; `group_ids` `(B,)` int64."""
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    width = max(int(s["input_ids"].numel()) for s in samples)

    def pad(key: str, value: int) -> Tensor:
        rows = []
        for s in samples:
            x = s[key]
            fill = x.new_full((width - x.numel(),), value)
            rows.append(torch.cat([x, fill] if padding_side == "right" else [fill, x]))
        return torch.stack(rows)

    return {
        "input_ids": pad("input_ids", pad_token_id),
        "attention_mask": pad("attention_mask", 0),
        "response_mask": pad("response_mask", 0),
        "advantages": torch.tensor([s["advantage"] for s in samples], dtype=torch.float32),
        "rewards": torch.tensor([s["reward"] for s in samples], dtype=torch.float32),
        "group_reward_std": torch.tensor(
            [s["group_reward_std"] for s in samples], dtype=torch.float32
        ),
        "group_ids": torch.tensor([s["group_id"] for s in samples], dtype=torch.long),
    }
