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
edit (edits.py) when the policy gives nothing new (or, for a share `mcts.edit_share` of
expansions, without asking the policy: a weak policy never proposes some operators), evaluates the child once and backs its
reward up the path. A canonical workflow is never evaluated twice: duplicates are rejected
before evaluation. The tree stops growing after `mcts.iterations` evaluated children, when no
node can be expanded, or (`mcts.early_stop_perfect`) once it holds a perfect workflow.

`mcts.parallel_expansions` = k keeps up to k of those iterations in flight per tree, so their
proposals and executor calls share batches. A slot opens when a child's evaluation is backed
up (or its expansion gave nothing) and is refilled by a fresh selection, which sees every
evaluation still running as a visit at the lowest reward (virtual loss, selection.py) and
never picks a node not evaluated yet or whose child slots are all taken by expansions in
flight. A child enters `tree.by_hash` the moment it is proposed, before its evaluation
starts, so a parallel proposal of the same workflow is a duplicate. The budget counts
evaluations in flight, so exactly `mcts.iterations` children are evaluated; on early stop the
ones running finish. With k > 1 the policy's samples are drawn while the root is evaluated.
`mcts.policy_root` roots the tree at the policy's own workflow instead of the seed (which
becomes a child): the search then refines what the policy writes now.
Proposals are accepted, and results backed up, in launch order (a finished evaluation waits
for the ones launched before it), so the tree does not depend on timing: the response cache
reproduces it. k = 1 is the sequential search, tree for tree
(tests/data/mcts_sequential_trees.json).
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from wfopt.execution import Record, execute
from wfopt.llm.base import LLM, SamplingParams
from wfopt.policy import Parent, PolicySample, sample_policy
from wfopt.search.edits import propose_edit
from wfopt.search.selection import aflow_choice, uct_choice, virtual_mean
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
class Proposal:
    """The policy's tries for one expansion: sample indices first..end-1."""

    first: int
    end: int
    samples: list[PolicySample]


@dataclass
class Outcome:
    """A finished expansion, to be committed: its `child` with its `evaluation`, or no
    child of `parent` could be made."""

    parent: Node | None
    child: Node | None
    evaluation: Evaluation | None = None


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
    # done once the expansion launched last has accepted its child (launch-order acceptance)
    _turn: asyncio.Future[None] | None = field(default=None, repr=False)
    _expansions: int = field(default=0, repr=False)  # launched so far (the edit_share coin)

    def __post_init__(self) -> None:
        # drawn once, before anything else uses rng: edit_share = 0 leaves rng's draws as before
        self._coin_seed = self.rng.random() if self.cfg.edit_share > 0 else 0.0

    async def run(self, seed_source: str, policy_samples: int = 0) -> Tree:
        seed = parse_workflow(seed_source)
        if self.cfg.policy_root and policy_samples and self.proposer is not None:
            children = await self._start_from_policy(seed, policy_samples)
        else:
            root = self.tree.add(seed.hash, seed.source, None, "seed")
            children = await self._start(root, seed, policy_samples)
        await self._grow(children)
        return self.tree

    def _parallel(self) -> int:
        return max(1, int(self.cfg.parallel_expansions))

    async def _start(self, root: Node, seed: Workflow, k: int) -> list[tuple[Node, Workflow]]:
        """Evaluate the root; add `k` policy samples as its first children (not yet evaluated)."""
        if not k or self.proposer is None:
            await self._evaluate(root, seed)
            return []
        if self._parallel() > 1:  # the samples do not need the root's score: one batch
            _, children = await asyncio.gather(
                self._evaluate(root, seed), self._sample_children(root, k)
            )
            return children
        await self._evaluate(root, seed)
        return await self._sample_children(root, k)

    async def _grow(self, initial: list[tuple[Node, Workflow]]) -> None:
        """Evaluate `initial` (all at once), then select, expand and evaluate with up to
        `mcts.parallel_expansions` children in flight, until `mcts.iterations` children
        (`initial` included) are evaluated, nothing is left to expand, or the tree is done.

        Proposals are accepted (and edits drawn) in launch order, before the next selection;
        results are committed (backed up, or the parent marked exhausted) in launch order. So
        the tree does not depend on which call happens to finish first: a rerun from the
        response cache grows the same tree. In-flight work always finishes: a started child
        is never left unevaluated."""
        queue: deque[asyncio.Future[Outcome]] = deque()
        self._turn = None
        for node, workflow in initial:
            self.tree.hold(node, 1)
            queue.append(asyncio.ensure_future(self._evaluated(node, workflow)))
        evaluated = 0
        try:
            while True:
                if self._turn is not None:  # selection sees every child launched so far
                    await self._turn
                self._launch(queue, evaluated)
                if not queue:
                    break
                outcome = await queue[0]
                queue.popleft()
                evaluated += self._commit(outcome)
        finally:  # an error in one task: stop the others
            for task in queue:
                task.cancel()
            await asyncio.gather(*queue, return_exceptions=True)

    def _launch(self, queue: deque[asyncio.Future[Outcome]], evaluated: int) -> None:
        """Start expansions while a slot, budget and an expandable node are left; the budget
        counts those in flight, so exactly `mcts.iterations` children get evaluated."""
        while (
            len(queue) < self._parallel()
            and evaluated + len(queue) < self.cfg.iterations
            and not self._done()
        ):
            node = self.select()
            if node is None:
                return  # all exhausted, or everything open is in flight: wait for it
            node.expanding += 1  # a child slot of `node`, until its child exists
            self.tree.hold(node, 1)
            turn, self._turn = self._turn, asyncio.get_running_loop().create_future()
            queue.append(asyncio.ensure_future(self._expand_child(node, turn, self._turn)))

    async def _expand_child(
        self, node: Node, turn: asyncio.Future[None] | None, mine: asyncio.Future[None]
    ) -> Outcome:
        """Propose a child of `node` (concurrently), accept it once the expansions launched
        before have accepted theirs (`turn`), then evaluate it."""
        try:
            proposal = await self._propose(node)
            if turn is not None:
                await turn
            child = self._choose(node, proposal)
        finally:
            if not mine.done():
                mine.set_result(None)
        if child is None:
            return Outcome(node, None)
        node.expanding -= 1  # the slot is the child's now (so selection sees no change)
        self.tree.hold(node, -1)
        self.tree.hold(child[0], 1)
        return await self._evaluated(*child)

    async def _evaluated(self, node: Node, workflow: Workflow) -> Outcome:
        return Outcome(None, node, await self.evaluate(workflow))

    def _commit(self, outcome: Outcome) -> int:
        """Apply one finished expansion: 1 when a child was evaluated (backed up), 0 when
        none could be made (its parent is exhausted)."""
        if outcome.child is None:
            assert outcome.parent is not None
            outcome.parent.expanding -= 1
            self.tree.hold(outcome.parent, -1)
            outcome.parent.exhausted = True
            return 0
        assert outcome.evaluation is not None
        self.tree.hold(outcome.child, -1)
        self._record(outcome.child, outcome.evaluation)
        return 1

    def _done(self) -> bool:
        best = self.tree.best()
        return bool(self.cfg.early_stop_perfect) and len(self.tree) >= 2 and best.score >= 1.0

    # -- selection ---------------------------------------------------------------------------

    def _expandable(self, node: Node) -> bool:
        """Evaluated (a node gets its first visit from its own evaluation: its score and notes
        go into the proposal prompt), not exhausted, and a child slot not reserved."""
        free = len(node.children) + node.expanding < self.cfg.max_children
        return node.visits > 0 and not node.exhausted and free

    def _open(self, node: Node) -> bool:
        """Can `node` or anything below it be expanded now?"""
        nodes = self.tree.nodes
        return self._expandable(node) or any(self._open(nodes[c]) for c in node.children)

    def _floor(self) -> float:
        """The lowest reward a workflow can get: what an in-flight evaluation counts as."""
        return min(0.0, -float(self.cfg.cost_weight))

    def _in_flight_below(self, node: Node) -> int:
        """Children of `node` being proposed or evaluated (a child's first visit is its own)."""
        waiting = sum(1 for c in node.children if self.tree.nodes[c].visits == 0)
        return node.expanding + waiting

    def select(self) -> Node | None:
        """The node to expand next, or None when nothing can be expanded now (the whole tree
        is exhausted, or every open node waits for an evaluation in flight)."""
        nodes = self.tree.nodes
        floor = self._floor()
        if self.cfg.selection == "aflow":
            candidates = [n for n in nodes if self._expandable(n)]
            if not candidates:
                return None
            scores = [
                virtual_mean(n.reward, 1, self._in_flight_below(n), floor) for n in candidates
            ]
            i = aflow_choice(scores, self.cfg.aflow_lambda, self.cfg.aflow_alpha, self.rng)
            return candidates[i]
        node = self.tree.root
        while not self._expandable(node):
            children = [nodes[c] for c in node.children if self._open(nodes[c])]
            if not children:
                return None
            i = uct_choice(
                [virtual_mean(c.value_sum, c.visits, c.pending, floor) for c in children],
                [c.visits + c.pending for c in children],
                node.visits + node.pending,
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
        return self._choose(node, await self._propose(node))

    async def _propose(self, node: Node) -> Proposal:
        """The policy's tries for a child of `node`, sampled at once (they batch); none
        without a policy, or when this expansion's `edit_share` coin says edit. Their sample
        indices are reserved before the first await, so a parallel expansion of the same node
        samples others."""
        self._expansions += 1
        # the coin depends on the tree's seed and the launch count only, never on timing
        coin = random.Random(f"{self._coin_seed}:{self._expansions}").random()
        if self.proposer is None or coin < float(self.cfg.edit_share):
            return Proposal(node.proposals, node.proposals, [])
        first = node.proposals
        tries = 1 + max(0, int(self.cfg.max_invalid_retries))
        node.proposals = first + tries
        parent = Parent(node.source, node.score, node.notes)
        samples = await asyncio.gather(
            *(self.proposer.sample(self.task, parent, first + i) for i in range(tries))
        )
        return Proposal(first, first + tries, list(samples))

    def _choose(self, node: Node, proposal: Proposal) -> tuple[Node, Workflow] | None:
        """The first usable try in index order, exactly as if they had been tried one after
        another, added to the tree; else a structural edit; None when neither is new."""
        # samples after the accepted one are dropped unseen (by index, not by content), and
        # their indices reused unless a parallel expansion reserved indices after them
        for i, sample in enumerate(proposal.samples):
            self.stats.proposals += 1
            workflow = self._accept(sample, "policy")
            if workflow is not None:
                if node.proposals == proposal.end:
                    node.proposals = proposal.first + i + 1
                self.stats.policy_children += 1
                return self._add_sample_node(workflow, sample, node, "policy"), workflow
        edit = propose_edit(
            node.source,
            set(self.tree.by_hash),
            self.rng,
            self.code_task,
            first=tuple(self.cfg.edit_first),
        )
        if edit is None:
            return None
        kind, workflow = edit
        self.stats.edits += 1
        return self.tree.add(workflow.hash, workflow.source, node, f"edit:{kind}"), workflow

    async def _sample_children(self, root: Node, k: int) -> list[tuple[Node, Workflow]]:
        """The policy's own workflows for the task (training prompt), sampled together, as the
        root's first children (still to be evaluated): the loop's feedback from policy to
        search."""
        return self._add_samples(root, await self._policy_samples(k))

    async def _start_from_policy(self, seed: Workflow, k: int) -> list[tuple[Node, Workflow]]:
        """`mcts.policy_root`: the root is the policy's first valid sample, evaluated; the seed
        and the other samples are its first children (still to be evaluated). The seed is the
        root when no sample is valid. A policy that writes the seed grows the seed's tree."""
        samples = await self._policy_samples(k)
        for i, sample in enumerate(samples):
            try:
                workflow = parse_policy_workflow(sample.code)
            except InvalidWorkflow:
                continue  # counted with the rest below
            root = self._add_sample_node(workflow, sample, None, "policy_sample")
            self.stats.policy_children += 1
            await self._evaluate(root, workflow)
            children = []
            if seed.hash not in self.tree.by_hash:
                children.append((self.tree.add(seed.hash, seed.source, root, "seed"), seed))
            return children + self._add_samples(root, samples[:i] + samples[i + 1 :])
        root = self.tree.add(seed.hash, seed.source, None, "seed")
        await self._evaluate(root, seed)
        return self._add_samples(root, samples)

    async def _policy_samples(self, k: int) -> list[PolicySample]:
        """`k` workflows from the policy's training prompt, sampled together (they batch)."""
        assert self.proposer is not None
        samples = await asyncio.gather(
            *(self.proposer.sample(self.task, None, i) for i in range(k))
        )
        self.stats.proposals += k
        return list(samples)

    def _add_samples(
        self, parent: Node, samples: list[PolicySample]
    ) -> list[tuple[Node, Workflow]]:
        """The valid samples new to the tree as children of `parent`; the others are kept as
        `ExtraSample`s."""
        children = []
        for sample in samples:
            workflow = self._accept(sample, "policy_sample")
            if workflow is not None:
                node = self._add_sample_node(workflow, sample, parent, "policy_sample")
                children.append((node, workflow))
        self.stats.policy_children += len(children)
        return children

    # -- evaluation and backpropagation --------------------------------------------------------

    async def _evaluate(self, node: Node, workflow: Workflow) -> None:
        self._record(node, await self.evaluate(workflow))

    def _record(self, node: Node, evaluation: Evaluation) -> None:
        """Store `node`'s evaluation and back its reward up the path."""
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
