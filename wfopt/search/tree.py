"""The search tree: one node per canonical workflow, with its evaluation and its statistics.

A node's `reward` is its own evaluation (mean score over rollouts, minus the cost penalty);
`visits` / `value_sum` are the MCTS statistics backed up from its whole subtree. Nodes are
keyed by canonical hash, so formatting-only variants of a workflow are one node.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Node:
    id: int
    hash: str
    source: str
    parent: int | None
    origin: str  # seed | policy | policy_sample | edit:<kind>
    depth: int = 0
    reward: float = 0.0  # this workflow's evaluation
    score: float = 0.0  # mean score over rollouts (no cost penalty)
    scores: list[float] = field(default_factory=list)  # one per rollout (or per problem)
    errors: dict[str, int] = field(default_factory=dict)  # error category -> count
    notes: str = ""  # failure summary shown to the policy when expanding this node
    ledger: dict[str, Any] = field(default_factory=dict)  # tokens, llm_calls, cost (summed)
    visits: int = 0
    value_sum: float = 0.0
    children: list[int] = field(default_factory=list)
    proposals: int = 0  # expansion attempts made from this node (policy sample indices)
    exhausted: bool = False  # no new child could be made from it
    # in flight (parallel expansions), 0 once the search is done; never saved: evaluations
    # running in this subtree (virtual visits) and expansions of this node not yet returned
    pending: int = 0
    expanding: int = 0
    # the policy's sample this node came from (origin policy / policy_sample): its exact
    # prompt and completion ids, trained on as they were sampled
    sample: Any = None

    @property
    def value(self) -> float:
        return self.value_sum / self.visits if self.visits else 0.0


UNSAVED = ("sample", "pending", "expanding")  # not in the tree's JSON


class Tree:
    """Nodes in creation order; `by_hash` makes canonical duplicates impossible."""

    def __init__(self) -> None:
        self.nodes: list[Node] = []
        self.by_hash: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self.nodes)

    @property
    def root(self) -> Node:
        return self.nodes[0]

    @property
    def seed(self) -> Node:
        """The seed workflow's node: the root, or (`mcts.policy_root`) a child of the
        policy's workflow; a policy that wrote the seed itself made it the root."""
        return next((n for n in self.nodes if n.origin == "seed"), self.root)

    def add(self, workflow_hash: str, source: str, parent: Node | None, origin: str) -> Node:
        if workflow_hash in self.by_hash:
            raise ValueError(f"workflow {workflow_hash} is already in the tree")
        node = Node(
            id=len(self.nodes),
            hash=workflow_hash,
            source=source,
            parent=None if parent is None else parent.id,
            origin=origin,
            depth=0 if parent is None else parent.depth + 1,
        )
        self.nodes.append(node)
        self.by_hash[workflow_hash] = node.id
        if parent is not None:
            parent.children.append(node.id)
        return node

    def path(self, node: Node) -> list[Node]:
        """Root ... node."""
        path = [node]
        while path[-1].parent is not None:
            path.append(self.nodes[path[-1].parent])
        return path[::-1]

    def backpropagate(self, node: Node, reward: float) -> None:
        """One visit with `reward` for the node and every ancestor."""
        for n in self.path(node):
            n.visits += 1
            n.value_sum += reward

    def best(self) -> Node:
        """Highest own reward; the earliest node on ties (the seed before its variants)."""
        return max(self.nodes, key=lambda n: (n.reward, -n.id))

    def is_open(self, node: Node, max_children: int) -> bool:
        """Can `node` or anything below it still be expanded?"""
        if not node.exhausted and len(node.children) < max_children:
            return True
        return any(self.is_open(self.nodes[c], max_children) for c in node.children)

    def hold(self, node: Node, delta: int) -> None:
        """Add `delta` virtual visits to the node and every ancestor (an evaluation below it
        is in flight, or an expansion of it)."""
        for n in self.path(node):
            n.pending += delta

    def to_json(self) -> dict[str, Any]:
        return {
            "nodes": [
                {**{k: v for k, v in asdict(n).items() if k not in UNSAVED}, "value": n.value}
                for n in self.nodes
            ],
            "edges": [[n.parent, n.id] for n in self.nodes if n.parent is not None],
            "best": self.best().id if self.nodes else None,
        }
