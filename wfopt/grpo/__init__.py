"""GRPO on search trajectories: group advantages, the clipped policy loss, data, trainer.

Public API:

- `compute_grpo_advantages`, `grpo_advantages`, `rloo_advantages`, `ADVANTAGE_ESTIMATORS`
  (`advantages.py`): group-relative advantages over complete groups.
- `compute_grpo_loss`, `policy_loss`, `LOSS_AGGREGATIONS` (`losses.py`): the clipped
  surrogate + k3 KL + entropy bonus with split-invariant aggregation.
- `token_log_probs`, `token_log_probs_from_hidden` (`logprobs.py`): response-token log-probs
  and entropies without a `[B, T, V]` log-softmax.
- `TrajectoryDataset`, `read_trajectories`, `collate_samples`, `TrajectoryError` (`data.py`).
- `GRPOTrainer` (`trainer.py`), and what its update step uses: the policy's log-probs
  (`model.py`), AdamW and the LR schedule (`optimizer.py`), batch sizes, epoch order and
  micro-batches (`batching.py`), per-step metrics (`metrics.py`); checkpoints
  (`checkpoint.py`).
- `train_policy`, `TrainResult`, `TrainingError` (`train.py`): a whole training run on a list of
  trajectories, in-process (`wfopt loop` calls it once per episode); multi-process through
  `accelerate` (`distributed.py`).
- `run` (`cli_entry.py`): the Hydra entry point of `wfopt train`.
"""

from __future__ import annotations

from wfopt.grpo.advantages import (
    ADVANTAGE_ESTIMATORS,
    compute_grpo_advantages,
    get_advantage_estimator,
    grpo_advantages,
    register_advantage_estimator,
    rloo_advantages,
)
from wfopt.grpo.cli_entry import run
from wfopt.grpo.data import TrajectoryDataset, TrajectoryError, collate_samples, read_trajectories
from wfopt.grpo.logprobs import token_log_probs, token_log_probs_from_hidden
from wfopt.grpo.losses import (
    LOSS_AGGREGATIONS,
    compute_grpo_loss,
    get_loss_aggregation,
    policy_loss,
    register_loss_aggregation,
)
from wfopt.grpo.train import TrainingError, TrainResult, train_policy
from wfopt.grpo.trainer import GRPOTrainer

__all__ = [
    "ADVANTAGE_ESTIMATORS",
    "LOSS_AGGREGATIONS",
    "GRPOTrainer",
    "TrainResult",
    "TrainingError",
    "TrajectoryDataset",
    "TrajectoryError",
    "collate_samples",
    "compute_grpo_advantages",
    "compute_grpo_loss",
    "get_advantage_estimator",
    "get_loss_aggregation",
    "grpo_advantages",
    "policy_loss",
    "read_trajectories",
    "register_advantage_estimator",
    "register_loss_aggregation",
    "rloo_advantages",
    "run",
    "token_log_probs",
    "token_log_probs_from_hidden",
    "train_policy",
]
