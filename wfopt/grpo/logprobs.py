"""Per-token log-probabilities and entropies of response tokens, without a `[B, T, V]` log-softmax.

Layout used everywhere in `wfopt.grpo`: per-token tensors are `(B, T)` and aligned with
`input_ids`: `log_probs[b, t] = log p(input_ids[b, t] | input_ids[b, :t])`, defined where
`response_mask[b, t] = 1` and 0 elsewhere. Logits at position t predict token t+1, so the token
at t is scored by the logits (or hidden state) at t-1: the first workflow token is scored by the
last prompt position, and the final position scores nothing. A response token at t = 0 has no
context and is rejected.

Two entry points:

- `token_log_probs(logits, ...)`: from model logits `(B, T, V)`. Gathers the `N` scored rows
  `(N, V)` first, then `log p = z_y - logsumexp(z)` chunk by chunk.
- `token_log_probs_from_hidden(hidden, weight, ...)`: from the last hidden states `(B, T, H)` and
  the LM head weight `(V, H)`. A fused autograd function projects only the `N` scored rows, in
  chunks, never stores logits, and recomputes each chunk in backward (memory O(chunk * V)
  instead of O(B * T * V)). This is what the trainer uses.
"""

from __future__ import annotations

import torch
from torch import Tensor


def response_positions(response_mask: Tensor) -> tuple[Tensor, Tensor]:
    """(batch index, position) `(N,)` each, of every scored response token, in row-major order."""
    if response_mask.dim() != 2:
        raise ValueError(f"response_mask must be (B, T), got {tuple(response_mask.shape)}")
    if bool(response_mask[:, 0].any()):
        raise ValueError(
            "response_mask[:, 0] must be 0: the first token has no context to score it"
        )
    b, t = response_mask.nonzero(as_tuple=True)
    return b, t


def _scatter(values: Tensor, b: Tensor, t: Tensor, shape: torch.Size) -> Tensor:
    """Place `(N,)` values at (b, t) of a zero `(B, T)` float32 tensor (differentiable)."""
    out = torch.zeros(shape, dtype=torch.float32, device=values.device)
    return out.index_put((b, t), values.float())


def _rows_log_probs(
    rows: Tensor, targets: Tensor, with_entropy: bool, entropy_grad: bool
) -> tuple[Tensor, Tensor | None]:
    """log p(target) and entropy of each row of logits `(C, V)`, in float32."""
    z = rows.float()
    lse = torch.logsumexp(z, dim=-1)  # (C,)
    log_probs = z.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - lse
    entropy = None
    if with_entropy:
        with torch.set_grad_enabled(entropy_grad and torch.is_grad_enabled()):
            log_p = z - lse.unsqueeze(-1)
            entropy = -(log_p.exp() * log_p).sum(-1)  # H = -sum_v p_v log p_v
    return log_probs, entropy


def token_log_probs(
    logits: Tensor,
    input_ids: Tensor,
    response_mask: Tensor,
    *,
    with_entropy: bool = True,
    entropy_grad: bool = False,
    chunk_size: int = 1024,
) -> tuple[Tensor, Tensor | None]:
    """Log-probs and entropies of response tokens from logits.

    logits `(B, T, V)`, input_ids `(B, T)`, response_mask `(B, T)` ->
    (log_probs `(B, T)`, entropy `(B, T)` or None), float32, 0 outside the mask.
    `log_probs[b, t] = logits[b, t-1, y] - logsumexp(logits[b, t-1])` with `y = input_ids[b, t]`;
    `entropy[b, t] = H(softmax(logits[b, t-1]))`. Only the N scored rows are gathered and they
    are processed `chunk_size` rows at a time; entropy carries a gradient only if `entropy_grad`.
    """
    b, t = response_positions(response_mask)
    targets = input_ids[b, t]
    rows = logits[b, t - 1]  # (N, V): the logits that predict each response token
    lp_parts, ent_parts = [], []
    for start in range(0, rows.shape[0], chunk_size):
        lp, ent = _rows_log_probs(
            rows[start : start + chunk_size],
            targets[start : start + chunk_size],
            with_entropy,
            entropy_grad,
        )
        lp_parts.append(lp)
        if ent is not None:
            ent_parts.append(ent)
    shape = input_ids.shape
    empty = logits.new_zeros(0, dtype=torch.float32)
    log_probs = _scatter(torch.cat(lp_parts) if lp_parts else empty, b, t, shape)
    entropy = None
    if with_entropy:
        entropy = _scatter(torch.cat(ent_parts) if ent_parts else empty, b, t, shape)
    return log_probs, entropy


class _LinearLogProbs(torch.autograd.Function):
    """`log softmax(h @ W.T + bias)[y]` and the entropy of each row, chunked over rows.

    forward: hidden `(N, H)`, weight `(V, H)`, bias `(V,)` or None, targets `(N,)` ->
    log_probs `(N,)`, entropy `(N,)` (float32). Logits of one chunk `(C, V)` exist at a time;
    only `logsumexp` and the entropy `(N,)` are kept for backward, which recomputes the chunk:
        dlogp/dz   = onehot(y) - p
        dH/dz      = -p * (log p + H)
        dz         = g_logp * dlogp/dz + g_H * dH/dz
        dh = dz @ W,  dW += dz.T @ h,  dbias += sum_rows dz
    Everything is computed in float32 whatever the input dtype.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx,
        hidden: Tensor,
        weight: Tensor,
        bias: Tensor | None,
        targets: Tensor,
        chunk_size: int,
    ) -> tuple[Tensor, Tensor]:
        ctx.set_materialize_grads(False)
        w = weight.float()
        n = hidden.shape[0]
        lse = hidden.new_empty(n, dtype=torch.float32)
        log_probs = hidden.new_empty(n, dtype=torch.float32)
        entropy = hidden.new_empty(n, dtype=torch.float32)
        for start in range(0, n, chunk_size):
            end = min(start + chunk_size, n)
            z = _project(hidden[start:end], w, bias)  # (C, V)
            chunk_lse = torch.logsumexp(z, dim=-1)
            lse[start:end] = chunk_lse
            log_probs[start:end] = z.gather(-1, targets[start:end, None]).squeeze(-1) - chunk_lse
            log_p = z.sub_(chunk_lse[:, None])  # in place: z -> log p
            # H = -sum_v p log p, in place (no third (C, V) buffer); a pairwise-summed
            # reduction, since a BLAS dot over ~50k terms loses ~1e-4 in fp32
            entropy[start:end] = -log_p.mul_(log_p.exp()).sum(-1)
        ctx.save_for_backward(hidden, weight, bias, targets, lse, entropy)
        ctx.chunk_size = chunk_size
        return log_probs, entropy

    @staticmethod
    def backward(ctx, grad_log_probs: Tensor | None, grad_entropy: Tensor | None):  # type: ignore[override]
        if grad_log_probs is None and grad_entropy is None:
            return None, None, None, None, None
        hidden, weight, bias, targets, lse, entropy = ctx.saved_tensors
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        w = weight.float()
        n = hidden.shape[0]
        grad_h = torch.empty(hidden.shape, dtype=torch.float32, device=hidden.device)
        grad_w = torch.zeros_like(w) if need_w else None
        grad_b = torch.zeros(w.shape[0], dtype=torch.float32, device=w.device) if need_b else None
        for start in range(0, n, ctx.chunk_size):
            end = min(start + ctx.chunk_size, n)
            h = hidden[start:end].float()
            log_p = _project(hidden[start:end], w, bias).sub_(lse[start:end, None])
            p = log_p.exp()
            if grad_entropy is not None:
                # dH/dz = -p (log p + H); reuse log_p's buffer for the term
                term = log_p.add_(entropy[start:end, None]).mul_(p)
                term.mul_(grad_entropy[start:end, None].float())
            else:
                term = None
            if grad_log_probs is not None:
                g = grad_log_probs[start:end, None].float()
                dz = p.mul_(-g)
                dz.scatter_add_(-1, targets[start:end, None], g)
            else:
                dz = p.zero_()
            if term is not None:
                dz.sub_(term)
            if need_h:
                grad_h[start:end] = dz @ w
            if grad_w is not None:
                grad_w.addmm_(dz.t(), h)
            if grad_b is not None:
                grad_b += dz.sum(0)
        return (
            grad_h.to(hidden.dtype) if need_h else None,
            grad_w.to(weight.dtype) if grad_w is not None else None,
            grad_b.to(bias.dtype) if grad_b is not None else None,
            None,
            None,
        )


def _project(hidden: Tensor, weight_fp32: Tensor, bias: Tensor | None) -> Tensor:
    z = hidden.float() @ weight_fp32.t()
    if bias is not None:
        z += bias.float()
    return z


def token_log_probs_from_hidden(
    hidden: Tensor,
    weight: Tensor,
    input_ids: Tensor,
    response_mask: Tensor,
    bias: Tensor | None = None,
    *,
    chunk_size: int = 512,
) -> tuple[Tensor, Tensor]:
    """Log-probs and entropies of response tokens from last hidden states and the LM head.

    hidden `(B, T, H)` (after the final norm), weight `(V, H)`, bias `(V,)` or None,
    input_ids `(B, T)`, response_mask `(B, T)` -> (log_probs `(B, T)`, entropy `(B, T)`),
    float32, 0 outside the mask; same values as `token_log_probs(hidden @ weight.T + bias, ...)`.
    Only the N scored positions are projected, `chunk_size` rows at a time, through
    `_LinearLogProbs` (recompute-in-backward): peak extra memory ~ 2 * chunk_size * V floats.
    Both outputs are differentiable; an unused entropy costs nothing in backward.
    """
    b, t = response_positions(response_mask)
    rows = hidden[b, t - 1]  # (N, H)
    targets = input_ids[b, t]
    lp, ent = _LinearLogProbs.apply(rows, weight, bias, targets, chunk_size)
    shape = input_ids.shape
    return _scatter(lp, b, t, shape), _scatter(ent, b, t, shape)
