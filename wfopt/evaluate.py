"""`wfopt evaluate`: run one workflow over a dataset split, score it, summarize, log.

The same `execute` runs a workflow on one problem for the search and the loop: validate once,
bind fresh operators (own ledger and budget), run under the time limit, score the output.
Failures of the workflow itself (invalid code, budget, timeout, its own exceptions) are
recorded as scored failures with a category; they never stop the evaluation.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from wfopt.llm.base import LLM, LLMError, SamplingParams
from wfopt.operators import Operators
from wfopt.workflow import (
    InvalidWorkflow,
    Workflow,
    WorkflowError,
    build_solve,
    call_solve,
    parse_workflow,
)

log = logging.getLogger(__name__)


@dataclass
class Record:
    """One workflow run on one problem: what it answered, how it scored, what it cost."""

    problem_id: str
    prediction: str | None
    gold: str
    score: float
    error: (
        str | None
    )  # None, or a category: invalid, budget, timeout, limit, runtime_error, scorer's
    detail: str
    workflow_hash: str | None
    duration_s: float
    ledger: dict[str, Any] = field(default_factory=dict)


async def execute(
    workflow: Workflow | str,
    problem: Any,  # wfopt.datasets.Problem
    dataset: Any,  # wfopt.datasets.Dataset
    llm: LLM,
    params: SamplingParams,
    *,
    max_operator_calls: int = 20,
    timeout_s: float = 300.0,
    sample_offset: int = 0,
) -> Record:
    """Run `workflow` on `problem` and score the result. Never raises for workflow faults."""
    start = time.perf_counter()

    def failed(category: str, detail: str, wf_hash: str | None, ledger: dict) -> Record:
        return Record(
            problem_id=str(problem.id),
            prediction=None,
            gold=str(problem.answer),
            score=0.0,
            error=category,
            detail=detail[:500],
            workflow_hash=wf_hash,
            duration_s=time.perf_counter() - start,
            ledger=ledger,
        )

    try:
        wf = workflow if isinstance(workflow, Workflow) else parse_workflow(workflow)
    except InvalidWorkflow as err:
        return failed(err.category, str(err), None, {})

    ops = Operators(llm, params, problem, max_calls=max_operator_calls, sample_offset=sample_offset)
    deadline = time.monotonic() + timeout_s
    extra = {"entry_point": getattr(problem, "entry_point", None)}
    try:
        solve = build_solve(wf, ops.bound(), deadline, extra_globals=extra)
        output = await call_solve(solve, problem.question, timeout_s)
    except WorkflowError as err:
        return failed(err.category, str(err), wf.hash, ops.ledger.summary())

    prediction = "" if output is None else str(output)
    score = await dataset.score(problem, prediction)
    return Record(
        problem_id=str(problem.id),
        prediction=prediction,
        gold=str(problem.answer),
        score=float(score.value),
        error=score.error,
        detail=score.detail[:500],
        workflow_hash=wf.hash,
        duration_s=time.perf_counter() - start,
        ledger=ops.ledger.summary(),
    )


async def evaluate_problems(
    workflow: Workflow | str,
    problems: list[Any],
    dataset: Any,
    llm: LLM,
    params: SamplingParams,
    *,
    concurrency: int = 16,
    max_operator_calls: int = 20,
    timeout_s: float = 300.0,
    show_progress: bool = True,
    description: str = "evaluate",
) -> list[Record]:
    """Run `workflow` on every problem, at most `concurrency` at a time, in input order."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    wf = workflow if isinstance(workflow, Workflow) else parse_workflow(workflow)
    semaphore = asyncio.Semaphore(max(1, concurrency))
    progress = Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        "acc {task.fields[acc]:.3f}",
        TimeElapsedColumn(),
        disable=not show_progress,
    )
    solved = 0.0
    done = 0

    async def one(problem: Any) -> Record:
        nonlocal solved, done
        async with semaphore:
            record = await execute(
                wf,
                problem,
                dataset,
                llm,
                params,
                max_operator_calls=max_operator_calls,
                timeout_s=timeout_s,
            )
        solved += record.score
        done += 1
        progress.update(task, advance=1, acc=solved / done)
        return record

    with progress:
        task = progress.add_task(description, total=len(problems), acc=0.0)
        return list(await asyncio.gather(*(one(p) for p in problems)))


def wilson_interval(successes: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval for a proportion (well-behaved at 0 and n, unlike Wald)."""
    if n == 0:
        return (0.0, 0.0)
    p = successes / n
    denom = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, center - half), min(1.0, center + half))


def summarize(records: list[Record], wall_time_s: float) -> dict[str, Any]:
    """Accuracy with its 95% interval, failure counts, tokens and cost of a set of records."""
    n = len(records)
    total = sum(r.score for r in records)
    low, high = wilson_interval(total, n)
    errors: dict[str, int] = {}
    for r in records:
        if r.error:
            errors[r.error] = errors.get(r.error, 0) + 1
    costs = [r.ledger.get("cost_usd") for r in records if r.ledger]
    cost = None if any(c is None for c in costs) else float(sum(costs))  # type: ignore[arg-type]
    tokens = [
        r.ledger.get("prompt_tokens", 0) + r.ledger.get("completion_tokens", 0) for r in records
    ]
    return {
        "n": n,
        "accuracy": total / n if n else 0.0,
        "accuracy_ci95": [low, high],
        "errors": errors,
        "invalid": errors.get("invalid", 0),
        "timeouts": errors.get("timeout", 0),
        "mean_tokens": sum(tokens) / n if n else 0.0,
        "mean_llm_calls": sum(r.ledger.get("llm_calls", 0) for r in records) / n if n else 0.0,
        "cost_usd": cost,
        "cached_calls": sum(r.ledger.get("cached_calls", 0) for r in records),
        "wall_time_s": wall_time_s,
    }


def print_summary(title: str, summary: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for column in ("n", "accuracy (95% CI)", "errors", "mean tokens", "cost", "wall time"):
        table.add_column(column, justify="right")
    low, high = summary["accuracy_ci95"]
    errors = ", ".join(f"{k}={v}" for k, v in sorted(summary["errors"].items())) or "none"
    cost = "unknown" if summary["cost_usd"] is None else f"${summary['cost_usd']:.4f}"
    table.add_row(
        str(summary["n"]),
        f"{summary['accuracy']:.3f} [{low:.3f}, {high:.3f}]",
        errors,
        f"{summary['mean_tokens']:.0f}",
        cost,
        f"{summary['wall_time_s']:.1f}s",
    )
    Console().print(table)


def load_workflow_source(cfg: DictConfig) -> tuple[str, str]:
    """(label, source) of `workflow.path` if set, else of the named baseline."""
    from wfopt.baselines import load_baseline

    if cfg.workflow.path:
        path = Path(cfg.workflow.path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"workflow.path={cfg.workflow.path}: no such file")
        return str(path), path.read_text()
    return cfg.workflow.name, load_baseline(cfg.workflow.name)


def run(cfg: DictConfig) -> float:
    """Hydra entry point of `wfopt evaluate`; returns the accuracy (sweepers can optimize it)."""
    from hydra.core.hydra_config import HydraConfig

    from wfopt.datasets import load_dataset
    from wfopt.llm import build_executor, sampling_params
    from wfopt.runtime import setup_runtime
    from wfopt.tracking import Tracker

    setup_runtime(cfg)
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    label, source = load_workflow_source(cfg)
    try:
        workflow = parse_workflow(source)
    except InvalidWorkflow as err:
        raise SystemExit(f"workflow {label} is invalid: {err}") from None
    dataset = load_dataset(cfg.dataset)
    problems = dataset.problems(cfg.dataset.split)
    where = f"{cfg.dataset.name}/{cfg.dataset.split}"
    log.info("evaluating workflow %s on %d %s problems", label, len(problems), where)

    tracker = Tracker(
        run_dir, cfg.tracking, OmegaConf.to_container(cfg, resolve=True), job_type="evaluate"
    )
    llm = build_executor(cfg.model, cfg.executor, cfg.hardware)
    params = sampling_params(cfg.executor.sampling)

    async def main() -> list[Record]:
        try:
            return await evaluate_problems(
                workflow,
                problems,
                dataset,
                llm,
                params,
                concurrency=cfg.concurrency,
                max_operator_calls=cfg.workflow.max_operator_calls,
                timeout_s=cfg.workflow.timeout_s,
                show_progress=cfg.show_progress,
                description=f"{label} on {cfg.dataset.name}",
            )
        finally:
            await llm.aclose()

    start = time.perf_counter()
    try:
        records = asyncio.run(main())
    except LLMError as err:  # nothing was written: results only exist for a complete run
        tracker.finish()
        raise SystemExit(
            f"wfopt evaluate: the executor failed, no results written: {err}"
        ) from None
    summary = summarize(records, time.perf_counter() - start)
    summary.update(
        workflow=label,
        workflow_hash=workflow.hash,
        dataset=cfg.dataset.name,
        split=cfg.dataset.split,
    )

    with (run_dir / "results.jsonl").open("w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(asdict(record)) + "\n")
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    metrics = {
        "eval/accuracy": summary["accuracy"],
        "eval/accuracy_ci_low": summary["accuracy_ci95"][0],
        "eval/accuracy_ci_high": summary["accuracy_ci95"][1],
        "eval/n": summary["n"],
        "eval/invalid": summary["invalid"],
        "eval/timeouts": summary["timeouts"],
        "eval/errors": sum(summary["errors"].values()),
        "eval/mean_tokens": summary["mean_tokens"],
        "eval/mean_llm_calls": summary["mean_llm_calls"],
        "eval/wall_time_s": summary["wall_time_s"],
    }
    if summary["cost_usd"] is not None:
        metrics["eval/cost_usd"] = summary["cost_usd"]
    tracker.log(metrics, step=0)
    tracker.summary(metrics)
    tracker.finish()
    print_summary(f"{label} on {cfg.dataset.name}/{cfg.dataset.split}", summary)
    log.info("results in %s", run_dir)
    return float(summary["accuracy"])
