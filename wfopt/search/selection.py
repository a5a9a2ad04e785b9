"""Selection rules of the search, as pure functions of node statistics.

UCT (default, `mcts.selection=uct`), the UCB1 rule applied to trees (Kocsis & Szepesvári
2006): descending from the root, a node's child i with mean backed-up reward `v_i` and visit
count `n_i` scores

    uct_i = v_i + c * sqrt(ln(N) / n_i)          N = the node's own visit count

and the highest score is followed; an unvisited child scores +inf.

AFlow's rule (`mcts.selection=aflow`, Zhang et al. 2024): every expandable node i with its
own evaluation score s_i in [0, 1] is picked with probability

    P(i) = λ / n + (1 - λ) * softmax(α * 100 * s)_i        n = number of candidates

(λ = `mcts.aflow_lambda`, α = `mcts.aflow_alpha`): a uniform share for exploration mixed with a
sharp preference for the best scores. The softmax subtracts the maximum first, so large
α·100·s cannot overflow.

Virtual loss (`mcts.parallel_expansions` > 1): while evaluations are in flight, each counts as
a visit that returned the lowest possible reward `floor` (-`mcts.cost_weight`, a score of 0 at
full cost). UCT sees a child as `n_i + p_i` visits with mean `(sum_i + p_i * floor) / (n_i +
p_i)`, `p_i` = evaluations running in its subtree, and `N + p` for the parent; AFlow sees
`s_i` as `(s_i + q_i * floor) / (1 + q_i)`, `q_i` = the node's own children still being
proposed or evaluated. So selection spreads over other paths until the results are in, and
with nothing in flight (p = q = 0) both rules are exactly the ones above.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence


def uct_score(value: float, visits: int, parent_visits: int, exploration: float) -> float:
    """v + c * sqrt(ln(N) / n); +inf for an unvisited child."""
    if visits <= 0:
        return math.inf
    return value + exploration * math.sqrt(math.log(max(parent_visits, 1)) / visits)


def virtual_mean(total: float, visits: int, pending: int, floor: float) -> float:
    """Mean of `visits` real rewards summing to `total` and `pending` virtual ones at `floor`;
    0 with neither. With `pending` 0 it is exactly `total / visits`."""
    if pending:
        total += pending * floor
    n = visits + pending
    return total / n if n else 0.0


def uct_choice(
    values: Sequence[float], visits: Sequence[int], parent_visits: int, exploration: float
) -> int:
    """Index of the child with the highest UCT score (the first one on ties)."""
    scores = [
        uct_score(v, n, parent_visits, exploration) for v, n in zip(values, visits, strict=True)
    ]
    return max(range(len(scores)), key=scores.__getitem__)


def aflow_probabilities(scores: Sequence[float], lam: float, alpha: float) -> list[float]:
    """P(i) = lam / n + (1 - lam) * softmax(alpha * 100 * scores)_i; sums to 1."""
    n = len(scores)
    if n == 0:
        return []
    logits = [alpha * 100.0 * s for s in scores]
    top = max(logits)
    weights = [math.exp(z - top) for z in logits]
    total = sum(weights)
    return [lam / n + (1.0 - lam) * w / total for w in weights]


def aflow_choice(scores: Sequence[float], lam: float, alpha: float, rng: random.Random) -> int:
    """An index drawn with AFlow's mixed probabilities."""
    probabilities = aflow_probabilities(scores, lam, alpha)
    return rng.choices(range(len(scores)), weights=probabilities)[0]
