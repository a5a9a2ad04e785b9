"""`wfopt search`: grow trees for many problems at once and write what GRPO trains on.

Problem scope: one tree per problem of `dataset.split` (train by default), `mcts.concurrency`
trees at a time so their executor calls batch together. Each finished tree is appended to
`trajectories.jsonl` as one line and flushed, so a killed search loses at most the problems in
flight; `resume=...` skips the problems already in the file. Each tree is also dumped to
`trees/<problem_id>.json` (nodes, edges, values).

Dataset scope: one tree whose rewards are validation accuracies; the best workflow is written
to `best_workflow.py` for `wfopt evaluate workflow.path=...` on the test split.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import re
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from wfopt.console import progress_bar
from wfopt.errors import InfrastructureError
from wfopt.llm import batch_counters
from wfopt.llm.base import SamplingParams
from wfopt.runtime import check_writable, run_dir_error, write_atomic
from wfopt.search.edits import EDIT_KINDS
from wfopt.search.mcts import (
    PolicyProposer,
    SearchStats,
    TreeSearch,
    dataset_evaluator,
)
from wfopt.search.tree import Tree
from wfopt.stats import wilson_interval
from wfopt.trajectory import Trajectory
from wfopt.workflow import operators_used

log = logging.getLogger(__name__)

TRAJECTORIES = "trajectories.jsonl"


class SearchError(RuntimeError):
    """A search that cannot start or continue (bad config, unreadable resume file)."""


# ----------------------------------------------------------------------------- output files


def trajectory_record(
    problem: Any, search: TreeSearch, dataset: str, split: str, keep_invalid: bool = True
) -> dict[str, Any]:
    """One problem's group (`wfopt.trajectory.Trajectory`, the schema `wfopt train` reads):
    every tree node, then every policy sample that made no node of its own: duplicates at the
    reward of the node they repeat, and (`keep_invalid`) invalid ones at
    `mcts.invalid_reward` (GRPO then pushes the policy away from invalid code). Policy samples
    carry their exact prompt and completion ids."""
    invalid_reward = float(search.cfg.invalid_reward)
    # one row per workflow: (code, origin, policy sample or None, evaluation numbers)
    rows: list[tuple[str, str, Any, dict[str, Any]]] = []
    for n in search.tree.nodes:
        runs = max(n.ledger.get("runs", 1), 1)
        cost = n.ledger.get("cost_usd")
        tokens = n.ledger.get("prompt_tokens", 0) + n.ledger.get("completion_tokens", 0)
        evaluation = {
            "rewards": n.reward,
            "scores": n.score,
            "costs": None if cost is None else cost / runs,  # mean USD per run
            "tokens": tokens / runs,
            "hashes": n.hash,
            "parents": n.parent,
        }
        rows.append((n.source, n.origin, n.sample, evaluation))
    invalid = {"rewards": invalid_reward, "scores": 0.0, "costs": 0.0, "tokens": 0}
    for extra in search.extra_samples:
        if extra.node is not None:  # a duplicate shares its node's evaluation
            rows.append((extra.sample.code, extra.origin, extra.sample, rows[extra.node][3]))
        elif keep_invalid:
            evaluation = {**invalid, "hashes": None, "parents": None}
            rows.append((extra.sample.code, extra.origin, extra.sample, evaluation))
    samples = [sample for _, _, sample, _ in rows]
    report_only = ("scores", "costs", "tokens", "hashes", "parents")
    return Trajectory(
        problem=problem.question,
        problem_id=problem.id,
        workflow_codes=[code for code, _, _, _ in rows],
        rewards=[evaluation["rewards"] for _, _, _, evaluation in rows],
        sources=[origin for _, origin, _, _ in rows],
        prompt_ids=[None if s is None else s.prompt_ids for s in samples],
        completion_ids=[None if s is None else s.completion_ids for s in samples],
        stopped=[None if s is None else s.stopped for s in samples],
        extra={
            **{key: [evaluation[key] for *_, evaluation in rows] for key in report_only},
            "dataset": dataset,
            "split": split,
            "kind": problem.kind,  # which operators the policy's prompt lists
        },
    ).to_json()


def finished_problem_ids(path: Path) -> set[str]:
    """Problem ids already in a trajectories file.

    A torn last line (the process was killed mid-write) is cut off with a warning; any other
    unreadable line is an error, because silently dropping finished work would lose it.
    """
    if not path.exists():
        return set()
    lines = path.read_bytes().split(b"\n")
    done: set[str] = set()
    good_bytes = 0
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            good_bytes += len(line) + 1
            continue
        try:
            record = json.loads(line)
            done.add(str(record["problem_id"]))
        except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as err:
            if number < len(lines) - 1 or (number == len(lines) - 1 and lines[-1]):
                raise SearchError(f"{path}:{number}: unreadable trajectory line ({err})") from None
            log.warning(
                "%s:%d: dropping a torn last line (the previous run was killed)", path, number
            )
            with path.open("r+b") as f:
                f.truncate(good_bytes)
            break
        good_bytes += len(line) + 1
    return done


def safe_name(problem_id: Any) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(problem_id))[:100] or "problem"


# ------------------------------------------------------------------------------ summaries


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
        self.seed_scores.append(tree.root.score)
        self.tree_sizes.append(len(tree))
        self.per_problem.append(
            (str(search.task_id), tree.root.score, best.score, best.reward, len(tree), best.origin)
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


# ------------------------------------------------------------------------------- searching


def seed_source(cfg_mcts: Any, code_task: bool) -> str:
    from wfopt.baselines import load_baseline

    name = cfg_mcts.seed_workflow
    if name == "auto":
        name = "code_io" if code_task else "io"
    return load_baseline(name)


def check_mcts_config(m: Any) -> None:
    """Ranges the schema's types cannot express (its Enums already limit scope, selection
    and proposer to their choices)."""
    problems = []
    for key in ("iterations", "max_invalid_retries", "policy_samples"):
        if m[key] < 0:
            problems.append(f"mcts.{key}={m[key]} (must be >= 0)")
    for key in ("max_children", "rollouts", "concurrency", "parallel_expansions"):
        if m[key] < 1:
            problems.append(f"mcts.{key}={m[key]} (must be >= 1)")
    for key in ("aflow_lambda", "edit_share"):
        if not 0 <= m[key] <= 1:
            problems.append(f"mcts.{key}={m[key]} (must be in [0, 1])")
    unknown = [k for k in m.edit_first if k not in EDIT_KINDS]
    if unknown:
        problems.append(
            f"mcts.edit_first={list(m.edit_first)} ({unknown}: not an edit kind of {list(EDIT_KINDS)})"
        )
    if problems:
        raise SearchError("invalid search config: " + "; ".join(problems))


def dataset_task(name: str, problems: list[Any]) -> str:
    """What the policy sees in dataset scope: three example questions (never answers)."""
    examples = "\n".join(f"- {p.question.strip()[:300]}" for p in problems[:3])
    return f"Problems like these ({name}):\n{examples}"


def tree_search(
    m: Any,
    task: str,
    problems: list[Any],
    dataset: Any,
    executor: Any,
    params: SamplingParams,
    proposer: PolicyProposer | None,
    *,
    task_id: str | int = "dataset",
    seed: int = 0,
) -> TreeSearch:
    """A tree for `task` whose workflows are scored on `problems` (`m` = the mcts config):
    one problem in problem scope, the validation problems in dataset scope."""
    return TreeSearch(
        task=task,
        task_id=task_id,
        evaluate=dataset_evaluator(
            problems,
            dataset,
            executor,
            params,
            rollouts=m.rollouts,
            max_operator_calls=m.max_operator_calls,
            timeout_s=m.timeout_s,
            # every run of the evaluations a tree has in flight at once
            concurrency=min(len(problems), m.concurrency) * m.rollouts * m.parallel_expansions,
        ),
        cfg=m,
        proposer=proposer,
        rng=random.Random(f"{seed}:{task_id}"),
        code_task=problems[0].kind == "code",
    )


async def search_problems(
    problems: list[Any],
    *,
    dataset: Any,
    dataset_name: str,
    split: str,
    executor: Any,
    params: SamplingParams,
    proposer: PolicyProposer | None,
    cfg: DictConfig,
    out_path: Path,
    trees_dir: Path | None = None,
    tracker: Any = None,
    step_offset: int = 0,
    show_progress: bool = True,
) -> SearchReport:
    """Search every problem (a tree each), appending one trajectory line per finished tree.

    Shared by `wfopt search` and `wfopt loop`. Trees run `mcts.concurrency` at a time; lines
    are written in completion order and flushed at once.
    """
    m = cfg.mcts
    report = SearchReport()
    semaphore = asyncio.Semaphore(m.concurrency)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    if trees_dir is not None:
        trees_dir.mkdir(parents=True, exist_ok=True)
    progress = progress_bar("solved {task.fields[solved]}", show_progress)
    first_batch = batch_counters(executor)
    start = time.perf_counter()

    async def one(problem: Any, out: Any) -> None:
        code_task = problem.kind == "code"
        search = tree_search(
            m, problem.question, [problem], dataset, executor, params, proposer,
            task_id=problem.id, seed=cfg.seed,
        )  # fmt: skip
        async with semaphore:
            await search.run(seed_source(m, code_task), m.policy_samples)
        record = trajectory_record(
            problem, search, dataset_name, split, keep_invalid=m.keep_invalid_samples
        )
        try:  # a partial last line is dropped on resume (finished_problem_ids)
            out.write(json.dumps(record) + "\n")
            out.flush()
        except OSError as err:
            raise run_dir_error(out_path, err) from err
        if trees_dir is not None:
            write_atomic(
                trees_dir / f"{safe_name(problem.id)}.json",
                json.dumps(search.tree.to_json(), indent=1),
            )
        report.add(search)
        report.wall_time_s = time.perf_counter() - start
        if tracker is not None:
            best = search.tree.best()
            tracker.log(
                {
                    "search/tree_best_reward": best.reward,
                    "search/tree_seed_score": search.tree.root.score,
                    "search/tree_size": len(search.tree),
                    "search/tree_rewards": [n.reward for n in search.tree.nodes],
                },
                step=step_offset + report.problems,
            )
        solved = sum(s >= 1.0 for s in report.best_scores)
        progress.update(task, advance=1, solved=f"{solved}/{report.problems}")

    with progress, out_path.open("a", encoding="utf-8") as out:
        task = progress.add_task(
            f"search {dataset_name}/{split}", total=len(problems), solved="0/0"
        )
        await asyncio.gather(*(one(p, out) for p in problems))
    report.wall_time_s = time.perf_counter() - start
    report.batches = batches_since(executor, first_batch)
    return report


def policy_proposer(
    cfg: DictConfig, policy: Any, executor: Any = None, kind: str = "math"
) -> PolicyProposer:
    """Proposals from the local `policy`, through the response cache when enabled (reusing the
    executor's cache when the executor is that very model)."""
    from wfopt.llm import CachedLLM

    if isinstance(executor, CachedLLM) and executor.inner is policy:
        llm: Any = executor
    elif cfg.executor.cache:
        llm = CachedLLM(policy, cfg.executor.cache_path)
    else:
        llm = policy
    params = SamplingParams(
        temperature=float(cfg.mcts.proposal_temperature),
        top_p=0.95,
        max_new_tokens=int(cfg.mcts.proposal_max_tokens),
        seed=int(cfg.seed),
    )
    return PolicyProposer(llm, params, kind)


def build_search_llms(
    cfg: DictConfig, policy: Any = None, kind: str = "math"
) -> tuple[Any, PolicyProposer | None]:
    """(executor, proposer): the executor per `executor.backend`, and the policy proposer when
    `mcts.proposer=policy` (prompting with the operators of `kind` problems). `policy`: an
    already loaded `LocalLLM` to reuse."""
    from wfopt.llm import build_executor
    from wfopt.llm.local import LocalLLM

    needs_policy = cfg.mcts.proposer == "policy" or cfg.executor.backend != "openai"
    if policy is None and needs_policy:
        policy = LocalLLM.from_config(cfg.model, cfg.hardware)
    executor = build_executor(cfg.model, cfg.executor, cfg.hardware, shared_local=policy)
    if cfg.mcts.proposer != "policy":
        return executor, None
    return executor, policy_proposer(cfg, policy, executor, kind)


def resolve_resume(resume: str | None, run_dir: Path) -> Path:
    """The directory whose trajectories file this run continues."""
    if resume is None or str(resume).lower() in ("false", "none", ""):
        return run_dir
    if str(resume).lower() == "true":
        return run_dir
    from hydra.utils import to_absolute_path

    path = Path(to_absolute_path(str(resume)))
    if not (path / TRAJECTORIES).is_file():
        raise SearchError(f"resume={resume}: no {TRAJECTORIES} in {path}")
    return path


def run(cfg: DictConfig) -> float:
    """Hydra entry point of `wfopt search`; returns the mean best reward (or best accuracy)."""
    from hydra.core.hydra_config import HydraConfig

    from wfopt.datasets import DatasetError, load_dataset
    from wfopt.llm import executor_metrics, sampling_params
    from wfopt.runtime import setup_runtime
    from wfopt.tracking import Tracker

    setup_runtime(cfg)
    try:
        check_mcts_config(cfg.mcts)
        run_dir = resolve_resume(cfg.resume, Path(HydraConfig.get().runtime.output_dir))
        check_writable(run_dir)
        dataset = load_dataset(cfg.dataset)
    except (SearchError, DatasetError, InfrastructureError, FileNotFoundError, KeyError) as err:
        raise SystemExit(f"wfopt search: {err}") from None
    tracker = Tracker(
        run_dir, cfg.tracking, OmegaConf.to_container(cfg, resolve=True), job_type="search"
    )
    params = sampling_params(cfg.executor.sampling)
    executor, proposer = build_search_llms(cfg, kind=dataset.kind)

    if cfg.mcts.scope == "dataset":
        try:
            return _run_dataset_scope(cfg, run_dir, dataset, executor, params, proposer, tracker)
        except InfrastructureError as err:
            tracker.finish()
            raise SystemExit(
                f"wfopt search: {err.describe()}\nNothing was written; run it again."
            ) from None

    out_path = run_dir / TRAJECTORIES
    try:
        done = finished_problem_ids(out_path)
    except SearchError as err:
        raise SystemExit(f"wfopt search: {err}") from None
    split = cfg.dataset.split
    problems = [p for p in dataset.problems(split) if str(p.id) not in done]
    if done:
        log.info("resuming %s: %d problems already searched", out_path, len(done))
    log.info(
        "searching %d %s/%s problems (%d iterations x %d rollouts each, %d at a time)",
        len(problems),
        cfg.dataset.name,
        split,
        cfg.mcts.iterations,
        cfg.mcts.rollouts,
        cfg.mcts.concurrency,
    )

    async def main() -> SearchReport:
        try:
            return await search_problems(
                problems,
                dataset=dataset,
                dataset_name=cfg.dataset.name,
                split=split,
                executor=executor,
                params=params,
                proposer=proposer,
                cfg=cfg,
                out_path=out_path,
                trees_dir=run_dir / "trees",
                tracker=tracker,
                step_offset=len(done),
                show_progress=cfg.show_progress,
            )
        finally:
            await executor.aclose()
            if proposer is not None and proposer.llm is not executor:
                await proposer.llm.aclose()

    try:
        report = asyncio.run(main())
        metrics = {**report.metrics(), **executor_metrics(executor)}
        write_atomic(run_dir / "search_summary.json", json.dumps(metrics, indent=2))
    except InfrastructureError as err:  # wfopt's fault, not a workflow's: no reward recorded
        tracker.finish()
        raise SystemExit(
            f"wfopt search: {err.describe()}\nFinished problems are kept in "
            f"{out_path}; continue with resume={run_dir}"
        ) from None
    tracker.summary(metrics)
    tracker.finish()
    report.print(f"search on {cfg.dataset.name}/{split}")
    log.info("trajectories in %s", out_path)
    return float(metrics["search/best_reward_mean"])


def _run_dataset_scope(
    cfg: DictConfig,
    run_dir: Path,
    dataset: Any,
    executor: Any,
    params: SamplingParams,
    proposer: PolicyProposer | None,
    tracker: Any,
) -> float:
    """One tree for the dataset, scored on validation problems; writes best_workflow.py."""
    m = cfg.mcts
    problems = dataset.problems("validation")
    if m.val_problems is not None:
        problems = problems[: m.val_problems]
    if not problems:
        raise SystemExit(f"wfopt search: {cfg.dataset.name} has no validation problems")
    code_task = problems[0].kind == "code"
    task = dataset_task(cfg.dataset.name, problems)
    search = tree_search(m, task, problems, dataset, executor, params, proposer, seed=cfg.seed)
    log.info(
        "dataset-scope search on %s: %d validation problems, %d iterations",
        cfg.dataset.name,
        len(problems),
        m.iterations,
    )

    async def main() -> Tree:
        try:
            return await search.run(seed_source(m, code_task), m.policy_samples)
        finally:
            await executor.aclose()
            if proposer is not None and proposer.llm is not executor:
                await proposer.llm.aclose()

    first_batch = batch_counters(executor)
    start = time.perf_counter()
    tree = asyncio.run(main())
    wall = time.perf_counter() - start
    batches = batches_since(executor, first_batch)
    best = tree.best()
    write_atomic(run_dir / "best_workflow.py", best.source.rstrip() + "\n")
    write_atomic(run_dir / "tree.json", json.dumps(tree.to_json(), indent=1))
    n = len(problems)
    low, high = wilson_interval(best.score * n, n)
    seed_low, seed_high = wilson_interval(tree.root.score * n, n)
    metrics = {
        "search/best_val_accuracy": best.score,
        "search/best_val_accuracy_ci_low": low,
        "search/best_val_accuracy_ci_high": high,
        "search/seed_val_accuracy": tree.root.score,
        "search/unique_workflows": len(tree),
        "search/evaluations": search.stats.evaluations,
        "search/proposals": search.stats.proposals,
        "search/invalid_proposal_rate": (
            search.stats.invalid / search.stats.proposals if search.stats.proposals else 0.0
        ),
        "search/wall_time_s": wall,
    }
    metrics.update(batch_metrics(batches))
    for node in tree.nodes:
        tracker.log(
            {"search/node_reward": node.reward, "search/node_depth": node.depth}, step=node.id
        )
    write_atomic(run_dir / "search_summary.json", json.dumps(metrics, indent=2))
    tracker.summary(metrics)
    tracker.finish()

    from rich.console import Console

    Console().print(
        f"[bold]best workflow[/] (node {best.id}, {best.origin}): validation accuracy "
        f"{best.score:.3f} [{low:.3f}, {high:.3f}] vs seed {tree.root.score:.3f} "
        f"[{seed_low:.3f}, {seed_high:.3f}] on {n} problems; {len(tree)} workflows, {wall:.0f}s"
        + (
            f", mean executor batch {metrics['search/executor_batch_mean']:.1f} rows"
            if "search/executor_batch_mean" in metrics
            else ""
        )
        + "\n"
        f"{best.source}\nwritten to {run_dir / 'best_workflow.py'}"
    )
    return float(best.score)
