"""`wfopt evaluate`: run one workflow over a dataset split, score it, summarize, log.

The same `execute` runs a workflow on one problem for the search and the loop: validate once,
bind fresh operators (own ledger and budget), run under the time limit, score the output.
Failures of the workflow itself (invalid code, budget, timeout, its own exceptions) are
recorded as scored failures with a category; they never stop the evaluation. Faults of wfopt's
machinery (`wfopt.errors.InfrastructureError`: executor, cache, sandbox runner, scorer) stop
it: no record is made for them, and `wfopt evaluate` writes no results at all.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from wfopt.errors import InfrastructureError
from wfopt.llm.base import LLM, QueueClock, SamplingParams
from wfopt.operators import Operators
from wfopt.stats import wilson_interval
from wfopt.workflow import (
    InvalidWorkflow,
    Workflow,
    WorkflowError,
    answer_written_in,
    build_solve,
    call_solve,
    operators_used,
    parse_policy_workflow,
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
    workflow_source: str | None = None  # set when the workflow was written by the policy
    # policy-written only: its code spells the answer (`workflow.answer_written_in`)
    answer_in_code: bool | None = None


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
    policy_written: bool = False,
) -> Record:
    """Run `workflow` on `problem` and score the result. Never raises for workflow faults.
    `policy_written`: source from the policy, held to `parse_policy_workflow`'s rules."""
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
        if isinstance(workflow, Workflow):
            wf = workflow
        else:
            wf = (parse_policy_workflow if policy_written else parse_workflow)(workflow)
    except InvalidWorkflow as err:
        return failed(err.category, str(err), None, {})

    ops = Operators(llm, params, problem, max_calls=max_operator_calls, sample_offset=sample_offset)
    deadline = time.monotonic() + timeout_s
    extra = {"entry_point": getattr(problem, "entry_point", None)}
    clock = QueueClock()  # the run's queue wait: not part of its time limit
    try:
        solve = build_solve(wf, ops.bound(), deadline, extra_globals=extra, clock=clock)
        output = await call_solve(solve, problem.question, timeout_s, clock)
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


def progress_bar(fields: str, show: bool) -> Any:
    """A rich progress bar: description, bar, done/total, `fields` (a format over the task's
    fields), elapsed time."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    return Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        fields,
        TimeElapsedColumn(),
        disable=not show,
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
    wf = workflow if isinstance(workflow, Workflow) else parse_workflow(workflow)
    semaphore = asyncio.Semaphore(max(1, concurrency))
    progress = progress_bar("acc {task.fields[acc]:.3f}", show_progress)
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


async def evaluate_policy(
    problems: list[Any],
    dataset: Any,
    policy: Any,
    executor: LLM,
    *,
    policy_params: SamplingParams,
    executor_params: SamplingParams,
    samples: int = 1,
    concurrency: int = 16,
    max_operator_calls: int = 20,
    timeout_s: float = 300.0,
    show_progress: bool = True,
    description: str = "policy",
) -> list[Record]:
    """The policy writes `samples` workflows per problem (training prompt); each is validated,
    run once and scored. Invalid code is a record with error `invalid` and score 0."""
    from wfopt.policy import sample_workflows

    semaphore = asyncio.Semaphore(max(1, concurrency))
    progress = progress_bar("valid {task.fields[valid]} acc {task.fields[acc]:.3f}", show_progress)
    done: list[Record] = []

    async def one(problem: Any) -> list[Record]:
        async with semaphore:
            written = await sample_workflows(
                policy, problem.question, policy_params, samples, kind=problem.kind
            )
            sources = [sample.code for sample in written]
            records = await asyncio.gather(
                *(
                    execute(
                        source,
                        problem,
                        dataset,
                        executor,
                        executor_params,
                        max_operator_calls=max_operator_calls,
                        timeout_s=timeout_s,
                        policy_written=True,
                    )
                    for source in sources
                )
            )
        for source, record in zip(sources, records, strict=True):
            record.workflow_source = source
            record.answer_in_code = answer_written_in(source, record.gold, problem.question)
        done.extend(records)
        valid = sum(r.error != "invalid" for r in done)
        acc = sum(r.score for r in done) / len(done)
        progress.update(task, advance=1, valid=f"{valid}/{len(done)}", acc=acc)
        return list(records)

    with progress:
        task = progress.add_task(description, total=len(problems), valid="0/0", acc=0.0)
        groups = await asyncio.gather(*(one(p) for p in problems))
    return [record for group in groups for record in group]


def policy_summary(records: list[Record], wall_time_s: float) -> dict[str, Any]:
    """`summarize` plus what only policy-written workflows have: the valid rate and the share
    of valid workflows that use each operator."""
    summary = summarize(records, wall_time_s)
    valid = [r for r in records if r.error != "invalid"]
    low, high = wilson_interval(len(valid), len(records))
    usage: dict[str, int] = {}
    for r in valid:
        for name in operators_used(r.workflow_source or ""):
            usage[name] = usage.get(name, 0) + 1
    own = [r for r in valid if r.answer_in_code]
    summary.update(
        valid_rate=len(valid) / len(records) if records else 0.0,
        valid_rate_ci95=[low, high],
        # valid workflows whose code spells the answer, and the accuracy they contribute: a
        # gain from these is the policy solving the problem, not workflow learning
        answer_in_code_rate=len(own) / len(valid) if valid else 0.0,
        answer_in_code_accuracy=sum(r.score for r in own) / len(records) if records else 0.0,
        operator_use={k: v / len(valid) for k, v in sorted(usage.items())} if valid else {},
    )
    return summary


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
        from wfopt.aflow import AFlowError, convert_file, is_aflow_graph

        source = path.read_text()
        if is_aflow_graph(source):  # AFlow's graph.py (+ prompt.py beside it)
            try:
                source = convert_file(path)
            except AFlowError as err:
                raise SystemExit(f"workflow.path={cfg.workflow.path}: {err}") from None
        return str(path), source
    return cfg.workflow.name, load_baseline(cfg.workflow.name)


def eval_metrics(summary: dict[str, Any], prefix: str = "eval") -> dict[str, Any]:
    """Scalar `eval/*` metrics of a `summarize` / `policy_summary` result."""
    metrics = {
        f"{prefix}/accuracy": summary["accuracy"],
        f"{prefix}/accuracy_ci_low": summary["accuracy_ci95"][0],
        f"{prefix}/accuracy_ci_high": summary["accuracy_ci95"][1],
        f"{prefix}/n": summary["n"],
        f"{prefix}/invalid": summary["invalid"],
        f"{prefix}/timeouts": summary["timeouts"],
        f"{prefix}/errors": sum(summary["errors"].values()),
        f"{prefix}/mean_tokens": summary["mean_tokens"],
        f"{prefix}/mean_llm_calls": summary["mean_llm_calls"],
        f"{prefix}/wall_time_s": summary["wall_time_s"],
    }
    if summary["cost_usd"] is not None:
        metrics[f"{prefix}/cost_usd"] = summary["cost_usd"]
    if "valid_rate" in summary:
        metrics[f"{prefix}/valid_rate"] = summary["valid_rate"]
        for name, share in summary["operator_use"].items():
            metrics[f"{prefix}/operator_use/{name}"] = share
    return metrics


def policy_sampling(temperature: float, max_tokens: int, seed: int) -> SamplingParams:
    """How the policy writes workflows: greedy at temperature 0, else nucleus sampling."""
    return SamplingParams(
        temperature=float(temperature),
        top_p=0.95 if temperature > 0 else 1.0,
        max_new_tokens=int(max_tokens),
        seed=int(seed),
    )


def run(cfg: DictConfig) -> float:
    """Hydra entry point of `wfopt evaluate`; returns the accuracy (sweepers can optimize it).

    A fixed workflow (`workflow=NAME` / `workflow.path=FILE`), or with `policy=CHECKPOINT`
    (or `policy=base`, the untrained model) workflows the policy writes for each problem.
    """
    from hydra.core.hydra_config import HydraConfig

    from wfopt.datasets import load_dataset
    from wfopt.errors import RunDirError
    from wfopt.llm import build_executor, executor_metrics, sampling_params
    from wfopt.runtime import setup_runtime, write_atomic
    from wfopt.tracking import Tracker

    setup_runtime(cfg)
    run_dir = Path(HydraConfig.get().runtime.output_dir)  # checked writable (cli.RunDirCheck)
    policy_llm, workflow = None, None
    if not cfg.policy:
        label, source = load_workflow_source(cfg)
        try:
            workflow = parse_workflow(source)
        except InvalidWorkflow as err:
            raise SystemExit(f"workflow {label} is invalid: {err}") from None
    # the data before any model: a wrong path fails in a second, not after a load
    dataset = load_dataset(cfg.dataset)
    split = str(cfg.dataset.split)
    problems = dataset.problems(split)
    scored = {
        "dataset": str(cfg.dataset.name),
        "split": split,
        "source": dataset.source(split),
        "n_problems": len(problems),  # scored problems (n counts records: x policy_samples)
        "n_total": dataset.total(split),  # problems in the whole split (before dataset.limit)
    }
    if cfg.policy:
        label = f"policy {cfg.policy}"
        policy_llm = _load_policy(cfg)
    log.info(
        "evaluating %s on %d of %d %s/%s problems (%s)",
        label,
        len(problems),
        scored["n_total"],
        scored["dataset"],
        split,
        scored["source"],
    )

    tracker = Tracker(
        run_dir, cfg.tracking, OmegaConf.to_container(cfg, resolve=True), job_type="evaluate"
    )
    # the executor is the configured model, untrained: a policy checkpoint writes workflows only
    shared = policy_llm if cfg.policy == "base" else None
    llm = build_executor(cfg.model, cfg.executor, cfg.hardware, shared_local=shared)
    params = sampling_params(cfg.executor.sampling)
    common = dict(
        concurrency=cfg.concurrency,
        max_operator_calls=cfg.workflow.max_operator_calls,
        timeout_s=cfg.workflow.timeout_s,
        show_progress=cfg.show_progress,
        description=f"{label} on {cfg.dataset.name}",
    )

    async def main() -> list[Record]:
        try:
            if policy_llm is not None:
                return await evaluate_policy(
                    problems,
                    dataset,
                    policy_llm,
                    llm,
                    policy_params=policy_sampling(
                        cfg.policy_temperature, cfg.policy_max_tokens, cfg.seed
                    ),
                    executor_params=params,
                    samples=cfg.policy_samples,
                    **common,
                )
            return await evaluate_problems(workflow, problems, dataset, llm, params, **common)
        finally:
            await llm.aclose()
            if policy_llm is not None and policy_llm is not shared:
                await policy_llm.aclose()

    start = time.perf_counter()
    try:
        records = asyncio.run(main())
    except InfrastructureError as err:  # nothing written: results exist only for a whole run
        tracker.finish()
        raise SystemExit(f"wfopt evaluate: {err.describe()}\nNo results were written.") from None
    wall = time.perf_counter() - start
    summary = policy_summary(records, wall) if policy_llm else summarize(records, wall)
    summary.update(workflow=label, workflow_hash=workflow.hash if workflow else None, **scored)

    try:
        write_atomic(
            run_dir / "results.jsonl", "".join(json.dumps(asdict(r)) + "\n" for r in records)
        )
        write_atomic(run_dir / "summary.json", json.dumps(summary, indent=2))
    except RunDirError as err:
        tracker.finish()
        raise SystemExit(f"wfopt evaluate: {err}") from None
    metrics = {**eval_metrics(summary), **executor_metrics(llm)}
    tracker.log(metrics, step=0)
    tracker.summary(metrics)
    from wfopt.report import report_at_end

    report_at_end(run_dir, cfg, tracker)  # report.html + figures (report=false: none)
    tracker.finish()
    print_summary(
        f"{label} on {scored['dataset']}/{split}: {len(problems)} of {scored['n_total']} "
        f"problems\n{scored['source']}",
        summary,
    )
    log.info("results in %s", run_dir)
    return float(summary["accuracy"])


def _load_policy(cfg: DictConfig) -> Any:
    """`policy=base`: the configured model untrained; else a checkpoint (or run) directory."""
    from hydra.utils import to_absolute_path

    from wfopt.policy import load_policy_llm

    if cfg.policy == "base":
        return load_policy_llm(cfg.model, cfg.hardware)
    from wfopt.errors import CheckpointError
    from wfopt.grpo.checkpoint import resolve_checkpoint

    try:
        checkpoint = resolve_checkpoint(to_absolute_path(cfg.policy))
    except FileNotFoundError as err:
        raise SystemExit(f"wfopt evaluate: policy={cfg.policy}: {err}") from None
    try:
        return load_policy_llm(cfg.model, cfg.hardware, checkpoint)
    except CheckpointError as err:
        raise SystemExit(f"wfopt evaluate: policy={cfg.policy}: {err}") from None
