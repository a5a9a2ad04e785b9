"""GRPO math on plain tensors: advantages, log-probs, the clipped loss, aggregation, splitting."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from wfopt.grpo import (
    ADVANTAGE_ESTIMATORS,
    LOSS_AGGREGATIONS,
    compute_grpo_advantages,
    compute_grpo_loss,
    grpo_advantages,
    policy_loss,
    token_log_probs,
    token_log_probs_from_hidden,
)
from wfopt.grpo.optimizer import lr_lambda

AGGS = ["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"]
L_CONST = 16  # Dr. GRPO's constant length in these tests


# ---------------------------------------------------------------- advantages


def test_worked_examples():
    a = grpo_advantages(torch.tensor([1.0, 0.0]), [0, 0])
    assert a.tolist() == pytest.approx([1 / math.sqrt(2), -1 / math.sqrt(2)], abs=2e-4)
    b = grpo_advantages(torch.tensor([1.0, 1.0, 0.0]), ["p", "p", "p"])
    assert b.tolist() == pytest.approx([0.5774, 0.5774, -1.1547], abs=2e-4)
    # eps=0 gives the textbook values exactly
    c = grpo_advantages(torch.tensor([1.0, 1.0, 0.0]), [0, 0, 0], eps=0.0)
    assert c.tolist() == pytest.approx([1 / math.sqrt(3), 1 / math.sqrt(3), -2 / math.sqrt(3)])


def test_dr_grpo_is_mean_centering_and_broadcast():
    rewards = torch.tensor([1.0, 0.0, 0.5, 0.25, 0.75])
    groups = torch.tensor([3, 3, 7, 7, 7])
    a = grpo_advantages(rewards, groups, norm_by_std=False)
    assert a.tolist() == pytest.approx([0.5, -0.5, 0.0, -0.25, 0.25])
    mask = torch.tensor([[0, 1, 1], [0, 0, 1], [0, 1, 0], [0, 1, 1], [0, 0, 0]])
    per_token = compute_grpo_advantages(rewards, mask, groups, norm_by_std=False)
    assert per_token.shape == (5, 3)
    assert torch.equal(per_token, a[:, None] * mask)


def test_singleton_and_all_equal_groups_are_exactly_zero():
    # singleton, all-equal (float64 mean of three 0.1 is 0.10000000000000002), equal, real
    rewards = torch.tensor([5.0, 0.1, 0.1, 0.1, 0.7, 0.7, 1.0, 0.0], dtype=torch.float64)
    groups = [0, 1, 1, 1, 2, 2, 3, 3]
    for name, fn in ADVANTAGE_ESTIMATORS.items():
        for norm in (True, False):
            a = fn(rewards, groups, norm_by_std=norm)
            assert torch.equal(a[:6], torch.zeros(6)), name  # exactly, not approximately
            assert a[6] > 0 > a[7]


def test_shift_scale_permutation():
    g = torch.Generator().manual_seed(0)
    rewards = torch.rand(12, generator=g, dtype=torch.float64)
    groups = torch.tensor([0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 2])
    base = grpo_advantages(rewards, groups)
    # a different constant added to each group changes nothing
    shifts = torch.tensor([3.0, -100.0, 1e6], dtype=torch.float64)[groups]
    assert torch.allclose(grpo_advantages(rewards + shifts, groups), base, atol=1e-6)
    # std normalization makes the result scale-free (up to eps); without it, it scales
    assert torch.allclose(grpo_advantages(rewards * 50, groups), base, atol=1e-3)
    dr = grpo_advantages(rewards, groups, norm_by_std=False)
    assert torch.allclose(grpo_advantages(rewards * 50, groups, norm_by_std=False), dr * 50)
    # permutation equivariance (groups interleaved)
    perm = torch.randperm(12, generator=g)
    assert torch.allclose(grpo_advantages(rewards[perm], groups[perm]), base[perm], atol=1e-7)


def test_near_equal_rewards_stay_bounded():
    a = grpo_advantages(torch.tensor([0.35] * 7 + [0.95]), [0] * 8)
    assert torch.isfinite(a).all()
    # z-scores of one outlier among n: (n-1)/sqrt(n) and -1/sqrt(n) in unbiased-std units
    assert a[-1].item() == pytest.approx(7 / math.sqrt(8), rel=1e-3)
    assert a[0].item() == pytest.approx(-1 / math.sqrt(8), rel=1e-3)
    # a spread far below eps is damped, not blown up
    tiny = grpo_advantages(torch.tensor([0.5, 0.5 + 1e-12, 0.5]), [0, 0, 0])
    assert torch.isfinite(tiny).all() and tiny.abs().max() < 1e-6
    # huge offsets: one-pass E[x^2]-E[x]^2 would cancel catastrophically here
    r = torch.tensor([0.0, 0.1, 0.2, 0.3], dtype=torch.float64)
    far = grpo_advantages(r + 1e9, [0] * 4)
    assert torch.allclose(far, grpo_advantages(r, [0] * 4), atol=1e-5)


def test_non_finite_rewards_rejected():
    with pytest.raises(ValueError, match="finite"):
        grpo_advantages(torch.tensor([1.0, float("nan")]), [0, 0])


def test_rloo_is_leave_one_out():
    a = ADVANTAGE_ESTIMATORS["rloo"](torch.tensor([1.0, 0.0, 0.0]), [0, 0, 0])
    assert a.tolist() == pytest.approx([1.0, -0.5, -0.5])


# ---------------------------------------------------------------- log-probs


def _random_batch(seed: int = 0, b: int = 4, t: int = 9, v: int = 13):
    """logits (B,T,V), input_ids (B,T), response_mask (B,T) with ragged right padding."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, t, v, generator=g) * 2
    input_ids = torch.randint(0, v, (b, t), generator=g)
    mask = torch.zeros(b, t, dtype=torch.long)
    for i in range(b):
        prompt = 1 + i % 3
        end = t - (i % 2) * 2  # some rows padded
        mask[i, prompt:end] = 1
    return logits, input_ids, mask


def _naive_log_probs(logits, input_ids, mask):
    """Full log-softmax + gather with the shift, the seed's formulation done right."""
    lp = torch.zeros(input_ids.shape)
    full = F.log_softmax(logits.float(), dim=-1)  # (B, T, V)
    shifted = full[:, :-1].gather(-1, input_ids[:, 1:, None]).squeeze(-1)
    lp[:, 1:] = shifted
    return lp * mask


def test_log_probs_equal_naive_full_log_softmax():
    logits, ids, mask = _random_batch()
    lp, _ent = token_log_probs(logits, ids, mask, chunk_size=5)  # several chunks
    assert torch.allclose(lp, _naive_log_probs(logits, ids, mask), atol=1e-6)
    assert torch.equal(lp[mask == 0], torch.zeros(int((mask == 0).sum())))


def test_shift_first_token_scored_by_last_prompt_position():
    v = 7
    ids = torch.tensor([[1, 2, 3, 4]])
    mask = torch.tensor([[0, 0, 1, 1]])  # prompt = 2 tokens
    logits = torch.zeros(1, 4, v)
    logits[0, 1, 3] = 10.0  # position 1 (last prompt token) predicts token 3 at position 2
    lp, _ = token_log_probs(logits, ids, mask)
    assert lp[0, 2].item() == pytest.approx(10 - math.log(math.exp(10) + v - 1), abs=1e-5)
    # the final position's logits score nothing
    changed = logits.clone()
    changed[0, 3] = torch.randn(v) * 5
    assert torch.equal(token_log_probs(changed, ids, mask)[0], lp)
    with pytest.raises(ValueError, match="first token"):
        token_log_probs(logits, ids, torch.tensor([[1, 0, 1, 1]]))


def test_entropy_exact_small_vocab_and_ignores_padding():
    logits, ids, mask = _random_batch(seed=1, v=5)
    _, ent = token_log_probs(logits, ids, mask)
    for b in range(ids.shape[0]):
        for t in range(ids.shape[1]):
            if mask[b, t]:
                row = logits[b, t - 1].double()
                p = [math.exp(x) for x in row.tolist()]
                z = sum(p)
                exact = -sum(q / z * math.log(q / z) for q in p)
                assert ent[b, t].item() == pytest.approx(exact, abs=1e-5)
            else:
                assert ent[b, t].item() == 0.0


@pytest.mark.parametrize("with_bias", [False, True])
def test_fused_hidden_path_matches_logits_path(with_bias):
    g = torch.Generator().manual_seed(2)
    b, t, h, v = 3, 8, 6, 11
    hidden = torch.randn(b, t, h, generator=g, requires_grad=True)
    weight = torch.randn(v, h, generator=g, requires_grad=True)
    bias = torch.randn(v, generator=g, requires_grad=True) if with_bias else None
    ids = torch.randint(0, v, (b, t), generator=g)
    mask = torch.zeros(b, t, dtype=torch.long)
    mask[0, 2:] = 1
    mask[1, 3:6] = 1
    mask[2, 1:4] = 1
    w_lp = torch.randn(b, t, generator=g)
    w_ent = torch.randn(b, t, generator=g)
    params = [hidden, weight] + ([bias] if with_bias else [])

    def grads(fn):
        lp, ent = fn()
        loss = (lp * w_lp).sum() + (ent * w_ent).sum()
        return lp.detach(), ent.detach(), torch.autograd.grad(loss, params)

    def fused():
        return token_log_probs_from_hidden(hidden, weight, ids, mask, bias, chunk_size=4)

    def reference():
        logits = F.linear(hidden, weight, bias)
        return token_log_probs(logits, ids, mask, entropy_grad=True)

    lp1, ent1, g1 = grads(fused)
    lp2, ent2, g2 = grads(reference)
    assert torch.allclose(lp1, lp2, atol=1e-5) and torch.allclose(ent1, ent2, atol=1e-5)
    for a, b_ in zip(g1, g2, strict=True):
        assert torch.allclose(a, b_, atol=1e-4)


def test_fused_path_is_accurate_at_real_vocab_size():
    """fp32 results within 1e-5 of float64 at a 49k vocabulary (long reductions)."""
    g = torch.Generator().manual_seed(11)
    hidden = torch.randn(2, 9, 32, generator=g)
    weight = torch.randn(49152, 32, generator=g) * 0.5
    ids = torch.randint(0, 49152, (2, 9), generator=g)
    mask = torch.zeros(2, 9, dtype=torch.long)
    mask[:, 3:] = 1
    lp, ent = token_log_probs_from_hidden(hidden, weight, ids, mask, chunk_size=4)
    log_p = torch.log_softmax((hidden.double() @ weight.double().T)[:, :-1], -1)
    exact_lp = log_p.gather(-1, ids[:, 1:, None]).squeeze(-1)
    exact_ent = -(log_p.exp() * log_p).sum(-1)
    m = mask[:, 1:].bool()
    assert (lp[:, 1:][m].double() - exact_lp[m]).abs().max() < 1e-5
    assert (ent[:, 1:][m].double() - exact_ent[m]).abs().max() < 1e-5


# ---------------------------------------------------------------- loss


def _weights(mask: torch.Tensor, agg: str) -> torch.Tensor:
    """Per-token weights w of agg(x) = sum w * x."""
    m = mask.float()
    if agg == "token_mean":
        return m / m.sum()
    if agg == "seq_mean_token_mean":
        return m / m.sum(-1, keepdim=True).clamp(min=1) / m.shape[0]
    return m / (m.shape[0] * L_CONST)


@pytest.mark.parametrize("agg", AGGS)
def test_on_policy_gradient_is_advantage_weighted_log_likelihood(agg):
    logits, ids, mask = _random_batch(seed=3)
    adv = torch.tensor([1.5, -0.5, 0.0, -1.0])
    leaf = logits.clone().requires_grad_(True)
    out = compute_grpo_loss(leaf, ids, mask, adv, loss_agg=agg, max_response_length=L_CONST)
    (got,) = torch.autograd.grad(out["loss"], leaf)
    leaf2 = logits.clone().requires_grad_(True)
    lp = _naive_log_probs(leaf2, ids, mask)
    surrogate = -(_weights(mask, agg) * adv[:, None] * lp).sum()
    (want,) = torch.autograd.grad(surrogate, leaf2)
    assert torch.allclose(got, want, atol=1e-6)
    assert out["loss"].item() == pytest.approx(
        -(_weights(mask, agg) * adv[:, None]).sum().item(), abs=1e-6
    )  # rho = 1: loss value is -sum w A
    assert out["clip_ratio"].item() == 0.0 and out["kl"].item() == 0.0


def test_clipping_zeroes_exactly_the_clipped_tokens():
    logits, ids, mask = _random_batch(seed=4, b=4, t=6)
    mask[:, :] = 0
    mask[:, 1:] = 1  # every row: 5 response tokens
    adv = torch.tensor([1.0, 1.0, -1.0, -1.0])
    lp = _naive_log_probs(logits, ids, mask)
    # target ratios per token: high, low, inside, ...
    rho = torch.tensor(
        [
            [1, 1.5, 0.5, 1.1, 1.25, 0.9],  # A>0: clipped where rho > 1.2
            [1, 1.3, 1.0, 0.7, 1.19, 2.0],
            [1, 0.5, 1.5, 0.9, 0.79, 0.81],  # A<0: clipped where rho < 0.8
            [1, 0.1, 1.0, 3.0, 0.85, 0.2],
        ]
    )
    old = lp - torch.log(rho)
    leaf = logits.clone().requires_grad_(True)
    out = compute_grpo_loss(leaf, ids, mask, adv, old_log_probs=old, clip_eps_high=0.2)
    (grad,) = torch.autograd.grad(out["loss"], leaf)
    expect_clipped = ((adv[:, None] > 0) & (rho > 1.2)) | ((adv[:, None] < 0) & (rho < 0.8))
    expect_clipped &= mask.bool()
    for b in range(4):
        for t in range(1, 6):
            row_grad = grad[b, t - 1]  # the logits row that scores token t
            if expect_clipped[b, t]:
                assert torch.equal(row_grad, torch.zeros_like(row_grad)), (b, t)
            else:
                assert row_grad.abs().max() > 1e-4, (b, t)
    assert out["clip_ratio"].item() == pytest.approx(
        expect_clipped.sum().item() / mask.sum().item()
    )
    # asymmetric clip (DAPO clip-higher): rho = 1.25 is inside 1 + 0.28
    out2 = compute_grpo_loss(logits, ids, mask, adv, old_log_probs=old, clip_eps_high=0.28)
    assert out2["clip_ratio"] < out["clip_ratio"]


def test_k3_kl_zero_at_reference_and_positive_elsewhere():
    logits, ids, mask = _random_batch(seed=5)
    lp = _naive_log_probs(logits, ids, mask)
    adv = torch.zeros(4)
    leaf = logits.clone().requires_grad_(True)
    out = compute_grpo_loss(leaf, ids, mask, adv, ref_log_probs=lp, beta=0.1)
    assert out["kl"].item() == pytest.approx(0.0, abs=1e-7)
    (grad,) = torch.autograd.grad(out["loss"], leaf)
    assert grad.abs().max() < 1e-6  # k3 has zero gradient at the reference
    shifted = compute_grpo_loss(logits, ids, mask, adv, ref_log_probs=lp - 0.3, beta=0.1)
    k3 = math.exp(-0.3) + 0.3 - 1
    assert shifted["kl"].item() == pytest.approx(k3, rel=1e-4)
    assert shifted["loss"].item() == pytest.approx(0.1 * k3, rel=1e-4)
    with pytest.raises(ValueError, match="ref_log_probs"):
        compute_grpo_loss(logits, ids, mask, adv, beta=0.1)


def test_entropy_bonus_gradient():
    logits, ids, mask = _random_batch(seed=6)
    adv = torch.zeros(4)
    leaf = logits.clone().requires_grad_(True)
    out = compute_grpo_loss(leaf, ids, mask, adv, entropy_coef=0.5)
    (grad,) = torch.autograd.grad(out["loss"], leaf)
    leaf2 = logits.clone().requires_grad_(True)
    _, ent = token_log_probs(leaf2, ids, mask, entropy_grad=True)
    (want,) = torch.autograd.grad(-0.5 * (ent * mask).sum() / mask.sum(), leaf2)
    assert torch.allclose(grad, want, atol=1e-6)


@pytest.mark.parametrize("agg", AGGS)
def test_masking_prompt_logits_padding_amount_and_side(agg):
    logits, ids, mask = _random_batch(seed=7)
    adv = torch.tensor([1.0, -2.0, 0.5, 0.25])
    g = torch.Generator().manual_seed(8)
    old = _naive_log_probs(logits, ids, mask) + 0.3 * torch.randn(ids.shape, generator=g)
    ref = old - 0.1
    kw = {"loss_agg": agg, "max_response_length": L_CONST, "beta": 0.05}
    base = compute_grpo_loss(logits, ids, mask, adv, old * mask, ref * mask, **kw)

    # 1. logits that score no response token (prompt rows, padding rows, the last row)
    scoring = torch.zeros_like(mask, dtype=torch.bool)
    scoring[:, :-1] = mask[:, 1:].bool()
    noisy = torch.where(scoring[..., None], logits, torch.randn(logits.shape, generator=g) * 9)
    # old/ref values at non-response positions are garbage too
    junk = torch.randn(ids.shape, generator=g) * 50
    out = compute_grpo_loss(
        noisy,
        ids,
        mask,
        adv,
        torch.where(mask.bool(), old, junk),
        torch.where(mask.bool(), ref, junk),
        **kw,
    )
    for key in base:
        assert torch.allclose(out[key], base[key], atol=1e-6), key

    # 2. more right padding
    pad = 5
    wide = compute_grpo_loss(
        torch.cat([logits, torch.randn(4, pad, logits.shape[-1], generator=g)], 1),
        F.pad(ids, (0, pad), value=0),
        F.pad(mask, (0, pad)),
        adv,
        F.pad(old * mask, (0, pad)),
        F.pad(ref * mask, (0, pad)),
        **kw,
    )
    for key in base:
        assert torch.allclose(wide[key], base[key], atol=1e-6), key

    # 3. left padding: move each row's trailing padding to the front
    lengths = [int(mask[i].nonzero().max()) + 1 for i in range(4)]
    t = ids.shape[1]

    def left(x):
        return torch.stack([torch.roll(x[i], t - lengths[i], dims=0) for i in range(4)])

    lefted = compute_grpo_loss(
        left(logits), left(ids), left(mask), adv, left(old * mask), left(ref * mask), **kw
    )
    for key in base:
        assert torch.allclose(lefted[key], base[key], atol=1e-6), key


@pytest.mark.parametrize("agg", AGGS)
def test_split_invariance_micro_batches_equal_one_batch(agg):
    logits, ids, mask = _random_batch(seed=9, b=6, t=10)
    g = torch.Generator().manual_seed(10)
    adv = torch.randn(6, generator=g)
    lp = _naive_log_probs(logits, ids, mask)
    old = (lp + 0.2 * torch.randn(ids.shape, generator=g)) * mask
    ref = (lp - 0.1 * torch.rand(ids.shape, generator=g)) * mask
    kw = {
        "loss_agg": agg,
        "max_response_length": L_CONST,
        "beta": 0.04,
        "entropy_coef": 0.01,
        "clip_eps_high": 0.28,
    }
    full = logits.clone().requires_grad_(True)
    whole = compute_grpo_loss(full, ids, mask, adv, old, ref, **kw)
    whole["loss"].backward()

    parts = logits.clone().requires_grad_(True)
    num_tokens, num_seqs = mask.sum(), mask.shape[0]
    sums = dict.fromkeys(whole, 0.0)
    for sl in (slice(0, 2), slice(2, 3), slice(3, 6)):
        # each micro-batch trimmed to its own width, as the trainer does
        width = int(mask[sl].nonzero()[:, 1].max()) + 1
        out = compute_grpo_loss(
            parts[sl, :width],
            ids[sl, :width],
            mask[sl, :width],
            adv[sl],
            old[sl, :width],
            ref[sl, :width],
            num_tokens=num_tokens,
            num_seqs=num_seqs,
            **kw,
        )
        out["loss"].backward()
        for key in sums:
            sums[key] = sums[key] + out[key].detach()
    assert torch.allclose(parts.grad, full.grad, atol=1e-7)
    for key in whole:
        assert torch.allclose(sums[key], whole[key].detach(), atol=1e-6), key


def test_registries_and_errors():
    assert set(AGGS) <= set(LOSS_AGGREGATIONS)
    assert {"grpo", "rloo"} <= set(ADVANTAGE_ESTIMATORS)
    logits, ids, mask = _random_batch()
    with pytest.raises(ValueError, match="unknown loss_agg"):
        compute_grpo_loss(logits, ids, mask, torch.zeros(4), loss_agg="nope")
    with pytest.raises(ValueError, match="max_response_length"):
        compute_grpo_loss(logits, ids, mask, torch.zeros(4), loss_agg="seq_mean_token_sum_norm")
    with pytest.raises(ValueError, match="unknown advantage estimator"):
        compute_grpo_advantages(torch.zeros(2), mask[:2], [0, 0], estimator="nope")
    lp = _naive_log_probs(logits, ids, mask)
    out = policy_loss(lp, mask, torch.ones(4), old_log_probs=lp + 100 * (1 - mask))
    assert torch.isfinite(out["loss"])  # garbage outside the mask never overflows exp


# ---------------------------------------------------------------- LR schedule


def test_lr_schedule_worked_values():
    """Every `grpo.schedule`, worked by hand: the warmup gives the first step lr / warmup (not
    0, as `transformers.get_scheduler` would) and the full lr at its last step; a decay ends
    at 0 at `total_steps` and stays there."""

    def factors(warmup: int, total: int, schedule: str, steps: int) -> list[float]:
        factor = lr_lambda(warmup, total, schedule)
        return [factor(step) for step in range(steps)]

    assert factors(3, 10, "constant", 5) == pytest.approx([1 / 3, 2 / 3, 1.0, 1.0, 1.0])
    assert factors(0, 10, "constant", 2) == [1.0, 1.0]
    # warmup 2, then 1 - (step - 2) / (4 - 2)
    assert factors(2, 4, "linear", 6) == pytest.approx([0.5, 1.0, 1.0, 0.5, 0.0, 0.0])
    # (1 + cos(pi * step / 4)) / 2; past the horizon it stays at 0
    c = math.cos(math.pi / 4) / 2
    assert factors(0, 4, "cosine", 7) == pytest.approx([1.0, 0.5 + c, 0.5, 0.5 - c, 0.0, 0.0, 0.0])
    assert factors(1, 3, "cosine", 4) == pytest.approx([1.0, 1.0, 0.5, 0.0])
    with pytest.raises(ValueError, match="unknown schedule"):
        lr_lambda(0, 1, "cosine_with_restarts")
