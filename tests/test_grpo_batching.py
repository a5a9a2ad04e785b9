"""`wfopt.grpo.batching`: the micro-batches of each process."""

from __future__ import annotations

from wfopt.grpo.batching import rank_micro_batches


def test_micro_batch_plan_shards_disjointly_with_equal_counts():
    for rows, micro in ((4, 1), (3, 1), (1, 1), (7, 2), (8, 3)):
        plans = [rank_micro_batches(rows, micro, rank, 2) for rank in range(2)]
        assert len(plans[0]) == len(plans[1])  # the same number of forwards on every rank
        taken = sorted(r for plan in plans for m in plan for r in m)
        assert taken == list(range(rows))  # disjoint, and together the whole batch
    assert rank_micro_batches(5, 2) == [[0, 1], [2, 3], [4]]  # one process: in order
    assert rank_micro_batches(1, 1, rank=1, world_size=2) == [[]]  # a dummy micro-batch
