"""The RL data path: GRPO trains on exactly what the policy sampled, under the prompt it was
sampled from; off-policy workflows get the documented rule; group statistics after drops.

The token round trip runs the real embedded SmolLM2 and its tokenizer end to end: sample ->
trajectory file -> training batch.
"""

from __future__ import annotations

import asyncio
import json
import math
import random

import pytest
import torch
from omegaconf import OmegaConf

from wfopt.baselines import load_baseline
from wfopt.config import MCTSConfig
from wfopt.datasets import Problem
from wfopt.execution import Record, is_valid_policy
from wfopt.grpo.data import TrajectoryDataset, collate_samples, read_trajectories
from wfopt.grpo.losses import policy_loss
from wfopt.grpo.metrics import frac_zero_std_groups
from wfopt.llm.base import SamplingParams
from wfopt.policy import (
    RESPONSE_PREFIX,
    build_policy_prompt,
    encode_prompt,
    encode_response,
    sample_workflows,
)
from wfopt.search.mcts import Evaluation, PolicyProposer, TreeSearch
from wfopt.search.output import trajectory_record
from wfopt.trajectory import Trajectory, in_problem_order

PROBLEM = "What is 12 + 7?"


def _dataset(trajectories, tokenizer, **kwargs):
    return TrajectoryDataset(trajectories, tokenizer, 2048, max_response_length=512, **kwargs)


# ------------------------------------------------------------------ the token round trip


def test_sampled_ids_are_trained_token_for_token(embedded_llm, tmp_path):
    llm = embedded_llm
    tokenizer = llm.tokenizer
    # cut at the token limit: no stop token, and no EOS may be added in training
    cut = asyncio.run(
        sample_workflows(llm, PROBLEM, SamplingParams(0.9, 0.95, max_new_tokens=6, seed=3), 4)
    )
    # a completion that ends on the model's own stop token (a short chat answer)
    chat = llm.render([{"role": "user", "content": "Reply with one word: yes or no?"}])
    done = asyncio.run(llm.complete_text(chat, SamplingParams(0.0, 1.0, 48), 0))
    assert done.stopped and done.completion_ids[-1] in llm.stop_ids
    assert all(s.stopped is False and len(s.completion_ids) == 6 for s in cut)
    # the old path re-tokenized the decoded code and appended EOS: never these ids
    assert all(encode_response(s.code, tokenizer) != s.completion_ids for s in cut)
    rows = [(s.code, s.prompt_ids, s.completion_ids, s.stopped) for s in cut]
    rows.append(("async def solve(problem):\n    return 'yes'\n", *_ids(done)))
    trajectory = Trajectory(
        PROBLEM,
        "p0",
        [r[0] for r in rows],
        [float(i) for i in range(len(rows))],  # distinct rewards: nothing is all-equal
        sources=["policy_sample"] * len(rows),
        prompt_ids=[r[1] for r in rows],
        completion_ids=[r[2] for r in rows],
        stopped=[r[3] for r in rows],
    )
    path = tmp_path / "trajectories.jsonl"
    path.write_text(json.dumps(trajectory.to_json()) + "\n")
    dataset = _dataset(path, tokenizer)
    assert len(dataset) == len(rows)
    for sample, (_, prompt_ids, completion_ids, _) in zip(dataset.samples, rows, strict=True):
        assert sample["input_ids"].tolist() == prompt_ids + completion_ids
        assert sample["response_mask"].tolist() == [0] * len(prompt_ids) + [1] * len(completion_ids)
        assert sample["off_policy"] is False and sample["source"] == "policy_sample"
    last = dataset.samples[-1]["input_ids"].tolist()
    assert last[-1] == done.completion_ids[-1]  # the emitted stop token, trained
    assert all(dataset.samples[i]["input_ids"][-1] != tokenizer.eos_token_id for i in range(4))
    # sampling and training saw the same prompt ids (one BOS rule)
    assert dataset.samples[0]["input_ids"][: len(cut[0].prompt_ids)].tolist() == cut[0].prompt_ids


def test_workflows_are_encoded_the_way_the_policy_writes_them(embedded_llm):
    """A workflow the policy did not write (a seed, a tree edit) is trained as the ids the
    policy itself would emit for it: the untrained policy's greedy workflow, decoded and
    encoded again, gives back the ids it sampled, up to where its function ends."""
    llm = embedded_llm
    params = SamplingParams(0.0, 1.0, max_new_tokens=24, seed=0)
    (sample,) = asyncio.run(sample_workflows(llm, PROBLEM, params, 1))
    assert is_valid_policy(sample.code), sample.code  # a real workflow, not a fragment
    encoded = encode_response(sample.code, llm.tokenizer, add_eos=False)
    # the last id differs at most: the code ends on "\n", the policy may have written "\n\n"
    assert len(encoded) >= 4 and encoded[:-1] == sample.completion_ids[: len(encoded) - 1]


def _ids(completion):
    return completion.prompt_ids, completion.completion_ids, completion.stopped


class FixedEvaluator:
    """Scores by a fixed rule: the search's bookkeeping is under test, not execution."""

    async def __call__(self, workflow):
        score = float("programmer" in workflow.source)
        record = Record("p", "x", "y", score, None, "", workflow.hash, 0.0, {"llm_calls": 1})
        return Evaluation([score], [record])


def test_search_expansions_train_under_their_own_prompt(embedded_llm):
    cfg = OmegaConf.merge(
        OmegaConf.structured(MCTSConfig),
        {"iterations": 2, "max_invalid_retries": 1, "early_stop_perfect": False},
    )
    params = SamplingParams(0.9, 0.95, max_new_tokens=40, seed=1)
    search = TreeSearch(
        task=PROBLEM,
        evaluate=FixedEvaluator(),
        cfg=cfg,
        proposer=PolicyProposer(embedded_llm, params),
        rng=random.Random(0),
    )
    asyncio.run(search.run(load_baseline("io"), policy_samples=2))
    problem = Problem(id="p0", question=PROBLEM, answer="19", kind="math")
    record = trajectory_record(problem, search, "arithmetic", "train")
    trajectory = read_trajectory_line(record)
    tokenizer = embedded_llm.tokenizer
    dataset = _dataset([trajectory], tokenizer, off_policy="shaped")
    by_source = {}
    for sample in dataset.samples:
        prompt_len = int((sample["response_mask"] == 0).sum())
        prompt = tokenizer.decode(sample["input_ids"][:prompt_len])
        by_source.setdefault(sample["source"], []).append((prompt, sample))
    # every expansion was sampled (and is trained) under a prompt that shows its parent
    assert by_source["search"], record["sources"]
    for prompt, sample in by_source["search"]:
        assert "This workflow scored" in prompt and "Write a better one." in prompt
        assert sample["off_policy"] is False
    for prompt, sample in by_source["policy_sample"]:
        assert "This workflow scored" not in prompt and sample["off_policy"] is False
    (seed_prompt, seed_sample), *_ = by_source["seed"]
    assert seed_sample["off_policy"] is True and "This workflow scored" not in seed_prompt
    assert seed_prompt.endswith(RESPONSE_PREFIX)


def read_trajectory_line(record):
    from wfopt.trajectory import parse_trajectory

    return parse_trajectory(json.loads(json.dumps(record)), "record")


# ------------------------------------------------------------------ groups and the off-policy rule


def _traj(codes, rewards, pid="p"):
    return Trajectory("What is 1 + 1?", pid, codes, rewards)


def test_advantages_sum_to_zero_over_the_samples_left_after_drops(embedded_llm):
    tokenizer = embedded_llm.tokenizer
    short = "async def solve(problem):\n    return await generate(problem)\n"
    long = "async def solve(problem):\n" + "    x = 1\n" * 200 + "    return x\n"
    trajs = [
        _traj([short, long, short.replace("generate", "programmer"), short + "\n"], [1, 0, 0, 1]),
        _traj([short, long], [1.0, 0.0], "q"),  # one left: a singleton, skipped
    ]
    dataset = TrajectoryDataset(trajs, tokenizer, 1024, max_response_length=256)
    assert dataset.stats["dropped_too_long"] == 2
    assert dataset.stats["singleton_groups_skipped"] == 1
    advantages = [s["advantage"] for s in dataset.samples]
    assert len(advantages) == 3 and abs(sum(advantages)) < 1e-9
    # rewards left: 1, 0, 1 -> mean 2/3, unbiased std sqrt(1/3)
    std = math.sqrt(1 / 3)
    expected = [(1 - 2 / 3) / (std + 1e-4), (0 - 2 / 3) / (std + 1e-4), (1 - 2 / 3) / (std + 1e-4)]
    assert advantages == pytest.approx(expected, rel=1e-6)  # float32 advantages


def test_zero_std_fraction_counts_groups_not_samples(embedded_llm):
    # group 0: three samples, all-equal rewards; group 1: one sample of a varied group
    group_ids = torch.tensor([0, 0, 0, 1])
    std = torch.tensor([0.0, 0.0, 0.0, 0.7])
    assert frac_zero_std_groups(group_ids, std) == 0.5  # per sample it would be 0.75
    tokenizer = embedded_llm.tokenizer
    code = "async def solve(problem):\n    return await generate(problem)\n"
    other = code.replace("generate", "programmer")
    trajs = [_traj([code, other, code], [0, 0, 0]), _traj([code, other], [1, 0], "q")]
    kept = TrajectoryDataset(trajs, tokenizer, 1024)
    dropped = TrajectoryDataset(trajs, tokenizer, 1024, drop_zero_std_groups=True)
    assert kept.stats["zero_std_groups"] == dropped.stats["zero_std_groups"] == 1
    assert len(kept) == 5 and len(dropped) == 2
    assert dropped.stats["zero_std_groups_dropped"] == 1


def test_off_policy_rows_get_the_shaped_objective_worked_by_hand():
    # one token per row, p = 0.5 on both rows, A = +1 on both, gamma = 0.1
    logp = torch.full((2, 1), math.log(0.5), dtype=torch.float64, requires_grad=True)
    mask = torch.ones(2, 1, dtype=torch.float64)
    out = policy_loss(
        logp,
        mask,
        torch.ones(2, dtype=torch.float64),
        off_policy=torch.tensor([False, True]),
        off_policy_gamma=0.1,
    )
    out["loss"].backward()
    # token_mean over 2 tokens: on-policy pg = -A * rho = -1; off-policy -0.5 / 0.6
    assert float(out["pg_loss"]) == pytest.approx((-1 - 0.5 / 0.6) / 2, rel=1e-12)
    # d/dlogp: on-policy -A * rho / 2 = -0.5; off-policy -A * gamma * p / (p + gamma)^2 / 2
    expected = [-0.5, -(0.1 * 0.5 / 0.6**2) / 2]
    assert logp.grad.flatten().tolist() == pytest.approx(expected, rel=1e-12)


def test_off_policy_rules_in_the_dataset(embedded_llm):
    tokenizer = embedded_llm.tokenizer
    llm = embedded_llm
    sampled = asyncio.run(
        sample_workflows(llm, PROBLEM, SamplingParams(0.9, 0.95, max_new_tokens=12, seed=5), 2)
    )
    seed_code = load_baseline("io")
    trajectory = Trajectory(
        PROBLEM,
        "p",
        [seed_code, sampled[0].code, sampled[1].code],
        [1.0, 0.0, 0.5],
        sources=["seed", "policy_sample", "policy_sample"],
        prompt_ids=[None, sampled[0].prompt_ids, sampled[1].prompt_ids],
        completion_ids=[None, sampled[0].completion_ids, sampled[1].completion_ids],
        stopped=[None, sampled[0].stopped, sampled[1].stopped],
    )
    shaped = _dataset([trajectory], tokenizer, off_policy="shaped")
    assert [s["off_policy"] for s in shaped.samples] == [True, False, False]
    assert shaped.stats["samples_seed"] == 1 and shaped.stats["samples_policy_sample"] == 2
    drop = _dataset([trajectory], tokenizer, off_policy="drop")
    assert drop.stats["dropped_off_policy"] == 1 and len(drop) == 2
    # the baseline is the two on-policy samples: rewards 0 and 0.5 -> advantages -a, +a
    a0, a1 = (s["advantage"] for s in drop.samples)
    assert a0 == pytest.approx(-a1) and a0 < 0
    legacy = _dataset([trajectory], tokenizer, off_policy="as_on_policy")
    assert [s["off_policy"] for s in legacy.samples] == [False, False, False]
    batch = collate_samples(shaped.samples, tokenizer.eos_token_id)
    assert batch["off_policy"].tolist() == [True, False, False]
    assert batch["source_ids"].tolist() == [3, 0, 0]  # SOURCE_KINDS: seed is index 3
    # positive: tree workflows above the group mean are trained as if sampled, the others
    # leave the loss but stay in the baseline. Rewards 1 (seed), 0, 0.5 (sampled), 0 and 0.5
    # (edits): mean 0.4, unbiased std sqrt(0.175); the edit at 0 is the one left out
    edits = Trajectory(
        PROBLEM,
        "p",
        [*trajectory.workflow_codes, seed_code.replace("generate", "programmer"), seed_code],
        [1.0, 0.0, 0.5, 0.0, 0.5],
        sources=[*trajectory.sources, "edit:swap_operator", "edit:add_review"],
        prompt_ids=[*trajectory.prompt_ids, None, None],
        completion_ids=[*trajectory.completion_ids, None, None],
        stopped=[*trajectory.stopped, None, None],
    )
    positive = _dataset([edits], tokenizer, off_policy="positive")
    assert [s["reward"] for s in positive.samples] == [1.0, 0.0, 0.5, 0.5]
    assert positive.stats["dropped_off_policy"] == 1
    std = math.sqrt(0.175) + 1e-4
    expected = [(r - 0.4) / std for r in (1.0, 0.0, 0.5, 0.5)]
    assert [s["advantage"] for s in positive.samples] == pytest.approx(expected, rel=1e-6)
    assert not any(s["off_policy"] for s in positive.samples)  # rho = 1, as if sampled


def test_training_order_depends_on_the_groups_not_on_when_their_trees_finished():
    """The search writes groups as trees finish; every permutation of them trains in one
    order (by problem id), and two groups of one problem keep theirs."""
    groups = [
        Trajectory(PROBLEM, pid, ["async def solve(problem):\n    return 1\n"], [float(i)])
        for i, pid in enumerate(["arithmetic-77", "arithmetic-329", 5, "arithmetic-23", 5])
    ]
    expected = ["5", "5", "arithmetic-23", "arithmetic-329", "arithmetic-77"]
    rng = random.Random(0)
    for _ in range(20):
        shuffled = rng.sample(groups, len(groups))
        same_problem = [g.rewards[0] for g in shuffled if g.problem_id == 5]
        ordered = [(str(g.problem_id), g.rewards[0]) for g in in_problem_order(shuffled)]
        assert [k for k, _ in ordered] == expected
        assert [r for k, r in ordered if k == "5"] == same_problem  # stable


def test_old_trajectory_files_still_train(tmp_path, embedded_llm):
    """A file of wfopt <= 0.1 (no ids, `invalid_sample` sources) reads and trains off-policy."""
    code = "async def solve(problem):\n    return await generate(problem)\n"
    line = {
        "problem": PROBLEM,
        "problem_id": 1,
        "workflow_codes": [code, "def solve(): pass\n"],
        "rewards": [0.0, -1.0],
        "sources": ["seed", "invalid_sample"],
    }
    path = tmp_path / "old.jsonl"
    path.write_text(json.dumps(line) + "\n")
    (trajectory,) = read_trajectories(path)
    dataset = _dataset([trajectory], embedded_llm.tokenizer, off_policy="shaped")
    assert [s["source"] for s in dataset.samples] == ["seed", "policy_sample"]
    assert all(s["off_policy"] for s in dataset.samples)


def test_code_tasks_show_code_operators_in_sampling_and_training(embedded_llm):
    """One builder for both: a code problem's prompt lists code_generate, test and the
    entry_point global, whether the policy samples from it or a tree workflow trains on it."""
    tokenizer = embedded_llm.tokenizer
    task = 'def add(a, b):\n    """Return a + b."""\n'
    (sample,) = asyncio.run(
        sample_workflows(embedded_llm, task, SamplingParams(0.0, 1.0, 4), 1, kind="code")
    )
    sampled_prompt = tokenizer.decode(sample.prompt_ids)
    assert "code_generate" in sampled_prompt and "entry_point" in sampled_prompt
    math_prompt = build_policy_prompt(task, tokenizer)
    assert "code_generate" not in math_prompt and "programmer" in math_prompt
    seed = "async def solve(problem):\n    return await code_generate(problem, entry_point)\n"
    trajectory = Trajectory(task, "c0", [seed, seed + "\n"], [1.0, 0.0], extra={"kind": "code"})
    (trained, _) = _dataset([trajectory], tokenizer).samples
    prompt_len = int((trained["response_mask"] == 0).sum())
    # the off-policy seed trains under exactly the prompt the policy samples code tasks from
    assert trained["input_ids"][:prompt_len].tolist() == sample.prompt_ids
    assert sample.prompt_ids == encode_prompt(
        build_policy_prompt(task, tokenizer, kind="code"), tokenizer
    )
