"""What a problem-scope search did, for the console, the metrics and the loop: `SearchReport`
(per-tree numbers summed into `search/*` metrics and a table), and the executor's batching
during a search (`batches_since`, `batch_metrics`)."""

from __future__ import annotations

import statistics
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from wfopt.llm import batch_counters
from wfopt.search.mcts import SearchStats, TreeSearch
from wfopt.stats import wilson_interval
from wfopt.workflow import operators_used


def batches_since(llm: Any, start: tuple[int, int] | None) -> tuple[int, int] | None:
    """(decode steps, rows) of the executor since `start` (its `batch_counters` then)."""
    now = batch_counters(llm)
    if now is None or start is None:
        return None
    return now[0] - start[0], now[1] - start[1]


def batch_metrics(batches: tuple[int, int] | None) -> dict[str, Any]:
    """search/executor_*: decode steps and mean rows per step (nothing for openai)."""
    if not batches or not batches[0]:
        return {}
    steps, rows = batches
    return {"search/executor_decode_steps": steps, "search/executor_batch_mean": rows / steps}


@dataclass
class SearchReport:
    """What a problem-scope search did, for the console, metrics and the loop."""

    problems: int = 0
    best_rewards: list[float] = field(default_factory=list)
    best_scores: list[float] = field(default_factory=list)
    seed_scores: list[float] = field(default_factory=list)
    tree_sizes: list[int] = field(default_factory=list)
    stats: SearchStats = field(default_factory=SearchStats)
    operators: Counter[str] = field(default_factory=Counter)  # trees whose workflows use each
    origins: Counter[str] = field(default_factory=Counter)
    llm_calls: int = 0
    tokens: int = 0
    cost_usd: float | None = 0.0
    wall_time_s: float = 0.0
    # the executor's (decode steps, rows) during the search; None: it does not batch
    batches: tuple[int, int] | None = None
    # per problem: (id, seed score, best score, best reward, workflows, best node's origin)
    per_problem: list[tuple[str, float, float, float, int, str]] = field(default_factory=list)
    # per tree: evaluations up to its first workflow scoring 1 (the seed is 1), None: none did
    first_solve: list[int | None] = field(default_factory=list)

    def add(self, search: TreeSearch) -> None:
        tree = search.tree
        self.problems += 1
        best = tree.best()
        self.best_rewards.append(best.reward)
        self.best_scores.append(best.score)
        self.seed_scores.append(tree.seed.score)
        self.tree_sizes.append(len(tree))
        self.per_problem.append(
            (str(search.task_id), tree.seed.score, best.score, best.reward, len(tree), best.origin)
        )
        self.stats.add(search.stats)
        solving = (i + 1 for i, node in enumerate(tree.nodes) if node.score >= 1.0)
        self.first_solve.append(next(solving, None))
        used: set[str] = set()
        for node in tree.nodes:
            used |= operators_used(node.source)
            self.origins[node.origin.split(":")[0]] += 1
            self.llm_calls += node.ledger.get("llm_calls", 0)
            self.tokens += node.ledger.get("prompt_tokens", 0) + node.ledger.get(
                "completion_tokens", 0
            )
            cost = node.ledger.get("cost_usd")
            self.cost_usd = None if self.cost_usd is None or cost is None else self.cost_usd + cost
        self.operators.update(used)

    def metrics(self) -> dict[str, Any]:
        n = max(self.problems, 1)
        stats = self.stats
        solved = sum(s >= 1.0 for s in self.best_scores)
        seed_solved = sum(s >= 1.0 for s in self.seed_scores)
        metrics: dict[str, Any] = {
            "search/problems": self.problems,
            "search/best_reward_mean": sum(self.best_rewards) / n,
            "search/solved_fraction": solved / n,
            "search/seed_solved_fraction": seed_solved / n,
            "search/unique_workflows_mean": sum(self.tree_sizes) / n,
            "search/evaluations": stats.evaluations,
            "search/workflow_runs": stats.runs,
            "search/proposals": stats.proposals,
            "search/invalid_proposal_rate": stats.invalid / stats.proposals
            if stats.proposals
            else 0.0,
            "search/duplicate_proposal_rate": (
                stats.duplicates / stats.proposals if stats.proposals else 0.0
            ),
            "search/policy_children": stats.policy_children,
            "search/edit_children": stats.edits,
            "search/llm_calls": self.llm_calls,
            "search/tokens": self.tokens,
            "search/wall_time_s": self.wall_time_s,
            "search/evaluations_per_min": (
                stats.evaluations / self.wall_time_s * 60 if self.wall_time_s else 0.0
            ),
        }
        firsts = [f for f in self.first_solve if f is not None]
        if firsts:  # mean over the solved trees
            metrics["search/evaluations_to_first_solve"] = statistics.mean(firsts)
        if self.cost_usd is not None:
            metrics["search/cost_usd"] = self.cost_usd
        metrics.update(batch_metrics(self.batches))
        for name, count in self.operators.items():
            metrics[f"search/operator_use/{name}"] = count / n
        return metrics

    def print(self, title: str) -> None:
        from rich.console import Console
        from rich.table import Table

        m = self.metrics()
        n = self.problems
        table = Table(title=title, show_header=False)
        table.add_column("", style="bold")
        table.add_column("", justify="right")
        solved = round(m["search/solved_fraction"] * n)
        seed = round(m["search/seed_solved_fraction"] * n)
        for label, (k, total) in (
            ("solved by the tree's best", (solved, n)),
            ("solved by the seed", (seed, n)),
        ):
            low, high = wilson_interval(k, total)
            table.add_row(label, f"{k}/{total} [{low:.2f}, {high:.2f}]")
        table.add_row("mean best reward", f"{m['search/best_reward_mean']:.3f}")
        table.add_row("unique workflows per tree", f"{m['search/unique_workflows_mean']:.1f}")
        table.add_row(
            "policy proposals (invalid, duplicate)",
            f"{self.stats.proposals} ({m['search/invalid_proposal_rate']:.0%}, "
            f"{m['search/duplicate_proposal_rate']:.0%})",
        )
        table.add_row(
            "children by origin",
            ", ".join(f"{k}={v}" for k, v in sorted(self.origins.items())) or "-",
        )
        table.add_row(
            "operator use (share of trees)",
            ", ".join(f"{k} {v / max(n, 1):.0%}" for k, v in self.operators.most_common()) or "-",
        )
        table.add_row("evaluations (runs)", f"{self.stats.evaluations} ({self.stats.runs})")
        table.add_row("LLM calls / tokens", f"{self.llm_calls} / {self.tokens}")
        if "search/executor_batch_mean" in m:
            table.add_row(
                "executor decode steps (mean rows)",
                f"{m['search/executor_decode_steps']} ({m['search/executor_batch_mean']:.1f})",
            )
        cost = "unknown" if self.cost_usd is None else f"${self.cost_usd:.4f}"
        table.add_row("cost", cost)
        table.add_row(
            "wall time",
            f"{self.wall_time_s:.1f}s ({m['search/evaluations_per_min']:.1f} evals/min)",
        )
        Console().print(table)
