"""`train/*` metrics of one optimizer step beyond the loss terms: the share of groups whose
rewards are all equal (`frac_zero_std_groups`), and what each source of workflows (policy
samples, search, edits, seed) contributes (`SourceSums`)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from wfopt.trajectory import SOURCE_KINDS


def frac_zero_std_groups(group_ids: Tensor, group_reward_std: Tensor) -> float:
    """Share of the *groups* in a batch (not of its samples) whose rewards are all equal."""
    if group_ids.numel() == 0:
        return 0.0
    unique, first = torch.unique(group_ids, return_inverse=True)
    zero = torch.zeros(len(unique), dtype=torch.bool, device=group_ids.device)
    zero[first] = group_reward_std == 0
    return float(zero.float().mean())


class SourceSums:
    """Per-source sums over one optimizer step's micro-batches (`SOURCE_KINDS`), so the
    metrics say what each kind of workflow contributes: its samples and response tokens, the
    mean advantage and token log-prob, and its additive share of `train/pg_loss` (token-mean
    normalized like the loss, so the shares of all sources add up to it under token_mean)."""

    def __init__(self, device: torch.device) -> None:
        k = len(SOURCE_KINDS)
        # rows: samples, tokens, pg sum, log-prob sum, advantage sum
        self.sums = torch.zeros(5, k, dtype=torch.float64, device=device)

    def add(self, micro: dict[str, Tensor], pg_seq_sum: Tensor, log_probs: Tensor) -> None:
        src, mask = micro["source_ids"], micro["response_mask"].to(torch.float64)
        k = len(SOURCE_KINDS)
        rows = (
            torch.ones_like(src, dtype=torch.float64),
            mask.sum(-1),
            pg_seq_sum.to(torch.float64),
            (log_probs.to(torch.float64) * mask).sum(-1),
            micro["advantages"].to(torch.float64),
        )
        for i, values in enumerate(rows):
            self.sums[i] += torch.zeros(k, dtype=torch.float64, device=src.device).index_add_(
                0, src, values
            )

    def reduce(self, accelerator: Any) -> None:
        self.sums = accelerator.reduce(self.sums, "sum")

    def metrics(self, batch: dict[str, Tensor], num_tokens: float) -> dict[str, float]:
        out: dict[str, float] = {}
        for j, kind in enumerate(SOURCE_KINDS):
            samples, tokens, pg, logp, adv = self.sums[:, j].tolist()
            if not samples:
                continue
            prefix = f"train/source/{kind}"
            out[f"{prefix}/samples"] = samples
            out[f"{prefix}/response_tokens"] = tokens
            out[f"{prefix}/pg_loss_share"] = pg / max(num_tokens, 1.0)
            out[f"{prefix}/logp_mean"] = logp / max(tokens, 1.0)
            out[f"{prefix}/advantage_mean"] = adv / samples
        return out
