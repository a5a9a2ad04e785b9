"""Monte-Carlo tree search over workflows: select, expand, evaluate, backpropagate.

One implementation serves both scopes; only the evaluator differs:

- problem scope: a workflow's reward is its mean score on one problem over `mcts.rollouts`
  runs (the executor samples, so runs differ);
- dataset scope (AFlow's setting): its mean score over a list of validation problems, each run
  `mcts.rollouts` times.

Both use `dataset_evaluator`, with one problem or many.

reward = mean score - `mcts.cost_weight` * min(1, mean tokens per run / `mcts.cost_scale_tokens`).

Each iteration selects a node (UCT descent or AFlow's rule, see selection.py), asks the policy
for a child (a prompt with the node's code, score and failure notes; `max_invalid_retries`
extra samples when a proposal is invalid or already in the tree), falls back to a structural
edit (edits.py) when the policy gives nothing new, evaluates the child once and backs its
reward up the path. A canonical workflow is never evaluated twice: duplicates are rejected
before evaluation. The tree stops growing after `mcts.iterations` evaluated children, when no
node can be expanded, or (`mcts.early_stop_perfect`) once it holds a perfect workflow.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from wfopt.evaluate import Record, execute
from wfopt.llm.base import LLM, SamplingParams
from wfopt.policy import Parent, PolicySample, sample_policy
from wfopt.search.edits import propose_edit
from wfopt.search.selection import aflow_choice, uct_choice
from wfopt.search.tree import Node, Tree
from wfopt.workflow import InvalidWorkflow, Workflow, parse_policy_workflow, parse_workflow

ROLLOUT_STRIDE = 1000  # sample-index offset between rollouts: their executor samples differ


@dataclass
class Evaluation:
    scores: list[float]
    records: list[Record]


Evaluator = Callable[[Workflow], Awaitable[Evaluation]]


@dataclass
class SearchStats:
    """Counts over one or many trees (they add up)."""

    proposals: int = 0  # policy samples asked for
    invalid: int = 0  # rejected by the validator
    duplicates: int = 0  # valid but already in the tree
    edits: int = 0  # children made by structural edits
    policy_children: int = 0  # children the policy wrote (expansions and first samples)
    evaluations: int = 0  # workflows evaluated (each once)
    runs: int = 0  # workflow executions (evaluations x rollouts x problems)

    def add(self, other: SearchStats) -> None:
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))


def cost_penalized_reward(
    score: float, mean_tokens: float, cost_weight: float, cost_scale_tokens: float
) -> float:
    """score - cost_weight * min(1, mean_tokens / cost_scale_tokens)."""
    if cost_weight == 0:
        return score
    return score - cost_weight * min(1.0, mean_tokens / max(cost_scale_tokens, 1.0))


def merge_ledgers(ledgers: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Sum of `Ledger.summary()` dicts; cost None when any run's price is unknown."""
    total: dict[str, Any] = Counter()
    operators: Counter[str] = Counter()
    cost: float | None = 0.0
    for ledger in ledgers:
        for key in ("operator_calls", "llm_calls", "prompt_tokens", "completion_tokens"):
            total[key] += ledger.get(key, 0)
        total["cached_calls"] += ledger.get("cached_calls", 0)
        operators.update(ledger.get("operators", {}))
        run_cost = ledger.get("cost_usd")
        cost = None if cost is None or run_cost is None else cost + run_cost
    return {**total, "cost_usd": cost, "operators": dict(operators), "runs": len(ledgers)}


def failure_notes(records: Sequence[Record], limit: int = 300) -> str:
    """What went wrong, for the policy's next proposal: error categories and wrong answers,
    never the gold answer."""
    if not records:
        return ""
    if len(records) <= 4:  # one problem: say what each run did
        notes = []
        for r in records:
            if r.error:
                notes.append(f"{r.error}: {r.detail[:80]}")
            elif r.score < 1:
                notes.append(f"answered {(r.prediction or '')[:60]!r} (wrong)")
        text = "; ".join(dict.fromkeys(notes)) or "all runs correct"
    else:
        wrong = sum(1 for r in records if r.score < 1)
        errors = Counter(r.error for r in records if r.error)
        parts = [f"{wrong}/{len(records)} runs wrong"]
        parts += [f"{category} x{count}" for category, count in errors.most_common(3)]
        text = "; ".join(parts)
    return text[:limit]


def dataset_evaluator(
    problems: Sequence[Any],
    dataset: Any,
    llm: LLM,
    params: SamplingParams,
    *,
    rollouts: int,
    max_operator_calls: int,
    timeout_s: float,
    concurrency: int = 16,
) -> Evaluator:
    """A workflow's score on `problems` (one problem in problem scope, the validation problems
    in dataset scope): every problem run `rollouts` times, concurrently up to `concurrency`;
    one score per problem, the mean over its rollouts (which use different executor samples)."""
    semaphore = asyncio.Semaphore(max(1, concurrency))

    async def run(workflow: Workflow, problem: Any, rollout: int) -> Record:
        async with semaphore:
            return await execute(
                workflow,
                problem,
                dataset,
                llm,
                params,
                max_operator_calls=max_operator_calls,
                timeout_s=timeout_s,
                sample_offset=rollout * ROLLOUT_STRIDE,
            )

    async def evaluate(workflow: Workflow) -> Evaluation:
        jobs = [(p, r) for p in problems for r in range(rollouts)]
        records = await asyncio.gather(*(run(workflow, p, r) for p, r in jobs))
        scores = [
            sum(rec.score for rec in records[i * rollouts : (i + 1) * rollouts]) / rollouts
            for i in range(len(problems))
        ]
        return Evaluation(scores, list(records))

    return evaluate


class PolicyProposer:
    """Samples workflows from the policy LLM with the shared prompt builder (policy.py).

    `llm` must offer `complete_text` (a local model, possibly behind the response cache); its
    chat template is used when the backend uses one.
    """

    def __init__(self, llm: Any, params: SamplingParams, kind: str = "math") -> None:
        self.llm = llm
        self.params = params
        self.kind = kind  # the problems' kind: which operators the prompt lists

    async def sample(self, task: str, parent: Parent | None, sample_index: int) -> PolicySample:
        return await sample_policy(self.llm, task, self.params, sample_index, parent, self.kind)


@dataclass
class ExtraSample:
    """A policy sample that made no node of its own: invalid code (`node` None), or a
    workflow already in the tree (`node`: that node, whose evaluation it shares). Each is
    still a draw from the policy, so it joins the problem's group for on-policy training."""

    sample: PolicySample
    origin: str  # policy_sample:invalid | policy_sample:duplicate | policy:invalid | ...
    node: int | None
    reason: str = ""


@dataclass
class TreeSearch:
    """Grows one tree. `cfg` is an `MCTSConfig`; `task` is the text the policy sees."""

    task: str
    evaluate: Evaluator
    cfg: Any
    proposer: PolicyProposer | None = None
    rng: random.Random = field(default_factory=random.Random)
    code_task: bool = False
    task_id: str | int = ""  # the problem's id (for reports)
    tree: Tree = field(default_factory=Tree)
    stats: SearchStats = field(default_factory=SearchStats)
    # the policy's samples that made no node: invalid ones and duplicates (see ExtraSample)
    extra_samples: list[ExtraSample] = field(default_factory=list)

    async def run(self, seed_source: str, policy_samples: int = 0) -> Tree:
        seed = parse_workflow(seed_source)
        root = self.tree.add(seed.hash, seed.source, None, "seed")
        await self._evaluate(root, seed)
        evaluated = 0
        if policy_samples and self.proposer is not None:
            evaluated += await self._policy_samples(root, policy_samples)
        while evaluated < self.cfg.iterations and not self._done():
            node = self.select()
            if node is None:
                break  # every node is exhausted or full
            child = await self.expand(node)
            if child is None:
                node.exhausted = True
                continue
            await self._evaluate(*child)
            evaluated += 1
        return self.tree

    def _done(self) -> bool:
        best = self.tree.best()
        return bool(self.cfg.early_stop_perfect) and len(self.tree) >= 2 and best.score >= 1.0

    # -- selection ---------------------------------------------------------------------------

    def _expandable(self, node: Node) -> bool:
        return not node.exhausted and len(node.children) < self.cfg.max_children

    def select(self) -> Node | None:
        """The node to expand next, or None when the whole tree is exhausted."""
        nodes = self.tree.nodes
        if self.cfg.selection == "aflow":
            candidates = [n for n in nodes if self._expandable(n)]
            if not candidates:
                return None
            scores = [n.reward for n in candidates]
            i = aflow_choice(scores, self.cfg.aflow_lambda, self.cfg.aflow_alpha, self.rng)
            return candidates[i]
        node = self.tree.root
        while not self._expandable(node):
            children = [nodes[c] for c in node.children]
            children = [c for c in children if self.tree.is_open(c, self.cfg.max_children)]
            if not children:
                return None
            i = uct_choice(
                [c.value for c in children],
                [c.visits for c in children],
                node.visits,
                self.cfg.exploration,
            )
            node = children[i]
        return node

    # -- expansion ---------------------------------------------------------------------------

    def _accept(self, sample: PolicySample, origin: str) -> Workflow | None:
        """The workflow of a policy sample if it is valid and new to the tree; otherwise the
        sample is counted and kept as an `ExtraSample` of `origin`."""
        try:
            workflow = parse_policy_workflow(sample.code)
        except InvalidWorkflow as err:
            self.stats.invalid += 1
            self.extra_samples.append(ExtraSample(sample, f"{origin}:invalid", None, str(err)))
            return None
        if workflow.hash in self.tree.by_hash:
            self.stats.duplicates += 1
            node = self.tree.by_hash[workflow.hash]
            self.extra_samples.append(ExtraSample(sample, f"{origin}:duplicate", node))
            return None
        return workflow

    def _add_sample_node(
        self, workflow: Workflow, sample: PolicySample, parent: Node, origin: str
    ) -> Node:
        node = self.tree.add(workflow.hash, sample.code, parent, origin)
        node.sample = sample
        return node

    async def expand(self, node: Node) -> tuple[Node, Workflow] | None:
        """A new child of `node`: the policy's first usable proposal, else a structural edit."""
        if self.proposer is not None:
            # all tries are sampled at once (they batch); the first usable one in index order
            # wins, exactly as if they had been tried one after another
            first = node.proposals
            tries = 1 + max(0, int(self.cfg.max_invalid_retries))
            parent = Parent(node.source, node.score, node.notes)
            samples = await asyncio.gather(
                *(self.proposer.sample(self.task, parent, first + i) for i in range(tries))
            )
            # samples after the accepted one are dropped unseen (by index, not by content)
            for i, sample in enumerate(samples):
                self.stats.proposals += 1
                workflow = self._accept(sample, "policy")
                if workflow is not None:
                    node.proposals = first + i + 1
                    self.stats.policy_children += 1
                    return self._add_sample_node(workflow, sample, node, "policy"), workflow
            node.proposals = first + tries
        edit = propose_edit(node.source, set(self.tree.by_hash), self.rng, self.code_task)
        if edit is None:
            return None
        kind, workflow = edit
        self.stats.edits += 1
        return self.tree.add(workflow.hash, workflow.source, node, f"edit:{kind}"), workflow

    async def _policy_samples(self, root: Node, k: int) -> int:
        """The policy's own workflows for the task (training prompt), as the root's first
        children: the loop's feedback from policy to search. Returns how many were added."""
        assert self.proposer is not None
        samples = await asyncio.gather(
            *(self.proposer.sample(self.task, None, i) for i in range(k))
        )
        self.stats.proposals += k
        children = []
        for sample in samples:
            workflow = self._accept(sample, "policy_sample")
            if workflow is not None:
                node = self._add_sample_node(workflow, sample, root, "policy_sample")
                children.append((node, workflow))
        self.stats.policy_children += len(children)
        await asyncio.gather(*(self._evaluate(node, wf) for node, wf in children))
        return len(children)

    # -- evaluation and backpropagation --------------------------------------------------------

    async def _evaluate(self, node: Node, workflow: Workflow) -> None:
        evaluation = await self.evaluate(workflow)
        records = evaluation.records
        node.scores = evaluation.scores
        node.score = sum(node.scores) / len(node.scores) if node.scores else 0.0
        node.ledger = merge_ledgers([r.ledger for r in records])
        node.errors = dict(Counter(r.error for r in records if r.error))
        node.notes = failure_notes(records)
        tokens = node.ledger.get("prompt_tokens", 0) + node.ledger.get("completion_tokens", 0)
        mean_tokens = tokens / max(len(records), 1)
        node.reward = cost_penalized_reward(
            node.score, mean_tokens, self.cfg.cost_weight, self.cfg.cost_scale_tokens
        )
        self.stats.evaluations += 1
        self.stats.runs += len(records)
        self.tree.backpropagate(node, node.reward)
