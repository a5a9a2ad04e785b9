"""Running searches: a tree for a task (`tree_search`), many problems' trees at once with a
trajectory line per finished tree (`search_problems`, shared by `wfopt search` and `wfopt
loop`), and what they need: the executor and the policy proposer (`build_search_llms`,
`policy_proposer`), the seed workflow (`seed_source`), the dataset-scope task text
(`dataset_task`), and the checks of the `mcts` config (`check_mcts_config`)."""

from __future__ import annotations

import asyncio
import json
import random
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from wfopt.console import progress_bar
from wfopt.llm import batch_counters
from wfopt.llm.base import SamplingParams
from wfopt.runtime import run_dir_error, write_atomic
from wfopt.search.edits import EDIT_KINDS
from wfopt.search.errors import SearchError
from wfopt.search.mcts import PolicyProposer, TreeSearch, dataset_evaluator
from wfopt.search.output import safe_name, trajectory_record
from wfopt.search.report import SearchReport, batches_since


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
    if m.policy_root and (m.policy_samples < 1 or m.proposer != "policy"):
        problems.append(
            "mcts.policy_root=true roots trees at the policy's own sample: it needs "
            f"mcts.policy_samples >= 1 (is {m.policy_samples}) and mcts.proposer=policy "
            f"(is {m.proposer})"
        )
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
                    "search/tree_seed_score": search.tree.seed.score,
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
