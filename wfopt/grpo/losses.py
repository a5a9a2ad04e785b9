"""GRPO policy loss (pure tensor math): clipped surrogate, k3 KL, entropy bonus, aggregation.

Per response token (b, t), with `logp` the current policy's log-prob, `logp_old` the behaviour
policy's (the policy before this batch's updates; `logp.detach()` when absent, i.e. rho = 1),
and `logp_ref` a frozen reference's:

    rho   = exp(logp - logp_old)
    pg    = max(-A * rho, -A * clip(rho, 1 - eps_low, 1 + eps_high))        (PPO/GRPO clip)
    kl    = exp(logp_ref - logp) - (logp_ref - logp) - 1                      (k3, >= 0)
    loss  = agg(pg) + beta * agg(kl) - entropy_coef * agg(H)

The clipped branch has zero gradient, so a token with A > 0 and rho > 1 + eps_high, or A < 0 and
rho < 1 - eps_low, contributes exactly nothing (`clip_ratio` is the fraction of such tokens).

Off-policy rows (`off_policy[b]`: workflows the policy did not sample, e.g. the search tree's
seed and edits, whose behaviour probability is unknown) get the regularized importance-shaped
objective of mixed-policy GRPO (LUFFY, Yan et al. 2025), with p = exp(logp) and gamma > 0:

    pg_off = -A * p / (p + gamma)             gradient: -A * gamma * p / (p + gamma)^2 * dlogp

unclipped (there is no behaviour ratio to clip). Its weight on a token peaks at p = gamma and
vanishes as p -> 1, so guidance concentrates on the tokens the policy finds unlikely instead
of being trained as if the policy had sampled them.

Aggregations `agg(x)` over masked `(B, T)` values (registered in `LOSS_AGGREGATIONS`):

    token_mean               sum_bt m x / N_tok                                   (DAPO)
    seq_mean_token_mean      (1 / N_seq) sum_b [ sum_t m x / sum_t m ]            (GRPO paper)
    seq_mean_token_sum_norm  sum_bt m x / (N_seq * L)                             (Dr. GRPO)

`N_tok` (response tokens) and `N_seq` (sequences) default to this tensor's counts. Pass the
counts of the *whole* optimizer batch when it is split into micro-batches: every returned
scalar then is this micro-batch's additive share, so summing the micro-batch losses (and
accumulating their gradients) gives exactly the full-batch loss and gradient, for every mode.
`L` is a constant (the maximum response length), never the padded width, for the same reason.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from wfopt.grpo.logprobs import token_log_probs

Aggregation = Callable[..., Tensor]

LOSS_AGGREGATIONS: dict[str, Aggregation] = {}


def register_loss_aggregation(name: str) -> Callable[[Aggregation], Aggregation]:
    def decorator(fn: Aggregation) -> Aggregation:
        LOSS_AGGREGATIONS[name] = fn
        return fn

    return decorator


def get_loss_aggregation(name: str) -> Aggregation:
    try:
        return LOSS_AGGREGATIONS[name]
    except KeyError:
        known = ", ".join(sorted(LOSS_AGGREGATIONS))
        raise ValueError(f"unknown loss_agg {name!r}; known: {known}") from None


@register_loss_aggregation("token_mean")
def token_mean(
    values: Tensor,
    mask: Tensor,
    *,
    num_tokens: float | Tensor | None = None,
    num_seqs: float | Tensor | None = None,
    max_response_length: int | None = None,
) -> Tensor:
    """`sum_bt mask * values / num_tokens`; values, mask `(B, T)` -> scalar."""
    del num_seqs, max_response_length
    denom = mask.sum() if num_tokens is None else num_tokens
    return (values * mask).sum() / torch.clamp(torch.as_tensor(denom, dtype=values.dtype), min=1)


@register_loss_aggregation("seq_mean_token_mean")
def seq_mean_token_mean(
    values: Tensor,
    mask: Tensor,
    *,
    num_tokens: float | Tensor | None = None,
    num_seqs: float | Tensor | None = None,
    max_response_length: int | None = None,
) -> Tensor:
    """`(1/num_seqs) sum_b (sum_t mask * values / sum_t mask)`; `(B, T)` -> scalar."""
    del num_tokens, max_response_length
    per_seq = (values * mask).sum(-1) / mask.sum(-1).clamp(min=1)
    denom = values.shape[0] if num_seqs is None else num_seqs
    return per_seq.sum() / torch.clamp(torch.as_tensor(denom, dtype=values.dtype), min=1)


@register_loss_aggregation("seq_mean_token_sum_norm")
def seq_mean_token_sum_norm(
    values: Tensor,
    mask: Tensor,
    *,
    num_tokens: float | Tensor | None = None,
    num_seqs: float | Tensor | None = None,
    max_response_length: int | None = None,
) -> Tensor:
    """Dr. GRPO: `sum_bt mask * values / (num_seqs * max_response_length)`; `(B, T)` -> scalar."""
    del num_tokens
    if max_response_length is None:
        raise ValueError("loss_agg=seq_mean_token_sum_norm needs max_response_length (a constant)")
    seqs = values.shape[0] if num_seqs is None else num_seqs
    denom = torch.as_tensor(seqs, dtype=values.dtype) * max_response_length
    return (values * mask).sum() / torch.clamp(denom, min=1)


def policy_loss(
    log_probs: Tensor,
    response_mask: Tensor,
    advantages: Tensor,
    old_log_probs: Tensor | None = None,
    ref_log_probs: Tensor | None = None,
    entropy: Tensor | None = None,
    *,
    clip_eps_low: float = 0.2,
    clip_eps_high: float = 0.2,
    beta: float = 0.0,
    entropy_coef: float = 0.0,
    loss_agg: str = "token_mean",
    num_tokens: float | Tensor | None = None,
    num_seqs: float | Tensor | None = None,
    max_response_length: int | None = None,
    off_policy: Tensor | None = None,
    off_policy_gamma: float = 0.1,
    per_row: bool = False,
) -> dict[str, Tensor]:
    """The GRPO objective from per-token log-probs (formulas in the module docstring).

    Shapes: log_probs, response_mask, old_log_probs, ref_log_probs, entropy `(B, T)`;
    advantages `(B, T)` or `(B,)` (broadcast over tokens); off_policy `(B,)` bool (rows that
    get the shaped off-policy objective). Returns scalars: `loss` (with grad), and detached
    `pg_loss` (agg of pg), `entropy`, `kl`, `clip_ratio` (token means over the response,
    normalized by `num_tokens` like `token_mean`); with `per_row`, also `pg_seq_sum` `(B,)`,
    each row's sum of pg over its response tokens (for per-source metrics).
    """
    agg = get_loss_aggregation(loss_agg)
    norms = {
        "num_tokens": num_tokens,
        "num_seqs": num_seqs,
        "max_response_length": max_response_length,
    }
    mask = response_mask.to(log_probs.dtype)
    adv = advantages.to(log_probs.dtype)
    if adv.dim() == 1:
        adv = adv.unsqueeze(-1)
    old = log_probs.detach() if old_log_probs is None else old_log_probs.to(log_probs.dtype)
    # mask before exp: padding positions may hold anything, never let them overflow
    ratio = torch.exp((log_probs - old) * mask)
    clipped_ratio = ratio.clamp(1.0 - clip_eps_low, 1.0 + clip_eps_high)
    pg = torch.maximum(-adv * ratio, -adv * clipped_ratio)
    if off_policy is not None and bool(off_policy.any()):
        pg = torch.where(
            off_policy.bool().unsqueeze(-1),
            -adv * shaped_probability(log_probs * mask, off_policy_gamma),
            pg,
        )
    pg_loss = agg(pg, mask, **norms)
    loss = pg_loss

    kl = torch.zeros((), dtype=log_probs.dtype, device=log_probs.device)
    if ref_log_probs is not None:
        delta = (ref_log_probs.to(log_probs.dtype) - log_probs) * mask
        per_token_kl = torch.exp(delta) - delta - 1.0
        if beta != 0.0:
            loss = loss + beta * agg(per_token_kl, mask, **norms)
        kl = token_mean(per_token_kl.detach(), mask, num_tokens=num_tokens)
    elif beta != 0.0:
        raise ValueError("beta > 0 needs ref_log_probs")

    ent = torch.zeros((), dtype=log_probs.dtype, device=log_probs.device)
    if entropy is not None:
        if entropy_coef != 0.0:
            loss = loss - entropy_coef * agg(entropy, mask, **norms)
        ent = token_mean(entropy.detach(), mask, num_tokens=num_tokens)
    elif entropy_coef != 0.0:
        raise ValueError("entropy_coef != 0 needs the entropy")

    with torch.no_grad():
        clipped = ((adv > 0) & (ratio > 1.0 + clip_eps_high)) | (
            (adv < 0) & (ratio < 1.0 - clip_eps_low)
        )
        if off_policy is not None:
            clipped = clipped & ~off_policy.bool().unsqueeze(-1)
        clip_ratio = token_mean(clipped.to(mask.dtype), mask, num_tokens=num_tokens)
    out = {
        "loss": loss,
        "pg_loss": pg_loss.detach(),
        "entropy": ent,
        "kl": kl,
        "clip_ratio": clip_ratio,
    }
    if per_row:
        out["pg_seq_sum"] = (pg * mask).sum(-1).detach()
    return out


def shaped_probability(log_probs: Tensor, gamma: float) -> Tensor:
    """f(p) = p / (p + gamma) with p = exp(log_probs), elementwise (mixed-policy shaping)."""
    if gamma <= 0:
        raise ValueError(f"off_policy_gamma must be > 0, got {gamma}")
    p = torch.exp(log_probs)
    return p / (p + gamma)


def compute_grpo_loss(
    logits: Tensor,
    input_ids: Tensor,
    response_mask: Tensor,
    advantages: Tensor,
    old_log_probs: Tensor | None = None,
    ref_log_probs: Tensor | None = None,
    *,
    clip_eps_low: float = 0.2,
    clip_eps_high: float = 0.2,
    beta: float = 0.0,
    entropy_coef: float = 0.0,
    loss_agg: str = "token_mean",
    num_tokens: float | Tensor | None = None,
    num_seqs: float | Tensor | None = None,
    max_response_length: int | None = None,
    chunk_size: int = 1024,
) -> dict[str, Tensor]:
    """GRPO loss from model logits.

    logits `(B, T, V)` (position t predicts token t+1), input_ids `(B, T)`, response_mask
    `(B, T)` (1 on workflow tokens incl. EOS), advantages `(B, T)` or `(B,)`, old/ref log-probs
    `(B, T)` aligned with input_ids (see `wfopt.grpo.logprobs`). Log-probs come from logsumexp +
    gather on the response rows only. Returns the dict of `policy_loss`.
    """
    log_probs, entropy = token_log_probs(
        logits,
        input_ids,
        response_mask,
        with_entropy=True,
        entropy_grad=entropy_coef != 0.0,
        chunk_size=chunk_size,
    )
    return policy_loss(
        log_probs,
        response_mask,
        advantages,
        old_log_probs,
        ref_log_probs,
        entropy,
        clip_eps_low=clip_eps_low,
        clip_eps_high=clip_eps_high,
        beta=beta,
        entropy_coef=entropy_coef,
        loss_agg=loss_agg,
        num_tokens=num_tokens,
        num_seqs=num_seqs,
        max_response_length=max_response_length,
    )
