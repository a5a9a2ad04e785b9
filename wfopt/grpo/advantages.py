"""Group-relative advantage estimators (pure functions, registered by name).

A *group* is one problem's workflows. Advantages are computed over complete groups before any
batching or shuffling, so every sample's baseline is its whole group, never whatever else
happened to land in its mini-batch.

Every estimator maps `rewards: (N,)`, `group_ids: (N,)` to per-sequence advantages `(N,)`.
Statistics are computed in float64 with a two-pass variance (subtract the group mean first,
then square), so near-equal rewards do not suffer catastrophic cancellation. Singleton groups
and groups whose rewards are all equal get exactly 0: they carry no ranking signal.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence

import torch
from torch import Tensor

AdvantageEstimator = Callable[..., Tensor]

ADVANTAGE_ESTIMATORS: dict[str, AdvantageEstimator] = {}


def register_advantage_estimator(
    name: str,
) -> Callable[[AdvantageEstimator], AdvantageEstimator]:
    def decorator(fn: AdvantageEstimator) -> AdvantageEstimator:
        ADVANTAGE_ESTIMATORS[name] = fn
        return fn

    return decorator


def get_advantage_estimator(name: str) -> AdvantageEstimator:
    try:
        return ADVANTAGE_ESTIMATORS[name]
    except KeyError:
        known = ", ".join(sorted(ADVANTAGE_ESTIMATORS))
        raise ValueError(f"unknown advantage estimator {name!r}; known: {known}") from None


def as_group_index(group_ids: Tensor | Sequence[Hashable]) -> Tensor:
    """Dense group index `(N,)` int64 in [0, G) from a tensor or any sequence of hashables."""
    if isinstance(group_ids, Tensor):
        return torch.unique(group_ids, return_inverse=True)[1].reshape(-1)
    index: dict[Hashable, int] = {}
    return torch.tensor([index.setdefault(g, len(index)) for g in group_ids], dtype=torch.long)


def _group_stats(r: Tensor, inv: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per-sample (group size, group mean, centered reward, group has a spread) in float64."""
    num_groups = int(inv.max().item()) + 1 if inv.numel() else 0
    counts = torch.zeros(num_groups, dtype=torch.float64).index_add_(0, inv, torch.ones_like(r))
    mean = torch.zeros(num_groups, dtype=torch.float64).index_add_(0, inv, r) / counts
    centered = r - mean[inv]
    lo = torch.full((num_groups,), torch.inf, dtype=torch.float64).scatter_reduce(
        0, inv, r, reduce="amin"
    )
    hi = torch.full((num_groups,), -torch.inf, dtype=torch.float64).scatter_reduce(
        0, inv, r, reduce="amax"
    )
    # exact equality test: a float mean of equal values can differ from them by one ulp
    spread = (hi > lo)[inv]
    return counts[inv], mean[inv], centered, spread


def _check_rewards(rewards: Tensor) -> Tensor:
    r = torch.as_tensor(rewards).detach().reshape(-1).to(torch.float64).cpu()
    if not torch.isfinite(r).all():
        raise ValueError("rewards must be finite (found NaN or inf)")
    return r


@register_advantage_estimator("grpo")
def grpo_advantages(
    rewards: Tensor,
    group_ids: Tensor | Sequence[Hashable],
    norm_by_std: bool = True,
    eps: float = 1e-4,
) -> Tensor:
    """GRPO: `A_i = (r_i - mean_g) / (std_g + eps)`, or `A_i = r_i - mean_g` (Dr. GRPO).

    `std_g` is the unbiased (n-1) sample std of group g, computed two-pass in float64.
    Shapes: rewards `(N,)`, group_ids `(N,)` -> `(N,)` float32. Singleton and all-equal
    groups -> exactly 0. Examples: rewards [1, 0] -> [0.707, -0.707]; [1, 1, 0] -> [0.577,
    0.577, -1.155] (eps shifts these by ~1e-4 relative).
    """
    r = _check_rewards(rewards)
    if r.numel() == 0:
        return torch.zeros(0)
    inv = as_group_index(group_ids)
    counts, _, centered, spread = _group_stats(r, inv)
    if norm_by_std:
        num_groups = int(inv.max().item()) + 1
        sq = torch.zeros(num_groups, dtype=torch.float64).index_add_(0, inv, centered * centered)
        std = (sq[inv] / (counts - 1).clamp(min=1)).sqrt()
        adv = centered / (std + eps)
    else:
        adv = centered
    adv = torch.where(spread & (counts > 1), adv, torch.zeros_like(adv))
    return adv.to(torch.float32)


@register_advantage_estimator("rloo")
def rloo_advantages(
    rewards: Tensor,
    group_ids: Tensor | Sequence[Hashable],
    norm_by_std: bool = False,
    eps: float = 1e-4,
) -> Tensor:
    """RLOO: leave-one-out baseline `A_i = r_i - mean_{j != i} r_j = n/(n-1) (r_i - mean_g)`.

    Shapes: `(N,)`, `(N,)` -> `(N,)` float32. `norm_by_std` and `eps` are accepted for a uniform
    signature and ignored. Singleton and all-equal groups -> exactly 0.
    """
    del norm_by_std, eps
    r = _check_rewards(rewards)
    if r.numel() == 0:
        return torch.zeros(0)
    inv = as_group_index(group_ids)
    counts, _, centered, spread = _group_stats(r, inv)
    adv = centered * counts / (counts - 1).clamp(min=1)
    adv = torch.where(spread & (counts > 1), adv, torch.zeros_like(adv))
    return adv.to(torch.float32)


def compute_grpo_advantages(
    rewards: Tensor,
    response_mask: Tensor,
    group_ids: Tensor | Sequence[Hashable],
    norm_by_std: bool = True,
    eps: float = 1e-4,
    estimator: str = "grpo",
) -> Tensor:
    """Per-token advantages `(B, T)`: the group advantage of each sequence on its response tokens.

    rewards `(B,)`, response_mask `(B, T)`, group_ids `(B,)` -> `A[b, t] = A_b * mask[b, t]`.
    The batch must hold complete groups (this is where the group baseline comes from).
    """
    adv = get_advantage_estimator(estimator)(rewards, group_ids, norm_by_std=norm_by_std, eps=eps)
    adv = adv.to(response_mask.device)
    return adv.unsqueeze(-1) * response_mask.to(adv.dtype)
