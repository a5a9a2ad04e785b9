"""Running workflows on problems and scoring them: the runtime `wfopt evaluate`, the search and
the loop share.

`execute` runs one workflow on one problem: validate once, bind fresh operators (own ledger and
budget), run under the time limit, score the output, and return a `Record`. Failures of the
workflow itself (invalid code, budget, timeout, its own exceptions) are recorded as scored
failures with a category; they never stop an evaluation. Faults of wfopt's machinery
(`wfopt.errors.InfrastructureError`: executor, cache, sandbox runner, scorer) propagate: no
record is made for them. `evaluate_problems` runs a fixed workflow over many problems,
`evaluate_policy` the workflows a policy writes for them; `summarize`, `policy_summary` and
`eval_metrics` turn records into a summary and its scalar metrics.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field, replace
from typing import Any

from wfopt.console import progress_bar
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

# the temperature of a retry after an invalid workflow: a different workflow, yet mostly valid
# ones. The untrained embedded policy, 16 samples for one problem: valid 16/16 at 0.3, 10/16 at
# 0.6, 4/16 at 1.0
RETRY_TEMPERATURE = 0.5


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
    # policy-written only: workflows it wrote for this slot until one was valid (or none was)
    attempts: int | None = None


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
    invalid_retries: int = 0,
    concurrency: int = 16,
    max_operator_calls: int = 20,
    timeout_s: float = 300.0,
    show_progress: bool = True,
    description: str = "policy",
) -> list[Record]:
    """The policy writes `samples` workflows per problem (training prompt); each is validated,
    run once and scored. Invalid code is a record with error `invalid` and score 0.

    `invalid_retries`: a slot whose workflow the validator rejects is written again, up to this
    many times, sampled at `RETRY_TEMPERATURE` (the validator sees no answer, so this is part of
    writing a workflow, as a search retries an invalid proposal). `Record.attempts` keeps how
    many it took; `policy_summary` reports the first-try valid rate beside the final one."""
    from wfopt.policy import sample_workflows

    semaphore = asyncio.Semaphore(max(1, concurrency))
    progress = progress_bar("valid {task.fields[valid]} acc {task.fields[acc]:.3f}", show_progress)
    done: list[Record] = []
    retry_params = replace(policy_params, temperature=RETRY_TEMPERATURE, top_p=0.95)

    async def one(problem: Any) -> list[Record]:
        async with semaphore:
            written = await sample_workflows(
                policy, problem.question, policy_params, samples, kind=problem.kind
            )
            sources = [sample.code for sample in written]
            attempts = [1] * samples
            for retry in range(1, invalid_retries + 1):
                rejected = [i for i, source in enumerate(sources) if not is_valid_policy(source)]
                if not rejected:
                    break
                again = await sample_workflows(
                    policy, problem.question, retry_params, len(rejected),
                    first_index=retry * samples, kind=problem.kind,
                )  # fmt: skip
                for i, sample in zip(rejected, again, strict=True):
                    sources[i], attempts[i] = sample.code, retry + 1
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
        for source, record, tries in zip(sources, records, attempts, strict=True):
            record.workflow_source = source
            record.answer_in_code = answer_written_in(source, record.gold, problem.question)
            record.attempts = tries
        done.extend(records)
        valid = sum(r.error != "invalid" for r in done)
        acc = sum(r.score for r in done) / len(done)
        progress.update(task, advance=1, valid=f"{valid}/{len(done)}", acc=acc)
        return list(records)

    with progress:
        task = progress.add_task(description, total=len(problems), valid="0/0", acc=0.0)
        groups = await asyncio.gather(*(one(p) for p in problems))
    return [record for group in groups for record in group]


def is_valid_policy(source: str) -> bool:
    try:
        parse_policy_workflow(source)
    except InvalidWorkflow:
        return False
    return True


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
        # valid as first written, before any `invalid_retries`
        first_valid_rate=(
            sum(r.attempts in (None, 1) for r in valid) / len(records) if records else 0.0
        ),
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
        metrics[f"{prefix}/first_valid_rate"] = summary["first_valid_rate"]
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
