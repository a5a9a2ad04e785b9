"""The trainer's optimizer (AdamW, fused where torch supports it) and its LR schedule (linear
warmup, then constant, linear or cosine decay: `grpo.schedule`)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn


# Not `transformers.get_scheduler` ("constant_with_warmup", "linear", "cosine"): within the
# decay its factors are these, but its warmup is `step / warmup`, one step behind this one's
# `(step + 1) / warmup`: the first optimizer step of a run with warmup would take lr 0 (AdamW's
# moments move, the weights do not) and the full lr would come a step late
# (test_lr_schedule_worked_values pins these values). Its cosine also rises again past the
# horizon, where this one stays at 0.
def lr_lambda(warmup_steps: int, total_steps: int, schedule: str) -> Callable[[int], float]:
    """LR multiplier per step: linear warmup to 1, then constant, linear or cosine to 0."""
    if schedule not in ("constant", "linear", "cosine"):
        raise ValueError(f"unknown schedule {schedule!r}; use constant, linear or cosine")

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        if schedule == "linear":
            return 1.0 - progress
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def make_optimizer(params: list[nn.Parameter], lr: float, weight_decay: float = 0.0):
    """AdamW, fused (one kernel over all parameters, no per-step temporaries; ~5x faster on
    CPU than the foreach default here) where this torch supports it for these parameters."""
    try:
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
