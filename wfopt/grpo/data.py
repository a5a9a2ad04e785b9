"""Search trajectories -> tokenized GRPO samples with group advantages.

The file format and its reader live in `wfopt.trajectory` (one definition, shared with the
search that writes it). `TrajectoryDataset` turns each trajectory (= group) into one sample
per workflow:

- **policy samples** (a workflow with recorded `prompt_ids` / `completion_ids`) train on
  exactly those ids: the prompt they were sampled from (a search expansion's prompt shows its
  parent) and every token the policy emitted; the stop token is in the response only when
  the policy emitted one (`stopped`). Nothing is decoded and re-tokenized. These are
  on-policy: the ordinary clipped GRPO term.
- **off-policy workflows** (seed, structural edits, files without ids): tokenized under the
  plain training prompt as `body + [EOS]`, and treated per `off_policy`:
  - `"shaped"`: mixed-policy GRPO's regularized importance shaping, f(p) =
    p / (p + gamma) per token (formula in `losses.py`);
  - `"drop"`: left out of the loss and of the group baseline (pure on-policy GRPO);
  - `"positive"`: part of the group baseline, trained only where their advantage is > 0 (the
    rest leave after the advantages are computed, counted in `dropped_off_policy`): the
    policy imitates the tree's better workflows, and is never pushed down on a sequence it
    did not write. A worse tree workflow is often the policy's own habit (the seed is its
    `generate` workflow): pushing it down moved the greedy policy to code outside the group
    (README, "Learning");
  - `"as_on_policy"` (the schema default): trained as if the policy had sampled them
    (rho = 1), whatever the sign of their advantage.

Groups: samples are tokenized first; those too long (`truncation="drop"`) or dropped by the
off-policy rule leave, and the advantages are computed over what remains, so a group's
advantages sum to zero (grpo) exactly over the samples that are trained (except under
`"positive"`, whose dropped rows stay in the baseline). Groups with fewer
than two samples left are skipped. Groups whose remaining rewards are all equal carry no
signal: always counted (`zero_std_groups`), and left out when `drop_zero_std_groups`
(DAPO's dynamic-sampling filter, without the resampling).

Length policy (`truncation`), never cutting the prompt:

- `"drop"` (default): a sample longer than `max_length` tokens, or whose response exceeds
  `max_response_length`, is dropped and counted (`stats["dropped_too_long"]`).
- `"truncate"`: the response is cut to fit (it then ends without a stop token) and the mask
  covers what is kept (`stats["truncated"]`); a sample whose prompt leaves no room for a
  single response token is still dropped.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from wfopt.grpo.advantages import get_advantage_estimator
from wfopt.policy import build_policy_prompt, encode_prompt, encode_response
from wfopt.trajectory import (
    SOURCE_KINDS,
    Trajectory,
    TrajectoryError,
    parse_trajectory,
    read_trajectories,
    source_kind,
)

__all__ = [
    "OFF_POLICY_RULES",
    "Trajectory",
    "TrajectoryDataset",
    "TrajectoryError",
    "collate_samples",
    "parse_trajectory",
    "read_trajectories",
]

OFF_POLICY_RULES = ("shaped", "drop", "as_on_policy", "positive")


class TrajectoryDataset(torch.utils.data.Dataset):
    """One sample per (problem, workflow), tokenized, with its group's advantage.

    Each item is a dict: `problem`, `workflow_code`, `problem_id`, `group_id` (int, one per
    trajectory), `reward`, `advantage` (float), `group_reward_std` (0 for all-equal groups),
    `source` (a `SOURCE_KINDS` entry), `off_policy` (bool), and 1-D tensors `input_ids`,
    `attention_mask`, `response_mask` (`(T_i,)`, unpadded). `stats` counts groups and samples,
    what was skipped or dropped and why, and the trained samples of each source.
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
        off_policy: str = "as_on_policy",
        drop_zero_std_groups: bool = False,
    ) -> None:
        if truncation not in ("drop", "truncate"):
            raise ValueError(f"truncation must be 'drop' or 'truncate', got {truncation!r}")
        if off_policy not in OFF_POLICY_RULES:
            raise ValueError(f"off_policy must be one of {OFF_POLICY_RULES}, got {off_policy!r}")
        if isinstance(trajectories, (str, Path)):
            trajectories = read_trajectories(trajectories)
        trajs = [
            t if isinstance(t, Trajectory) else parse_trajectory(t, f"trajectory {i}")
            for i, t in enumerate(trajectories)
        ]
        self.advantage_fn = get_advantage_estimator(estimator)
        if tokenizer.eos_token_id is None:
            raise ValueError("the tokenizer has no EOS token; cannot end workflows")
        self.tokenizer, self.chat_template = tokenizer, chat_template
        self.max_length = max_length
        self.response_cap = max_response_length if max_response_length else max_length
        self.truncation, self.off_policy = truncation, off_policy
        self.norm_by_std, self.eps = norm_by_std, eps
        self.samples: list[dict[str, Any]] = []
        self.stats = {
            "groups": len(trajs),
            "groups_used": 0,
            "singleton_groups_skipped": 0,
            "zero_std_groups": 0,
            "zero_std_groups_dropped": 0,
            "samples": 0,
            "dropped_too_long": 0,
            "dropped_off_policy": 0,
            "truncated": 0,
            **{f"samples_{kind}": 0 for kind in SOURCE_KINDS},
        }
        for group_id, traj in enumerate(trajs):
            group = [s for i in range(len(traj.workflow_codes)) if (s := self._sample(traj, i))]
            if len(group) < 2:
                self.stats["singleton_groups_skipped"] += 1
                continue
            rewards = torch.tensor([s["reward"] for s in group], dtype=torch.float64)
            zero_std = bool(rewards.max() == rewards.min())
            if zero_std:
                self.stats["zero_std_groups"] += 1
                if drop_zero_std_groups:
                    self.stats["zero_std_groups_dropped"] += 1
                    continue
            # the baseline is exactly the samples that are trained
            adv = self.advantage_fn(rewards, [0] * len(group), norm_by_std=norm_by_std, eps=eps)
            group_std = 0.0 if zero_std else float(rewards.std())
            self.stats["groups_used"] += 1
            for sample, a in zip(group, adv.tolist(), strict=True):
                if self.off_policy == "positive" and not sample["sampled"] and a <= 0:
                    self.stats["dropped_off_policy"] += 1
                    continue
                sample.update(group_id=group_id, advantage=float(a), group_reward_std=group_std)
                self.stats[f"samples_{sample['source']}"] += 1
                self.samples.append(sample)
        self.stats["samples"] = len(self.samples)

    def _sample(self, traj: Trajectory, i: int) -> dict[str, Any] | None:
        """Workflow `i` of `traj`, tokenized; None (counted) when it cannot be trained."""
        prompt_ids, completion_ids = traj.prompt_ids[i], traj.completion_ids[i]
        on_policy = prompt_ids is not None and completion_ids is not None
        if not on_policy and self.off_policy == "drop":
            self.stats["dropped_off_policy"] += 1
            return None
        if on_policy:  # exactly what was sampled
            response = list(completion_ids)  # type: ignore[arg-type]
            prompt = list(prompt_ids)  # type: ignore[arg-type]
        else:
            tokenizer = self.tokenizer if self.chat_template else None
            kind = traj.extra.get("kind", "math")  # the operators the policy was shown
            text = build_policy_prompt(traj.problem, tokenizer, kind=kind)
            prompt = encode_prompt(text, self.tokenizer)
            response = encode_response(traj.workflow_codes[i], self.tokenizer)
        room = min(self.max_length - len(prompt), self.response_cap)
        if len(response) > room:
            if self.truncation == "drop" or room < 1:
                self.stats["dropped_too_long"] += 1
                return None
            response = response[:room]
            self.stats["truncated"] += 1
        if not response:
            self.stats["dropped_too_long"] += 1  # nothing to train on
            return None
        ids = prompt + response
        return {
            "problem": traj.problem,
            "problem_id": traj.problem_id,
            "workflow_code": traj.workflow_codes[i],
            "reward": float(traj.rewards[i]),
            "source": source_kind(traj.sources[i]),
            "off_policy": not on_policy and self.off_policy == "shaped",
            "sampled": on_policy,
            "input_ids": torch.tensor(ids, dtype=torch.long),
            "attention_mask": torch.ones(len(ids), dtype=torch.long),
            "response_mask": torch.tensor(
                [0] * len(prompt) + [1] * len(response), dtype=torch.long
            ),
        }

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.samples[index]


def collate_samples(
    samples: Sequence[dict[str, Any]], pad_token_id: int, padding_side: str = "right"
) -> dict[str, Tensor]:
    """Pad samples into a batch: `input_ids`, `attention_mask`, `response_mask` `(B, T)`;
    `advantages`, `rewards`, `group_reward_std` `(B,)` float32; `group_ids`, `source_ids`
    (index into `SOURCE_KINDS`) `(B,)` int64; `off_policy` `(B,)` bool."""
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
        "source_ids": torch.tensor(
            [SOURCE_KINDS.index(s.get("source", "seed")) for s in samples], dtype=torch.long
        ),
        "off_policy": torch.tensor([bool(s.get("off_policy", False)) for s in samples]),
    }
