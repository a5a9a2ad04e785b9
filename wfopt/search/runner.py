"""`wfopt search`: grow trees for many problems at once and write what GRPO trains on.

Problem scope: one tree per problem of `dataset.split` (train by default), `mcts.concurrency`
trees at a time so their executor calls batch together. Each finished tree is appended to
`trajectories.jsonl` as one line and flushed, so a killed search loses at most the problems in
flight; `resume=...` skips the problems already in the file. Each tree is also dumped to
`trees/<problem_id>.json` (nodes, edges, values).

Dataset scope: one tree whose rewards are validation accuracies; the best workflow is written
to `best_workflow.py` for `wfopt evaluate workflow.path=...` on the test split.

This module is the command (`run`, both scopes, `resume=`); the searching itself is in
`driver.py`, the files a tree writes in `output.py`, the summary in `report.py`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from wfopt.errors import InfrastructureError
from wfopt.llm import batch_counters
from wfopt.llm.base import SamplingParams
from wfopt.runtime import check_writable, write_atomic
from wfopt.search.driver import (
    build_search_llms,
    check_mcts_config,
    dataset_task,
    search_problems,
    seed_source,
    tree_search,
)
from wfopt.search.errors import SearchError
from wfopt.search.mcts import PolicyProposer
from wfopt.search.output import finished_problem_ids
from wfopt.search.report import SearchReport, batch_metrics, batches_since
from wfopt.search.tree import Tree
from wfopt.stats import wilson_interval
from wfopt.trajectory import TRAJECTORIES

log = logging.getLogger(__name__)


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
    seed_low, seed_high = wilson_interval(tree.seed.score * n, n)
    metrics = {
        "search/best_val_accuracy": best.score,
        "search/best_val_accuracy_ci_low": low,
        "search/best_val_accuracy_ci_high": high,
        "search/seed_val_accuracy": tree.seed.score,
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
        f"{best.score:.3f} [{low:.3f}, {high:.3f}] vs seed {tree.seed.score:.3f} "
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
