"""`wfopt evaluate`: score one workflow (a baseline, a file, an AFlow graph) or the workflows a
policy writes on a dataset split; write `results.jsonl` and `summary.json`, log the metrics,
print the summary. Running and scoring are `wfopt.execution`'s. A fault of wfopt's machinery
(`wfopt.errors.InfrastructureError`: executor, cache, sandbox runner, scorer) stops the
command, and it writes no results at all.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from wfopt.console import print_summary
from wfopt.errors import InfrastructureError
from wfopt.execution import (
    Record,
    eval_metrics,
    evaluate_policy,
    evaluate_problems,
    policy_sampling,
    policy_summary,
    summarize,
)
from wfopt.workflow import InvalidWorkflow, parse_workflow

log = logging.getLogger(__name__)


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
                    invalid_retries=cfg.policy_invalid_retries,
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
