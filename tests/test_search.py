"""MCTS workflow search: selection math, the tree, structural edits, dedup, the output file,
and `wfopt search` end to end on the embedded model."""

from __future__ import annotations

import asyncio
import json
import math
import random
from collections import Counter
from pathlib import Path

import pytest
from conftest import mcts
from omegaconf import OmegaConf

from wfopt.baselines import load_baseline
from wfopt.execution import Record
from wfopt.policy import RESPONSE_PREFIX, PolicySample, policy_response, workflow_from_completion
from wfopt.search.edits import EDIT_KINDS, edit_variants, propose_edit
from wfopt.search.errors import SearchError
from wfopt.search.mcts import Evaluation, TreeSearch, cost_penalized_reward, failure_notes
from wfopt.search.output import trajectory_record
from wfopt.search.selection import aflow_choice, aflow_probabilities, uct_choice, uct_score
from wfopt.search.tree import Tree
from wfopt.workflow import InvalidWorkflow, parse_workflow

MATH_BASELINES = ["io", "cot", "cot_sc", "programmer", "self_refine"]


# ------------------------------------------------------------------------- selection math


def test_uct_score_hand_worked():
    # 0.5 + 1.4 * sqrt(ln 10 / 2) = 0.5 + 1.4 * 1.072983 = 2.002176
    assert uct_score(0.5, 2, 10, 1.4) == pytest.approx(2.002176, abs=1e-6)
    assert uct_score(0.2, 1, 1, 1.4) == pytest.approx(0.2)  # ln 1 = 0: pure exploitation
    assert uct_score(0.0, 0, 5, 1.4) == math.inf
    assert uct_score(0.7, 3, 9, 0.0) == pytest.approx(0.7)


def test_uct_choice_explores_then_exploits():
    # child 0: v=0.9 n=8 -> 0.9 + sqrt(ln 10 / 8) = 1.4365; child 1: v=0.5 n=1 -> 2.0174
    assert uct_choice([0.9, 0.5], [8, 1], 10, 1.0) == 1
    assert uct_choice([0.9, 0.5], [8, 1], 10, 0.0) == 0
    assert uct_choice([0.9, 0.0], [8, 0], 10, 0.0) == 1  # unvisited first
    assert uct_choice([0.5, 0.5], [2, 2], 4, 1.4) == 0  # ties: the first


def test_aflow_probabilities_hand_worked():
    # logits 0.2*100*[0.5, 0.6] = [10, 12]; softmax = [1/(1+e^2), e^2/(1+e^2)] = [0.1192, 0.8808]
    p = aflow_probabilities([0.5, 0.6], lam=0.3, alpha=0.2)
    assert p == pytest.approx([0.15 + 0.7 * 0.119203, 0.15 + 0.7 * 0.880797], abs=1e-6)
    assert sum(p) == pytest.approx(1.0)


@pytest.mark.parametrize("scores", [[0.1, 0.9, 0.4], [0.0, 0.0], [1.0, 0.0, 0.0, 0.5]])
def test_aflow_probabilities_properties(scores):
    lam = 0.3
    p = aflow_probabilities(scores, lam, 0.2)
    n = len(scores)
    assert sum(p) == pytest.approx(1.0)
    assert min(p) >= lam / n - 1e-12  # the uniform share is a floor
    assert p.index(max(p)) == scores.index(max(scores))
    assert aflow_probabilities(scores, 1.0, 0.2) == pytest.approx([1 / n] * n)
    huge = aflow_probabilities(scores, lam, 1e6)  # no overflow: softmax subtracts the max
    assert all(math.isfinite(x) for x in huge) and sum(huge) == pytest.approx(1.0)
    assert aflow_probabilities([], lam, 0.2) == []


def test_aflow_choice_draws_with_those_probabilities():
    rng = random.Random(0)
    scores = [0.5, 0.6, 0.2]
    expected = aflow_probabilities(scores, 0.3, 0.2)
    counts = Counter(aflow_choice(scores, 0.3, 0.2, rng) for _ in range(20000))
    for i, p in enumerate(expected):
        assert counts[i] / 20000 == pytest.approx(p, abs=0.015)


def test_cost_penalized_reward():
    assert cost_penalized_reward(1.0, 512, 0.0, 2048) == 1.0
    assert cost_penalized_reward(1.0, 512, 0.2, 2048) == pytest.approx(1.0 - 0.2 * 0.25)
    assert cost_penalized_reward(0.5, 10**6, 0.2, 2048) == pytest.approx(0.3)  # capped at 1


# ---------------------------------------------------------------------------------- tree


def test_tree_backpropagates_along_the_path_only():
    tree = Tree()
    root = tree.add("r", "r", None, "seed")
    a = tree.add("a", "a", root, "edit:x")
    b = tree.add("b", "b", root, "edit:x")
    a1 = tree.add("a1", "a1", a, "policy")
    tree.backpropagate(root, 0.0)
    tree.backpropagate(a, 1.0)
    tree.backpropagate(a1, 0.5)
    tree.backpropagate(b, 0.25)
    assert (root.visits, root.value) == (4, pytest.approx((0 + 1 + 0.5 + 0.25) / 4))
    assert (a.visits, a.value) == (2, pytest.approx(0.75))
    assert (b.visits, a1.visits, a1.depth) == (1, 1, 2)
    assert [n.id for n in tree.path(a1)] == [0, 1, 3]
    with pytest.raises(ValueError, match="already in the tree"):
        tree.add("a", "other", root, "policy")
    a.reward = b.reward = 0.9
    assert tree.best() is a  # ties: the earliest
    assert tree.is_open(root, max_children=2)  # a and b can still take children
    a.exhausted = b.exhausted = a1.exhausted = True
    assert not tree.is_open(root, max_children=2)
    json.dumps(tree.to_json())


# ---------------------------------------------------------------------------------- edits


@pytest.mark.parametrize("name", MATH_BASELINES)
def test_every_edit_of_a_baseline_is_a_valid_different_workflow(name):
    source = load_baseline(name)
    original = parse_workflow(source).hash
    made = 0
    for kind in EDIT_KINDS:
        for variant in edit_variants(source, kind):
            assert parse_workflow(variant).hash != original, (kind, variant)
            made += 1
    assert made >= 4


@pytest.mark.parametrize("name", ["code_io", "code_test_revise"])
def test_code_edits_stay_code_workflows(name):
    source = load_baseline(name)
    for kind in EDIT_KINDS:
        for variant in edit_variants(source, kind, code_task=True):
            assert "code_generate" in variant or kind == "remove_step"
            parse_workflow(variant)


def test_propose_edit_is_seeded_and_runs_out():
    source = load_baseline("io")
    first = propose_edit(source, set(), random.Random(3))
    again = propose_edit(source, set(), random.Random(3))
    assert first is not None and again is not None
    assert first[0] == again[0] and first[1].hash == again[1].hash
    every = {parse_workflow(v).hash for k in EDIT_KINDS for v in edit_variants(source, k)}
    assert propose_edit(source, every, random.Random(3)) is None


def test_edit_first_tries_those_kinds_before_any_other_for_every_seed():
    source = load_baseline("io")
    swaps = {parse_workflow(v).hash for v in edit_variants(source, "swap_operator")}
    assert len(swaps) == 2  # generate -> answer_generate, generate -> programmer
    for seed in range(20):
        rng, known, kinds = random.Random(seed), set(), []
        for _ in range(3):
            kind, workflow = propose_edit(source, known, rng, first=("swap_operator",))
            kinds.append(kind)
            known.add(workflow.hash)
        assert kinds[:2] == ["swap_operator"] * 2 and kinds[2] != "swap_operator"
        assert swaps <= known
    # without `first` the seeded draws are the ones they always were
    plain = [propose_edit(source, set(), random.Random(s)) for s in range(20)]
    empty = [propose_edit(source, set(), random.Random(s), first=()) for s in range(20)]
    assert [(k, w.hash) for k, w in plain] == [(k, w.hash) for k, w in empty]
    assert {k for k, _ in plain} != {"swap_operator"}  # the order really is drawn
    with pytest.raises(ValueError, match="swap_operators"):
        propose_edit(source, set(), random.Random(0), first=("swap_operators",))


# ------------------------------------------------------------------------- the search


class ScriptedPolicy:
    """A policy whose proposals are fixed text. Used where the test needs a particular policy
    behaviour (only invalid code, only reformatted copies) that the real small model does not
    produce on demand; everything downstream of the proposal is the real search."""

    def __init__(self, outputs: list[str]) -> None:
        self.outputs = outputs
        self.calls = 0

    async def sample(self, task, parent, sample_index):
        self.calls += 1
        return PolicySample(self.outputs[sample_index % len(self.outputs)])


class CountingEvaluator:
    """Scores workflows by a fixed rule and records every evaluation (the search's contract
    with its evaluator is what is under test here, not execution)."""

    def __init__(self, score=lambda wf: 0.0) -> None:
        self.score = score
        self.hashes: list[str] = []

    async def __call__(self, workflow):
        self.hashes.append(workflow.hash)
        s = self.score(workflow)
        record = Record("p", "x", "y", s, None, "", workflow.hash, 0.0, {"llm_calls": 1})
        return Evaluation([s], [record])


def grow(policy, evaluator, seed="io", policy_samples=0, **cfg):
    search = TreeSearch(
        task="What is 2 + 3?",
        evaluate=evaluator,
        cfg=mcts(**cfg),
        proposer=policy,
        rng=random.Random(0),
    )
    asyncio.run(search.run(load_baseline(seed), policy_samples))
    return search


# ------------------------------------------------------- one expansion at a time, and several

GOLDEN = Path(__file__).parent / "data" / "mcts_sequential_trees.json"
# proposals for the recorded runs: new workflows, a reformatted seed (duplicate), invalid code
SCRIPT = [
    "async def solve(problem):\n    return await programmer(problem)",
    "async def solve(q):\n    return await generate(q)",
    "def solve(problem): return 4",
    "async def solve(problem):\n    a = await answer_generate(problem)\n    return a",
    "async def solve(problem):\n    x = await generate(problem, 'Be brief.')\n    return x",
    "print('hi')",
    "async def solve(problem):\n    d = [await generate(problem) for _ in range(3)]\n"
    "    return await ensemble(problem, d)",
]
# name -> (proposer?, policy_samples, mcts overrides); early stop off so the trees grow
GOLDEN_RUNS = {
    "uct-edits": (False, 0, {"iterations": 10, "max_children": 3}),
    "aflow-edits": (False, 0, {"iterations": 10, "max_children": 2, "selection": "aflow"}),
    "uct-policy": (True, 2, {"iterations": 8, "max_children": 3, "max_invalid_retries": 1}),
    "aflow-policy": (
        True,
        3,
        {"iterations": 8, "max_children": 2, "selection": "aflow", "max_invalid_retries": 2},
    ),
    "uct-cost": (True, 0, {"iterations": 6, "max_children": 2, "cost_weight": 0.5}),
}


def hash_score(workflow) -> float:
    """0, 0.5 or 1, fixed by the workflow's canonical hash."""
    return int(workflow.hash[:8], 16) % 3 / 2


class TimedEvaluator(CountingEvaluator):
    """CountingEvaluator that takes a hash-dependent while (so evaluations in flight overlap
    and finish out of order) and records how many were in flight at most."""

    def __init__(self, score=hash_score, delay_s=0.0, reverse=False) -> None:
        super().__init__(score)
        self.delay_s = delay_s
        self.reverse = reverse  # the slow ones fast and the fast ones slow
        self.running = self.peak = 0

    async def __call__(self, workflow):
        self.running += 1
        self.peak = max(self.peak, self.running)
        steps = int(workflow.hash[-4:], 16) % 7
        try:
            await asyncio.sleep(self.delay_s * (6 - steps if self.reverse else steps))
            return await super().__call__(workflow)
        finally:
            self.running -= 1


def tree_signature(search) -> dict:
    """Everything the search decided, in order: nodes, their statistics, stats, extras."""
    keys = ("hash", "parent", "origin", "reward", "visits", "value_sum", "proposals")
    return {
        "nodes": [[getattr(n, k) for k in keys] + [n.exhausted] for n in search.tree.nodes],
        "stats": dict(search.stats.__dict__),
        "extras": [[e.origin, e.node, e.sample.code] for e in search.extra_samples],
    }


def golden_search(name: str, parallel: int | None = None, evaluator=None):
    """One of GOLDEN_RUNS (`parallel`: mcts.parallel_expansions, None: the key left out, as
    code without it needs)."""
    uses_policy, samples, overrides = GOLDEN_RUNS[name]
    overrides = {**overrides, "early_stop_perfect": False}
    if parallel is not None:
        overrides["parallel_expansions"] = parallel
    policy = ScriptedPolicy(SCRIPT) if uses_policy else None
    evaluator = evaluator or CountingEvaluator(hash_score)
    return grow(policy, evaluator, policy_samples=samples, **overrides)


def golden_trees() -> dict:
    """The signatures of GOLDEN_RUNS; tests/data/mcts_sequential_trees.json holds them as
    the code before parallel expansions (commit bb8f361) grew them: `cd tests &&
    PYTHONPATH=<that checkout>:. python -c 'import json, test_search as t;
    print(json.dumps(t.golden_trees()))'`."""
    return {name: tree_signature(golden_search(name)) for name in GOLDEN_RUNS}


def test_one_expansion_at_a_time_grows_the_recorded_trees():
    recorded = json.loads(GOLDEN.read_text())
    assert set(recorded) == set(GOLDEN_RUNS)
    for name in GOLDEN_RUNS:
        assert tree_signature(golden_search(name, parallel=1)) == recorded[name], name


@pytest.mark.parametrize("name", list(GOLDEN_RUNS))
def test_parallel_expansions_evaluate_each_workflow_once_and_spend_the_budget(name):
    evaluator = TimedEvaluator(delay_s=0.002)
    search = golden_search(name, parallel=4, evaluator=evaluator)
    iterations = GOLDEN_RUNS[name][2]["iterations"]
    assert len(evaluator.hashes) == len(set(evaluator.hashes)) == len(search.tree)
    assert search.stats.evaluations == iterations + 1  # the seed is not counted
    assert 2 <= evaluator.peak <= 4 + GOLDEN_RUNS[name][1]  # policy samples: all at once
    for node in search.tree.nodes:  # all in-flight bookkeeping undone
        assert (node.pending, node.expanding) == (0, 0) and node.visits >= 1
        assert len(node.children) <= GOLDEN_RUNS[name][2]["max_children"]
    root = search.tree.root
    assert root.visits == len(search.tree)  # every evaluation backed up to the root once


@pytest.mark.parametrize("name", list(GOLDEN_RUNS))
def test_parallel_trees_do_not_depend_on_which_evaluation_finishes_first(name):
    fast_first, slow_first = (
        golden_search(name, parallel=3, evaluator=TimedEvaluator(delay_s=0.003, reverse=r))
        for r in (False, True)
    )
    assert tree_signature(fast_first) == tree_signature(slow_first)


class FreshPolicy(ScriptedPolicy):
    """Proposes a new valid workflow at every call (a different instruction each time)."""

    def __init__(self) -> None:
        super().__init__([])

    async def sample(self, task, parent, sample_index):
        self.calls += 1
        text = (
            f"async def solve(problem):\n    return await generate(problem, 'Step {self.calls}.')"
        )
        return PolicySample(text)


def test_edit_share_sends_that_share_of_expansions_to_edits_reproducibly():
    def run(share, reverse=False):
        policy = FreshPolicy()
        evaluator = TimedEvaluator(delay_s=0.002, reverse=reverse)
        search = grow(
            policy,
            evaluator,
            iterations=20,
            max_children=4,
            edit_share=share,
            early_stop_perfect=False,
            parallel_expansions=3,
        )
        return search, policy

    never, _ = run(0.0)
    assert never.stats.edits == 0  # the policy always had something new
    always, silent = run(1.0)
    assert silent.calls == 0 and always.stats.edits == 20  # the policy was never asked
    half, _ = run(0.5)
    assert 4 <= half.stats.edits <= 16  # Binomial(20, 0.5): outside with p < 0.012
    assert tree_signature(half) == tree_signature(run(0.5, reverse=True)[0])  # not timing


def test_formatting_variants_are_one_node_and_nothing_runs_twice():
    variants = [
        "async def solve(problem):\n    return await generate(problem)",
        "async def solve(q):\n\n    # just ask\n    return await generate(q)\n",
        'async def solve(problem):\n    """Direct."""\n    return (await generate(problem))',
    ]
    policy = ScriptedPolicy(variants)
    evaluator = CountingEvaluator()
    search = grow(policy, evaluator, iterations=5, max_invalid_retries=2)
    assert len(evaluator.hashes) == len(set(evaluator.hashes)) == len(search.tree)
    assert len(search.tree) == 6  # seed + 5 children, all from edits
    assert search.stats.duplicates == search.stats.proposals == policy.calls > 0
    assert all(n.origin.startswith("edit:") for n in search.tree.nodes[1:])


def test_invalid_only_policy_still_yields_groups():
    garbage = ["def solve(problem): return 4", "print('hi')", "import os\nos.system('ls')"]
    evaluator = CountingEvaluator()
    search = grow(ScriptedPolicy(garbage), evaluator, iterations=3, policy_samples=2)
    assert len(search.tree) == 4 and search.stats.invalid == search.stats.proposals
    assert len(evaluator.hashes) == len(set(evaluator.hashes)) == 4
    record = trajectory_record(_problem(), search, "arithmetic", "train")
    # seed + 3 edits, then every invalid policy sample at mcts.invalid_reward: the 2 of the
    # training prompt first, then each rejected expansion proposal
    assert record["sources"][:4] == ["seed"] + [n.origin for n in search.tree.nodes[1:]]
    invalid = search.stats.invalid
    assert record["sources"][4:] == ["policy_sample:invalid"] * 2 + ["policy:invalid"] * (
        invalid - 2
    )
    assert record["rewards"][4:] == [-1.0] * invalid and min(record["rewards"][:4]) >= 0
    assert len(record["workflow_codes"]) == len(record["rewards"]) == 4 + invalid
    without = trajectory_record(_problem(), search, "arithmetic", "train", keep_invalid=False)
    assert len(without["workflow_codes"]) == 4


def test_valid_policy_proposals_become_children_with_their_origin():
    proposal = "async def solve(problem):\n    return await programmer(problem)"
    search = grow(ScriptedPolicy([proposal]), CountingEvaluator(), iterations=2)
    origins = [n.origin for n in search.tree.nodes]
    assert origins[:2] == ["seed", "policy"] and search.tree.nodes[1].source == proposal
    assert search.stats.policy_children == 1


PROGRAMMER = "async def solve(problem):\n    return await programmer(problem)"


def test_policy_root_grows_the_tree_from_the_policys_first_valid_workflow():
    # sample 0 invalid, sample 1 the root, sample 2 the seed reformatted (a duplicate)
    samples = [
        "def solve(problem): return 4",
        PROGRAMMER,
        "async def solve(q):\n    return await generate(q)",
    ]
    evaluator = CountingEvaluator(hash_score)
    search = grow(
        ScriptedPolicy(samples), evaluator, policy_samples=3, iterations=4, max_children=8,
        edit_share=1.0, edit_first=["swap_operator", "add_ensemble"], policy_root=True,
        early_stop_perfect=False,
    )  # fmt: skip
    root, nodes = search.tree.root, search.tree.nodes
    assert (root.origin, root.source, root.parent) == ("policy_sample", PROGRAMMER, None)
    assert (nodes[1].origin, nodes[1].parent) == ("seed", 0) and search.tree.seed is nodes[1]
    assert nodes[1].hash == parse_workflow(load_baseline("io")).hash
    # the edits refine the policy's workflow: swap_operator's one new variant (`generate` is
    # the seed already), then the vote over programs
    edits = nodes[2:]
    assert len(edits) == 3 and all(n.parent == 0 for n in edits)
    assert [n.origin for n in edits[:2]] == ["edit:swap_operator", "edit:add_ensemble"]
    assert "answer_generate(problem)" in edits[0].source
    variants = [v for k in EDIT_KINDS for v in edit_variants(PROGRAMMER, k)]
    assert all(n.source in variants for n in edits)
    assert edits[1].source.count("programmer(problem)") == 1 and "range(3)" in edits[1].source
    assert len(evaluator.hashes) == len(set(evaluator.hashes)) == len(nodes) == 5
    assert (search.stats.invalid, search.stats.duplicates, search.stats.proposals) == (1, 1, 3)
    assert [e.origin for e in search.extra_samples] == [
        "policy_sample:invalid",
        "policy_sample:duplicate",
    ]
    assert search.extra_samples[1].node == 1  # the reformatted seed shares the seed's reward
    record = trajectory_record(_problem(), search, "arithmetic", "train", keep_invalid=False)
    assert record["sources"][:2] == ["policy_sample", "seed"] and len(record["rewards"]) == 6


def test_policy_root_of_a_policy_that_writes_the_seed_is_the_seed_tree():
    same = "async def solve(problem):\n    return await generate(problem)"
    trees = {}
    for policy_root in (False, True):
        search = grow(
            ScriptedPolicy([same]), CountingEvaluator(hash_score), policy_samples=2,
            iterations=5, max_children=3, policy_root=policy_root, early_stop_perfect=False,
        )  # fmt: skip
        trees[policy_root] = search
    seeded, rooted = tree_signature(trees[False]), tree_signature(trees[True])
    assert rooted["nodes"][0][2] == "policy_sample" and seeded["nodes"][0][2] == "seed"
    for row in (seeded["nodes"][0], rooted["nodes"][0]):
        row[2] = "root"
    assert rooted["nodes"] == seeded["nodes"] and len(rooted["nodes"]) == 6
    assert trees[True].tree.seed is trees[True].tree.root
    # seed-rooted: both samples repeat the root; policy-rooted: the second repeats the first
    firsts = {k: [e.origin for e in t.extra_samples if e.origin.startswith("policy_sample")]
              for k, t in trees.items()}  # fmt: skip
    assert firsts == {False: ["policy_sample:duplicate"] * 2, True: ["policy_sample:duplicate"]}


def test_policy_root_without_a_valid_sample_roots_at_the_seed():
    garbage = ["def solve(problem): return 4", "print('hi')"]
    search = grow(ScriptedPolicy(garbage), CountingEvaluator(), iterations=2, policy_samples=2,
                  policy_root=True)  # fmt: skip
    assert search.tree.root.origin == "seed" and len(search.tree) == 3
    firsts = [e.origin for e in search.extra_samples if e.origin.startswith("policy_sample")]
    assert firsts == ["policy_sample:invalid"] * 2


def test_early_stop_once_a_workflow_is_perfect():
    perfect = CountingEvaluator(lambda wf: 1.0)
    assert len(grow(None, perfect, iterations=6, parallel_expansions=1).tree) == 2
    # k in flight: those already running when the first perfect one is in finish too
    assert len(grow(None, CountingEvaluator(lambda wf: 1.0), iterations=6).tree) <= 1 + 4
    assert (
        len(
            grow(
                None, CountingEvaluator(lambda wf: 1.0), iterations=6, early_stop_perfect=False
            ).tree
        )
        == 7
    )


def test_uct_expands_the_root_first_then_descends_to_the_best_child():
    # the workflow using `programmer` scores 1, the rest 0; no early stop
    def score(wf):
        return 1.0 if "programmer" in wf.canonical_source else 0.0

    search = grow(
        None, CountingEvaluator(score), iterations=12, max_children=2, early_stop_perfect=False
    )
    root = search.tree.root
    assert len(root.children) == 2
    deeper = [n for n in search.tree.nodes if n.depth == 2]
    assert deeper, "after the root was full, selection descended"
    values = {c: search.tree.nodes[c].value for c in root.children}
    visits = {c: search.tree.nodes[c].visits for c in root.children}
    best, worst = max(values, key=values.get), min(values, key=values.get)
    assert values[best] > values[worst], values  # a `programmer` subtree was found ...
    assert visits[best] > visits[worst], visits  # ... and exploitation went down it
    assert any(n.parent == best for n in deeper), "selection descended into the best child"


def test_aflow_selection_runs_and_respects_max_children():
    search = grow(
        None, CountingEvaluator(lambda wf: 0.5), iterations=6, selection="aflow", max_children=2
    )
    assert len(search.tree) == 7
    assert all(len(n.children) <= 2 for n in search.tree.nodes)


def test_failure_notes_never_hold_the_gold_answer():
    records = [
        Record("p", "12", "42", 0.0, None, "", "h", 0.0),
        Record("p", None, "42", 0.0, "runtime_error", "NameError: x", "h", 0.0),
    ]
    notes = failure_notes(records)
    assert "12" in notes and "runtime_error" in notes and "42" not in notes


def _problem():
    from wfopt.datasets import Problem

    return Problem(id="p1", question="What is 2 + 3?", answer="5", kind="math")


# ------------------------------------------------------------------------ policy format


def test_policy_completion_round_trip():
    completion = "\n    x = await generate(problem)\n    return x\n```\nThat is the workflow."
    workflow = workflow_from_completion(completion)
    assert workflow == RESPONSE_PREFIX + "\n    x = await generate(problem)\n    return x\n"
    parse_workflow(workflow)
    assert policy_response(workflow) == "\n    x = await generate(problem)\n    return x\n"
    # the function ends at the first line back at column 0 (the model goes on writing)
    rambling = "\n    return await generate(problem)\n\ndef generate(problem):\n    pass\n"
    assert workflow_from_completion(rambling) == (
        RESPONSE_PREFIX + "\n    return await generate(problem)\n"
    )
    # indents are the model's own: an inconsistent block stays as written (invalid)
    shifted = "\n     x = await generate(problem)\n    return x\n"
    assert workflow_from_completion(shifted) == RESPONSE_PREFIX + shifted.rstrip() + "\n"
    with pytest.raises(InvalidWorkflow):
        parse_workflow(workflow_from_completion(shifted))
    # another parameter name: re-rendered with the standard header
    assert policy_response("async def solve(q):\n    return await generate(q)") == (
        "\n    return await generate(problem)\n"
    )


# ----------------------------------------------------------------- real model, real runs


def test_concurrent_trees_batch_their_executor_calls(embedded_llm, tmp_path):
    from wfopt.config import DatasetConfig
    from wfopt.datasets import load_dataset
    from wfopt.llm.base import SamplingParams
    from wfopt.search.driver import search_problems

    dataset = load_dataset(OmegaConf.structured(DatasetConfig(num_problems=50)))
    problems = dataset.problems("train")[:3]
    cfg = OmegaConf.create(
        {
            "seed": 0,
            "mcts": OmegaConf.to_container(mcts(iterations=1, rollouts=1, proposer="edits")),
        }
    )
    before = len(embedded_llm.batch_sizes)
    report = asyncio.run(
        search_problems(
            problems,
            dataset=dataset,
            dataset_name="arithmetic",
            split="train",
            executor=embedded_llm,
            params=SamplingParams(temperature=0.7, top_p=0.95, max_new_tokens=24),
            proposer=None,
            cfg=cfg,
            out_path=tmp_path / "t.jsonl",
            show_progress=False,
        )
    )
    sizes = embedded_llm.batch_sizes[before:]
    assert report.problems == 3 and max(sizes) >= 2, sizes
    lines = (tmp_path / "t.jsonl").read_text().splitlines()
    assert sorted(json.loads(line)["problem_id"] for line in lines) == sorted(
        p.id for p in problems
    )


@pytest.fixture
def one_torch_thread():
    """What `wfopt` would pick on these shared 2 cores (runtime.torch_threads): a full pool
    stalls at every OpenMP barrier while other processes hold the cores (several-fold)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _real_search(llm, parallel: int, evaluations: list[str] | None = None):
    """A tree for one arithmetic problem, the embedded model as executor and policy (no
    cache: every call generates); `evaluations` collects the hash of every evaluation."""
    from wfopt.config import DatasetConfig
    from wfopt.datasets import load_dataset
    from wfopt.llm.base import SamplingParams
    from wfopt.search.driver import tree_search
    from wfopt.search.mcts import PolicyProposer

    dataset = load_dataset(OmegaConf.structured(DatasetConfig(num_problems=50)))
    problem = dataset.problems("train")[0]
    m = mcts(
        iterations=3,
        rollouts=1,
        max_invalid_retries=1,
        early_stop_perfect=False,
        parallel_expansions=parallel,
    )
    # (seed 3 drew `async def solve(problem):\n    async def ask_f() : None`, on which
    # parse_policy_workflow raises IndexError instead of InvalidWorkflow: a workflow.py bug)
    proposer = PolicyProposer(llm, SamplingParams(1.0, 0.95, max_new_tokens=32, seed=4))
    params = SamplingParams(temperature=0.7, top_p=0.95, max_new_tokens=24, seed=0)
    search = tree_search(m, problem.question, [problem], dataset, llm, params, proposer)
    if evaluations is not None:
        inner = search.evaluate

        async def recording(workflow):
            evaluations.append(workflow.hash)
            return await inner(workflow)

        search.evaluate = recording
    return search


async def _reference_run(search, seed_source: str, policy_samples: int) -> None:
    """The search loop as it was before parallel expansions (bb8f361): one child at a time,
    UCT without virtual visits."""
    seed = parse_workflow(seed_source)
    root = search.tree.add(seed.hash, seed.source, None, "seed")
    await search._evaluate(root, seed)
    children = await search._sample_children(root, policy_samples)
    await asyncio.gather(*(search._evaluate(node, wf) for node, wf in children))
    evaluated = len(children)
    while evaluated < search.cfg.iterations and not search._done():
        node = _reference_select(search)
        if node is None:
            break
        child = await search.expand(node)
        if child is None:
            node.exhausted = True
            continue
        await search._evaluate(*child)
        evaluated += 1


def _reference_select(search):
    tree, cfg = search.tree, search.cfg
    node = tree.root
    while node.exhausted or len(node.children) >= cfg.max_children:
        children = [tree.nodes[c] for c in node.children]
        children = [c for c in children if tree.is_open(c, cfg.max_children)]
        if not children:
            return None
        values, visits = [c.value for c in children], [c.visits for c in children]
        i = uct_choice(values, visits, node.visits, cfg.exploration)
        node = children[i]
    return node


# slow (52 s): the recorded trees of tests/data/mcts_sequential_trees.json check k=1 by default
@pytest.mark.slow
def test_real_model_one_expansion_at_a_time_is_the_old_loop(embedded_llm, one_torch_thread):
    new, old = _real_search(embedded_llm, 1), _real_search(embedded_llm, 1)
    asyncio.run(new.run(load_baseline("io"), policy_samples=2))
    asyncio.run(_reference_run(old, load_baseline("io"), 2))
    assert tree_signature(new) == tree_signature(old)
    assert new.stats.evaluations == 1 + 3


def test_real_model_parallel_expansions_batch_and_never_repeat(embedded_llm, one_torch_thread):
    from wfopt.llm import batch_counters

    evaluations: list[str] = []
    search = _real_search(embedded_llm, 3, evaluations)
    steps, rows = batch_counters(embedded_llm)
    asyncio.run(search.run(load_baseline("io"), policy_samples=2))
    assert len(evaluations) == len(set(evaluations)) == len(search.tree) == 1 + 3
    # the root's evaluation and the policy's samples share decode steps; so do the tries of
    # one expansion, and the proposals and evaluations of the children in flight
    now = batch_counters(embedded_llm)
    assert (now[1] - rows) / (now[0] - steps) > 1.5


def _search_args(cache: Path, limit: int) -> list[str]:
    return [
        "search",
        f"dataset.limit={limit}",
        "dataset.num_problems=60",
        "mcts.iterations=2",
        "mcts.rollouts=1",
        "mcts.policy_samples=1",
        "mcts.max_invalid_retries=0",
        "mcts.proposal_max_tokens=32",
        "executor.sampling.max_new_tokens=32",
        f"executor.cache_path={cache}",
    ]


def _trajectories(run_dir: Path) -> dict:
    lines = (run_dir / "trajectories.jsonl").read_text().splitlines()
    return {json.loads(line)["problem_id"]: json.loads(line) for line in lines}


def test_search_cli_end_to_end_deterministic_resumable_and_trainable(cli, tmp_path):
    cache = tmp_path / "responses.sqlite"
    first, second = tmp_path / "run1", tmp_path / "run2"
    cli(*_search_args(cache, 2), f"hydra.run.dir={first}")
    cli(*_search_args(cache, 2), f"hydra.run.dir={second}")
    a, b = _trajectories(first), _trajectories(second)
    assert len(a) == 2 and a == b  # seed + cache: identical trajectories
    for record in a.values():
        assert len(record["workflow_codes"]) >= 2 and record["sources"][0] == "seed"
    assert len(list((first / "trees").glob("*.json"))) == 2
    metrics = [json.loads(line) for line in (first / "metrics.jsonl").read_text().splitlines()]
    assert "search/invalid_proposal_rate" in metrics[-1]["summary"]
    assert metrics[-1]["summary"]["search/executor_batch_mean"] >= 1  # the first run generates

    # resume the first run with a bigger budget: only the new problem is searched
    before = (first / "trajectories.jsonl").read_text()
    resumed = [f"resume={first}", "mcts.parallel_expansions=2"]  # (the key, end to end)
    cli(*_search_args(cache, 3), *resumed, f"hydra.run.dir={tmp_path / 'run3'}")
    after = (first / "trajectories.jsonl").read_text()
    assert after.startswith(before) and len(after.splitlines()) == 3

    # the file is what `wfopt train` reads
    result = cli(
        "train",
        f"trajectories={first / 'trajectories.jsonl'}",
        "grpo.max_steps=1",
        "grpo.micro_batch_size=2",
        "hardware.num_threads=1",
        f"hydra.run.dir={tmp_path / 'train'}",
    )
    assert (tmp_path / "train" / "checkpoints").is_dir(), result.stdout


def test_search_cli_rejects_bad_config(cli):
    result = cli("search", "mcts.selection=greedy", expect_ok=False)  # the schema's choice
    assert result.returncode != 0 and "Invalid value 'greedy'" in result.stderr
    assert "full_key: mcts.selection" in result.stderr and "[uct, aflow]" in result.stderr
    result = cli("search", "mcts.rollouts=0", expect_ok=False)  # a range: checked by hand
    assert result.returncode != 0 and "mcts.rollouts=0" in result.stderr


def test_dataset_scope_finds_a_workflow_evaluate_accepts(cli, tmp_path):
    cache = tmp_path / "responses.sqlite"
    run = tmp_path / "dataset"
    cli(
        "search",
        "mcts.scope=dataset",
        "mcts.val_problems=3",
        "mcts.iterations=2",
        "mcts.rollouts=1",
        "mcts.proposer=edits",
        "dataset.num_problems=60",
        "executor.sampling.max_new_tokens=32",
        f"executor.cache_path={cache}",
        f"hydra.run.dir={run}",
    )
    best = run / "best_workflow.py"
    parse_workflow(best.read_text())
    tree = json.loads((run / "tree.json").read_text())
    assert len(tree["nodes"]) == 3
    cli(
        "evaluate",
        f"workflow.path={best}",
        "dataset.limit=2",
        "dataset.num_problems=60",
        "executor.sampling.max_new_tokens=32",
        f"executor.cache_path={cache}",
        f"hydra.run.dir={tmp_path / 'eval'}",
    )


def test_resume_names_the_run_to_continue(tmp_path):
    from wfopt.search.runner import resolve_resume

    here = tmp_path / "this-run"
    assert resolve_resume(None, here) == here
    assert resolve_resume("true", here) == here  # with a fixed hydra.run.dir: its own file
    earlier = tmp_path / "earlier"
    earlier.mkdir()
    with pytest.raises(SearchError, match=r"no trajectories\.jsonl"):
        resolve_resume(str(earlier), here)
    (earlier / "trajectories.jsonl").write_text("")
    assert resolve_resume(str(earlier), here) == earlier


def test_operator_free_policy_samples_are_invalid_not_scored():
    constants = [
        "async def solve(problem):\n    return 5\n",
        "async def solve(p):\n    answer = 5\n",
    ]
    evaluator = CountingEvaluator(lambda wf: 1.0)
    search = grow(ScriptedPolicy(constants), evaluator, iterations=1, policy_samples=2)
    assert search.stats.invalid == search.stats.proposals == len(search.extra_samples)
    record = trajectory_record(_problem(), search, "arithmetic", "train")
    assert record["rewards"][len(search.tree) :] == [-1.0] * search.stats.invalid
    assert all(not n.origin.startswith("policy") for n in search.tree.nodes)
