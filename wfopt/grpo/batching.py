"""How samples become optimizer steps: the global batch size, the steps a run plans, the seeded
sample order of each epoch, and the micro-batches of one process (its shard of a global batch,
each micro-batch trimmed to its own width).

Distributed, every process walks the same global batches and trains on rows `rank, rank + N,
...` of each; every process runs the same number of micro-batches (`rank_micro_batches`), so
the collectives of DDP/FSDP/DeepSpeed line up.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

# the per-token `(B, T)` tensors of a batch (the columns `trim_padding` cuts)
SEQ_KEYS = ("input_ids", "attention_mask", "response_mask", "old_log_probs", "ref_log_probs")


def global_batch_size(cfg: Any, world_size: int = 1) -> int:
    """Samples per optimizer step: `micro_batch_size` (per process) x `grad_accum_steps` x
    processes (the convention of HF Trainer/TRL)."""
    return cfg.micro_batch_size * cfg.grad_accum_steps * world_size


def planned_steps(num_samples: int, cfg: Any, world_size: int = 1) -> int:
    """Optimizer steps of a full run: epochs x batches x num_iterations, capped by max_steps."""
    batch_size = global_batch_size(cfg, world_size)
    steps = cfg.epochs * math.ceil(num_samples / batch_size) * cfg.num_iterations
    return min(steps, cfg.max_steps) if cfg.max_steps else steps


def epoch_order(num_samples: int, seed: int, epoch: int) -> list[int]:
    """The sample order of an epoch: a permutation fixed by (seed, epoch), the same on every
    process."""
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(num_samples, generator=generator).tolist()


def rank_micro_batches(
    num_rows: int, micro_batch_size: int, rank: int = 0, world_size: int = 1
) -> list[list[int]]:
    """The rows of a batch that each of this process's micro-batches holds.

    The process's shard is rows `rank, rank + world_size, ...` (one process: all rows, in
    order). Every process gets the same number of micro-batches,
    `ceil(ceil(num_rows / world_size) / micro_batch_size)`, so collective operations line up;
    an empty list is a micro-batch this process has no rows for (run as a zero-weight dummy).
    """
    rows = list(range(rank, num_rows, world_size))
    per_rank = -(-num_rows // world_size)
    count = max(1, -(-per_rank // micro_batch_size))
    return [rows[i * micro_batch_size : (i + 1) * micro_batch_size] for i in range(count)]


def trim_padding(batch: dict[str, Tensor]) -> tuple[dict[str, Tensor], slice]:
    """Drop columns that are padding in every row (either side); returns the kept slice."""
    used = batch["attention_mask"].bool().any(0).nonzero()
    cols = slice(int(used.min()), int(used.max()) + 1) if used.numel() else slice(0, 0)
    return {k: (v[:, cols] if k in SEQ_KEYS else v) for k, v in batch.items()}, cols


def select_rows(batch: dict[str, Tensor], rows: list[int]) -> dict[str, Tensor]:
    """The micro-batch of `rows`; no rows: a dummy (row 0), to be given zero weight."""
    index = torch.tensor(rows or [0], dtype=torch.long, device=batch["input_ids"].device)
    return {k: v.index_select(0, index) for k, v in batch.items()}
