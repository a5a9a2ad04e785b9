"""Workflow search on built-in arithmetic with the embedded SmolLM2-135M as executor.

Three measurements in one process (the model is loaded once; the response cache is off, so
every executor call really generates):

1. Throughput: the same `search_problems` run (same problems, `mcts.iterations`,
   `mcts.rollouts`, proposer, seeds) with `mcts.concurrency=N` (all trees at once, so their
   executor calls share batches), with `mcts.concurrency=1` (one tree at a time), and with
   `mcts.concurrency=N mcts.parallel_expansions=K` (K children of each tree in flight).
   Workflow evaluations per minute of each, the ratios concurrent / one at a time and
   parallel / concurrent (medians of per-repeat ratios; the arms alternate order between
   repeats), generated tokens, mean batch size, solved fraction, process CPU time, and
   whether the first two arms grew the same trees (they should: each request's sampling
   generator depends only on (seed, sample index, prompt), not on its batch; batched float
   arithmetic can still flip a rare token). The parallel arm grows other trees by design.
2. Dataset scope (AFlow's setting, as `wfopt search mcts.scope=dataset` does it): one tree
   whose rewards are accuracies on validation problems; its best workflow and the seed `io`
   are then scored on test problems with `evaluate_problems`, with 95% Wilson intervals.
3. Problem scope: one tree per train problem (`search_problems`); the fraction of problems
   the tree's best workflow solves vs the seed (the root) alone. Best-of-tree is picked on the
   very runs it is scored on, so that number is optimistic; both workflows are therefore also
   re-run on every problem with fresh executor samples (a different `sample_offset`) and that
   held-out solve rate is reported too. "Solved" means every rollout scored 1, in both cases.

    .venv/bin/python -m bench search          # or: .venv/bin/python bench/bench_search.py
    .venv/bin/python bench/bench_search.py --parts throughput --repeats 2
    BENCH_QUICK=1 .venv/bin/python -m bench search    # throughput only, tiny (~3 min)

Defaults (all flags; ~15-20 min on 2 shared CPU cores): executor max_new_tokens 96 at
temperature 0.7, 1 torch thread (2 threads on a shared 2-core machine stall at every OpenMP
barrier: several times slower), `mcts.timeout_s` 900 (the default 120 s is wall clock, queueing
in the batcher included, so on a slow CPU it would turn load into scored timeouts); throughput
6 problems x 4 iterations, K = 4, edits proposer, 3 repeats; dataset scope 20 validation problems, 6 iterations, the
policy (SmolLM2 itself) as proposer, 60 test problems; problem scope 16 problems, 4
iterations, structural edits as proposer (the policy's proposals, mostly invalid, cost about
as much again as the executor), 2 held-out runs each.

Writes everything (settings, per-arm numbers, trees, best workflows, per-problem outcomes) as
JSON to `--json` (default outputs/bench/search.json; outputs/ is never tracked).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a file: make `wfopt` importable from the checkout
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from wfopt.config import SearchConfig  # noqa: E402
from wfopt.datasets import load_dataset  # noqa: E402
from wfopt.execution import Record, evaluate_problems, execute  # noqa: E402
from wfopt.llm import sampling_params  # noqa: E402
from wfopt.llm.local import LocalLLM  # noqa: E402
from wfopt.search.driver import (  # noqa: E402
    build_search_llms,
    dataset_task,
    search_problems,
    seed_source,
    tree_search,
)
from wfopt.search.mcts import ROLLOUT_STRIDE, TreeSearch  # noqa: E402
from wfopt.stats import wilson_interval  # noqa: E402

# BENCH_QUICK=1: a smoke run of the throughput arms (~3 min here); flags still override
QUICK = {
    "parts": "throughput",
    "tp_problems": 2,
    "tp_iterations": 4,
    "tp_parallel": 4,
    "repeats": 1,
    "max_new_tokens": 48,
}
HOLDOUT_OFFSET = 1_000_000  # sample offset of the held-out re-runs (search runs use r * 1000)
DEFAULT_JSON = REPO / "outputs" / "bench" / "search.json"


# ---------------------------------------------------------------------------------- setup


def make_cfg(args: argparse.Namespace, **mcts: Any) -> DictConfig:
    """A `wfopt search` config (typed by SearchConfig) for one part of the benchmark."""
    return OmegaConf.merge(
        OmegaConf.structured(SearchConfig),
        {
            "model": OmegaConf.load(REPO / "conf/model/smollm2_135m.yaml"),
            "executor": {
                "backend": "same_as_policy",
                "cache": False,  # every call generates, in every arm
                "sampling": {
                    "temperature": args.temperature,
                    "top_p": 0.95,
                    "max_new_tokens": args.max_new_tokens,
                    "seed": args.seed,
                },
            },
            "dataset": {"name": "arithmetic", "seed": args.seed},
            "hardware": {"num_threads": args.threads},
            "mcts": {"timeout_s": args.timeout_s, **mcts},
            "seed": args.seed,
            "show_progress": False,
        },
    )  # type: ignore[return-value]


def completion_tokens(nodes: list[dict[str, Any]]) -> int:
    return sum(n["ledger"].get("completion_tokens", 0) for n in nodes)


def ci(k: float, n: int) -> str:
    low, high = wilson_interval(k, n)
    return f"{k:g}/{n} = {k / n if n else 0:.3f} [{low:.3f}, {high:.3f}]"


def ci_json(k: float, n: int) -> dict[str, Any]:
    low, high = wilson_interval(k, n)
    return {"k": k, "n": n, "rate": k / n if n else 0.0, "ci95": [low, high]}


def node_summary(node: dict[str, Any]) -> dict[str, Any]:
    """What the JSON keeps of a tree node: enough to check what the search tried."""
    keys = ("id", "parent", "origin", "hash", "scores", "errors", "source")
    return {k: node[k] for k in keys} | {
        "llm_calls": node["ledger"].get("llm_calls", 0),
        "completion_tokens": node["ledger"].get("completion_tokens", 0),
    }


def load_trees(trees_dir: Path, problems: list[Any]) -> dict[str, dict[str, Any]]:
    from wfopt.search.output import safe_name

    return {
        str(p.id): json.loads((trees_dir / f"{safe_name(p.id)}.json").read_text()) for p in problems
    }


# ----------------------------------------------------------------------- 1. throughput


async def run_search(
    cfg: DictConfig, llm: LocalLLM, dataset: Any, problems: list[Any], tmp: Path
) -> tuple[Any, dict[str, dict[str, Any]]]:
    executor, proposer = build_search_llms(cfg, policy=llm)
    try:
        report = await search_problems(
            problems,
            dataset=dataset,
            dataset_name="arithmetic",
            split="train",
            executor=executor,
            params=sampling_params(cfg.executor.sampling),
            proposer=proposer,
            cfg=cfg,
            out_path=tmp / "trajectories.jsonl",
            trees_dir=tmp / "trees",
            show_progress=False,
        )
    finally:
        await executor.aclose()
    return report, load_trees(tmp / "trees", problems)


def throughput(args: argparse.Namespace, llm: LocalLLM, dataset: Any, console: Console) -> dict:
    problems = dataset.problems("train")[: args.tp_problems]
    n = len(problems)
    # arm -> (mcts.concurrency, mcts.parallel_expansions)
    arms = {
        "one at a time": (1, 1),
        "concurrent": (n, 1),
        "parallel expansions": (n, args.tp_parallel),
    }
    if args.tp_skip_sequential:  # the ratio of interest is parallel vs concurrent
        del arms["one at a time"]
    runs: dict[str, list[dict[str, Any]]] = {arm: [] for arm in arms}
    trees: dict[str, dict[str, Any]] = {}
    for repeat in range(args.repeats):
        order = list(arms) if repeat % 2 == 0 else list(arms)[::-1]
        for arm in order:
            cfg = make_cfg(
                args,
                iterations=args.tp_iterations,
                rollouts=args.tp_rollouts,
                proposer=args.tp_proposer,
                concurrency=arms[arm][0],
                parallel_expansions=arms[arm][1],
            )
            batches = len(llm.batch_sizes)  # prefills: requests admitted together
            steps, rows = llm.decode_steps, llm.decoded_rows
            cpu = time.process_time()
            children = resource.getrusage(resource.RUSAGE_CHILDREN)
            with tempfile.TemporaryDirectory() as tmp:
                start = time.perf_counter()
                report, arm_trees = asyncio.run(run_search(cfg, llm, dataset, problems, Path(tmp)))
                wall = time.perf_counter() - start
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            sizes = llm.batch_sizes[batches:]
            nodes = [node for t in arm_trees.values() for node in t["nodes"]]
            run = {
                "wall_s": wall,
                "cpu_s": time.process_time() - cpu,
                "sandbox_cpu_s": (after.ru_utime + after.ru_stime)
                - (children.ru_utime + children.ru_stime),
                "evaluations": report.stats.evaluations,
                "workflow_runs": report.stats.runs,
                "llm_calls": report.llm_calls,
                "tokens": report.tokens,
                "completion_tokens": completion_tokens(nodes),
                "batches": len(sizes),
                # rows per decode step (continuous batching: rows join and leave mid-batch)
                "mean_batch": (llm.decoded_rows - rows) / max(1, llm.decode_steps - steps),
                "max_batch": max(sizes, default=0),
                "evals_per_min": report.stats.evaluations / wall * 60,
                "solved_fraction": report.metrics()["search/solved_fraction"],
                "load_avg_1m": os.getloadavg()[0],
            }
            runs[arm].append(run)
            trees.setdefault(arm, arm_trees)  # the first repeat's trees
            console.print(
                f"throughput repeat {repeat + 1}/{args.repeats}, {arm}: {wall:.0f} s, "
                f"{run['evaluations']} evaluations ({run['evals_per_min']:.2f}/min), "
                f"{run['llm_calls']} LLM calls in {run['batches']} prefills "
                f"(mean {run['mean_batch']:.1f} rows per decode step)"
            )

    def signature(tree: dict[str, Any]) -> list[tuple[str, list[float]]]:
        return [(node["hash"], node["scores"]) for node in tree["nodes"]]

    b = trees["concurrent"]
    a = trees.get("one at a time", b)
    same = sum(signature(a[pid]) == signature(b[pid]) for pid in a)

    def ratios_of(key: str, arm: str, base: str) -> list[float]:
        pairs = zip(runs[arm], runs[base], strict=True)
        return [x[key] / y[key] if y[key] else float("nan") for x, y in pairs]

    ratios = ratios_of(
        "evals_per_min", "concurrent", "one at a time" if a is not b else "concurrent"
    )
    parallel = {
        key: ratios_of(key, "parallel expansions", "concurrent")
        for key in ("evals_per_min", "mean_batch")
    }
    console.print(
        f"\n[bold]throughput[/]: {n} train problems x {args.tp_iterations} iterations x "
        f"{args.tp_rollouts} rollout(s), {args.tp_proposer} proposer, response cache off, "
        f"max_new_tokens {args.max_new_tokens}, {torch.get_num_threads()} torch thread(s); "
        f"median of {args.repeats} repeat(s)"
    )
    table = Table(title="search throughput: concurrent trees vs one tree at a time")
    columns = (
        "mode",
        "mcts.concurrency",
        "parallel_expansions",
        "median wall s",
        "evals",
        "evals/min",
        "solved",
        "LLM calls",
        "gen tokens",
        "gen tok/s",
        "mean batch",
        "CPU s",
        "walls (s)",
    )
    for column in columns:
        table.add_column(column, justify="right")
    summary: dict[str, Any] = {}
    for arm, (concurrency, k) in arms.items():
        rs = runs[arm]
        wall = statistics.median(r["wall_s"] for r in rs)
        med = {key: statistics.median(r[key] for r in rs) for key in rs[0]}
        summary[arm] = {"concurrency": concurrency, "parallel_expansions": k, "median": med}
        summary[arm]["runs"] = rs
        table.add_row(
            arm,
            str(concurrency),
            str(k),
            f"{wall:.1f}",
            f"{med['evaluations']:g}",
            f"{med['evals_per_min']:.2f}",
            f"{med['solved_fraction']:.2f}",
            f"{med['llm_calls']:g}",
            f"{med['completion_tokens']:g}",
            f"{statistics.median(r['completion_tokens'] / r['wall_s'] for r in rs):.1f}",
            f"{med['mean_batch']:.1f}",
            f"{med['cpu_s']:.0f}",
            ", ".join(f"{r['wall_s']:.0f}" for r in rs),
        )
    console.print(table)
    ratio = statistics.median(ratios)
    if a is not b:
        console.print(
            f"evaluations/min, concurrent vs one at a time: {ratio:.2f}x (median of per-repeat "
            f"ratios {', '.join(f'{r:.2f}' for r in ratios)}); identical trees in both arms "
            f"(hashes and scores, first repeat): {same}/{n}"
        )
    k = args.tp_parallel
    console.print(
        f"parallel expansions ({k} in flight per tree) vs concurrent (1 in flight): "
        + ", ".join(
            f"{label} {statistics.median(parallel[key]):.2f}x ("
            + ", ".join(f"{r:.2f}" for r in parallel[key])
            + ")"
            for label, key in (("evaluations/min", "evals_per_min"), ("mean batch", "mean_batch"))
        )
        + "; solved fraction "
        + f"{summary['parallel expansions']['median']['solved_fraction']:.2f} vs "
        + f"{summary['concurrent']['median']['solved_fraction']:.2f} (median of per-repeat "
        "ratios; same problems, budget and seeds; the trees differ by design)"
    )
    return {
        "problems": [p.id for p in problems],
        "arms": summary,
        "ratio_evals_per_min": ratio,
        "ratios": ratios,
        "parallel_ratios": parallel,
        "identical_trees": same,
        "trees_compared": n,
        "trees": {pid: [node_summary(x) for x in t["nodes"]] for pid, t in b.items()},
    }


# ---------------------------------------------------------------------- 2. dataset scope


def dataset_scope(
    args: argparse.Namespace, llm: LocalLLM, dataset: Any, console: Console
) -> dict[str, Any]:
    val = dataset.problems("validation")[: args.val_problems]
    test = dataset.problems("test")[: args.test_problems]
    cfg = make_cfg(
        args,
        scope="dataset",
        iterations=args.ds_iterations,
        rollouts=1,
        proposer=args.ds_proposer,
        concurrency=len(val),  # every validation problem at once: their calls batch
        val_problems=len(val),
    )
    m = cfg.mcts
    params = sampling_params(cfg.executor.sampling)
    # the same task text and evaluator as `wfopt search mcts.scope=dataset` (runner.py)
    task = dataset_task("arithmetic", val)

    async def search_then_test() -> tuple[TreeSearch, float, list[Record], list[Record], float]:
        executor, proposer = build_search_llms(cfg, policy=llm)
        try:
            search = tree_search(m, task, val, dataset, executor, params, proposer, seed=cfg.seed)
            start = time.perf_counter()
            await search.run(seed_source(m, False), m.policy_samples)
            search_s = time.perf_counter() - start
            best = search.tree.best()
            seed = search.tree.root

            def score(source: str, label: str):
                return evaluate_problems(
                    source,
                    test,
                    dataset,
                    executor,
                    params,
                    concurrency=len(test),
                    max_operator_calls=m.max_operator_calls,
                    timeout_s=m.timeout_s,
                    show_progress=False,
                    description=label,
                )

            start = time.perf_counter()
            if best.id == seed.id:
                seed_records = await score(seed.source, "seed")
                best_records = seed_records
            else:  # both at once: their calls batch together
                best_records, seed_records = await asyncio.gather(
                    score(best.source, "best"), score(seed.source, "seed")
                )
            test_s = time.perf_counter() - start
        finally:
            await executor.aclose()
        return search, search_s, best_records, seed_records, test_s

    search, search_s, best_records, seed_records, test_s = asyncio.run(search_then_test())
    tree = search.tree
    best, seed = tree.best(), tree.root
    console.print(
        f"dataset scope: {len(tree)} workflows in {search_s:.0f} s "
        f"({search.stats.evaluations} evaluations on {len(val)} validation problems), "
        f"test scoring {test_s:.0f} s"
    )

    def outcome(records: list[Record], node: Any) -> dict[str, Any]:
        k = sum(r.score for r in records)
        errors: dict[str, int] = {}
        for r in records:
            if r.error:
                errors[r.error] = errors.get(r.error, 0) + 1
        return {
            "node": node.id,
            "origin": node.origin,
            "source": node.source,
            "val_accuracy": node.score,
            "test": ci_json(k, len(records)),
            "test_errors": errors,
            "mean_llm_calls": statistics.mean(r.ledger.get("llm_calls", 0) for r in records),
            "mean_completion_tokens": statistics.mean(
                r.ledger.get("completion_tokens", 0) for r in records
            ),
        }

    result = {"best": outcome(best_records, best), "seed": outcome(seed_records, seed)}
    both = [(b.score >= 1, s.score >= 1) for b, s in zip(best_records, seed_records, strict=True)]
    result["test_only_best_right"] = sum(b and not s for b, s in both)
    result["test_only_seed_right"] = sum(s and not b for b, s in both)
    console.print(
        f"\n[bold]dataset scope[/]: one tree, {search.stats.evaluations} evaluations (seed io "
        f"+ up to {args.ds_iterations} iterations, proposer {args.ds_proposer}) on {len(val)} "
        f"validation problems x 1 rollout; best and seed then scored on {len(test)} test problems"
    )
    table = Table(title="dataset scope: best workflow vs seed")
    for column in (
        "workflow",
        "val accuracy",
        "test accuracy [95% CI]",
        "test errors",
        "LLM calls/problem",
        "gen tokens/problem",
    ):
        table.add_column(column, justify="right")
    for label, key in ((f"seed io (node {seed.id})", "seed"), (f"best (node {best.id})", "best")):
        r = result[key]
        table.add_row(
            label if key == "seed" else f"{label}, {r['origin']}",
            f"{r['val_accuracy']:.3f} ({round(r['val_accuracy'] * len(val))}/{len(val)})",
            ci(r["test"]["k"], r["test"]["n"]),
            ", ".join(f"{k}={v}" for k, v in sorted(r["test_errors"].items())) or "none",
            f"{r['mean_llm_calls']:.1f}",
            f"{r['mean_completion_tokens']:.0f}",
        )
    console.print(table)
    console.print(
        f"test problems only the best solves: {result['test_only_best_right']}, only the seed: "
        f"{result['test_only_seed_right']}; best workflow:\n{best.source.rstrip()}"
    )
    stats = search.stats
    result.update(
        validation_problems=[p.id for p in val],
        test_problems=len(test),
        search_s=search_s,
        test_s=test_s,
        tree_size=len(tree),
        nodes=[
            {k: n.__dict__[k] for k in ("id", "parent", "origin", "score", "source", "errors")}
            for n in tree.nodes
        ],
        stats=dict(stats.__dict__),
    )
    return result


# ---------------------------------------------------------------------- 3. problem scope


def problem_scope(
    args: argparse.Namespace, llm: LocalLLM, dataset: Any, console: Console
) -> dict[str, Any]:
    problems = dataset.problems("train")[: args.problems]
    k = len(problems)
    cfg = make_cfg(
        args,
        iterations=args.iterations,
        rollouts=args.rollouts,
        proposer=args.proposer,
        concurrency=k,
    )
    m = cfg.mcts
    params = sampling_params(cfg.executor.sampling)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        report, trees = asyncio.run(run_search(cfg, llm, dataset, problems, Path(tmp)))
        search_s = time.perf_counter() - start

    best_nodes = {pid: t["nodes"][t["best"]] for pid, t in trees.items()}
    seed_nodes = {pid: t["nodes"][0] for pid, t in trees.items()}
    holdout = max(args.holdout_runs, m.rollouts)

    async def rerun() -> dict[tuple[str, str, int], Record]:
        """Each problem's best and seed workflows, `holdout` fresh runs each, all at once. A
        best that is the seed itself is run once (the same samples would repeat)."""
        jobs = {
            (str(p.id), node["source"], r): p
            for p in problems
            for node in (best_nodes[str(p.id)], seed_nodes[str(p.id)])
            for r in range(holdout)
        }
        try:
            records = await asyncio.gather(
                *(
                    execute(
                        source,
                        p,
                        dataset,
                        llm,
                        params,
                        max_operator_calls=m.max_operator_calls,
                        timeout_s=m.timeout_s,
                        sample_offset=HOLDOUT_OFFSET + r * ROLLOUT_STRIDE,
                    )
                    for (_, source, r), p in jobs.items()
                )
            )
        finally:
            await llm.aclose()
        return dict(zip(jobs, records, strict=True))

    start = time.perf_counter()
    reruns = asyncio.run(rerun())
    rerun_s = time.perf_counter() - start

    per_problem = []
    for p in problems:
        pid = str(p.id)
        b, s = best_nodes[pid], seed_nodes[pid]
        per_problem.append(
            {
                "problem_id": pid,
                "tree_size": len(trees[pid]["nodes"]),
                "best_node": b["id"],
                "best_origin": b["origin"],
                "best_is_seed": b["id"] == 0,
                "best_source": b["source"],
                "search_best_scores": b["scores"],
                "search_seed_scores": s["scores"],
                "holdout_best_scores": [reruns[pid, b["source"], r].score for r in range(holdout)],
                "holdout_seed_scores": [reruns[pid, s["source"], r].score for r in range(holdout)],
                "nodes": [node_summary(n) for n in trees[pid]["nodes"]],
                "holdout_errors": sorted(
                    {
                        reruns[pid, n["source"], r].error or ""
                        for n in (b, s)
                        for r in range(holdout)
                    }
                    - {""}
                ),
            }
        )

    def solved(scores: list[float]) -> bool:
        return bool(scores) and min(scores) >= 1.0

    r0 = m.rollouts  # held-out "solved": the first `rollouts` held-out runs all right
    counts = {
        "search_best": sum(solved(row["search_best_scores"]) for row in per_problem),
        "search_seed": sum(solved(row["search_seed_scores"]) for row in per_problem),
        "holdout_best": sum(solved(row["holdout_best_scores"][:r0]) for row in per_problem),
        "holdout_seed": sum(solved(row["holdout_seed_scores"][:r0]) for row in per_problem),
    }
    runs = {
        who: sum(sum(row[f"holdout_{who}_scores"]) for row in per_problem)
        for who in ("best", "seed")
    }
    only_best = sum(
        solved(r["holdout_best_scores"][:r0]) and not solved(r["holdout_seed_scores"][:r0])
        for r in per_problem
    )
    only_seed = sum(
        solved(r["holdout_seed_scores"][:r0]) and not solved(r["holdout_best_scores"][:r0])
        for r in per_problem
    )
    best_is_seed = sum(r["best_is_seed"] for r in per_problem)
    stats = report.stats
    console.print(
        f"\n[bold]problem scope[/]: {k} train problems, one tree each (seed io + up to "
        f"{args.iterations} children, {m.rollouts} rollout(s) per evaluation, proposer "
        f"{args.proposer}, all trees at once); solved = all {m.rollouts} rollout(s) right; "
        f"held-out = {holdout} fresh runs per workflow and problem (sample offset "
        f"{HOLDOUT_OFFSET:,})"
    )
    table = Table(title="problem scope: tree's best vs seed")
    for column in (
        "workflow",
        "solved, search runs [95% CI]",
        f"solved, held-out re-run ({r0}) [95% CI]",
        f"held-out runs right ({holdout}/problem) [95% CI]",
    ):
        table.add_column(column, justify="right")
    table.add_row(
        "seed io (root)",
        ci(counts["search_seed"], k),
        ci(counts["holdout_seed"], k),
        ci(runs["seed"], k * holdout),
    )
    table.add_row(
        "tree's best",
        ci(counts["search_best"], k) + " (optimistic)",
        ci(counts["holdout_best"], k),
        ci(runs["best"], k * holdout),
    )
    console.print(table)
    console.print(
        f"held-out (first run(s)): {only_best} problem(s) solved only by the tree's best, "
        f"{only_seed} only by the seed; the best is the seed itself on {best_is_seed}/{k}; mean "
        f"tree size {statistics.mean(r['tree_size'] for r in per_problem):.1f}; search "
        f"{search_s:.0f} s, re-runs {rerun_s:.0f} s; proposals {stats.proposals} (invalid "
        f"{stats.invalid}, duplicate {stats.duplicates}), policy children "
        f"{stats.policy_children}, edit children {stats.edits}; the runs-right interval treats "
        f"the {holdout} runs of a problem as independent (they are not quite: same problem)"
    )
    return {
        "problems": [p.id for p in problems],
        "search": {
            "best": ci_json(counts["search_best"], k),
            "seed": ci_json(counts["search_seed"], k),
        },
        "holdout_rerun": {
            "sample_offset": HOLDOUT_OFFSET,
            "runs_per_problem": holdout,
            "best": ci_json(counts["holdout_best"], k),
            "seed": ci_json(counts["holdout_seed"], k),
            "best_runs": ci_json(runs["best"], k * holdout),
            "seed_runs": ci_json(runs["seed"], k * holdout),
            "only_best_solves": only_best,
            "only_seed_solves": only_seed,
        },
        "best_is_seed": best_is_seed,
        "search_s": search_s,
        "rerun_s": rerun_s,
        "stats": dict(stats.__dict__),
        "metrics": report.metrics(),
        "per_problem": per_problem,
    }


# ----------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--parts", default="throughput,dataset,problem", help="comma-separated subset")
    add("--seed", type=int, default=0, help="dataset, sampling and search seed")
    add("--threads", type=int, default=1, help="torch threads (0 = torch default)")
    add("--max-new-tokens", type=int, default=96, help="executor tokens per call")
    add("--temperature", type=float, default=0.7, help="executor sampling temperature")
    add("--timeout-s", type=float, default=900.0, help="mcts.timeout_s per workflow run")
    add("--tp-problems", type=int, default=6, help="throughput: problems (= concurrency)")
    add("--tp-iterations", type=int, default=4, help="throughput: mcts.iterations")
    add("--tp-rollouts", type=int, default=1, help="throughput: mcts.rollouts")
    add("--tp-parallel", type=int, default=4, help="throughput: the parallel arm's k")
    add("--tp-proposer", default="edits", choices=("policy", "edits"), help="throughput")
    add("--repeats", type=int, default=3, help="throughput: repeats of every arm")
    add("--tp-skip-sequential", action="store_true", help="throughput: no one-at-a-time arm")
    add("--val-problems", type=int, default=20, help="dataset scope: validation problems")
    add("--ds-iterations", type=int, default=6, help="dataset scope: mcts.iterations")
    add("--ds-proposer", default="policy", choices=("policy", "edits"))
    add("--test-problems", type=int, default=60, help="dataset scope: test problems")
    add("--problems", type=int, default=16, help="problem scope: train problems")
    add("--iterations", type=int, default=4, help="problem scope: mcts.iterations")
    add("--rollouts", type=int, default=1, help="problem scope: mcts.rollouts")
    add(
        "--proposer",
        default="edits",
        choices=("policy", "edits"),
        help="problem scope (edits: the policy's proposals cost ~10 min here for 16 trees)",
    )
    add("--holdout-runs", type=int, default=2, help="problem scope: fresh re-runs per workflow")
    add("--json", type=Path, default=DEFAULT_JSON, help="where to write the results")
    if os.environ.get("BENCH_QUICK") == "1":
        parser.set_defaults(**QUICK)
    return parser.parse_args(argv if argv is not None else [])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    parts = [p for p in args.parts.split(",") if p]
    unknown = set(parts) - {"throughput", "dataset", "problem"}
    if unknown:
        sys.exit(f"bench_search: unknown part(s) {sorted(unknown)}")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.threads:
        torch.set_num_threads(args.threads)
    random.seed(args.seed)
    torch.manual_seed(args.seed)
    console = Console(width=max(Console().width, 160))
    start = time.perf_counter()
    load_before = os.getloadavg()
    cfg = make_cfg(args)
    llm = LocalLLM.from_config(cfg.model, cfg.hardware)
    dataset = load_dataset(cfg.dataset)
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = None
    results: dict[str, Any] = {
        "settings": {
            **{k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "model": OmegaConf.to_container(cfg.model),
            "executor_sampling": OmegaConf.to_container(cfg.executor.sampling),
            "mcts_defaults": OmegaConf.to_container(make_cfg(args).mcts),
            "dataset": {"name": "arithmetic", "num_problems": cfg.dataset.num_problems},
            "response_cache": False,
            "holdout_sample_offset": HOLDOUT_OFFSET,
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "commit": commit,
        }
    }
    if "throughput" in parts:
        results["throughput"] = throughput(args, llm, dataset, console)
    if "dataset" in parts:
        results["dataset_scope"] = dataset_scope(args, llm, dataset, console)
    if "problem" in parts:
        results["problem_scope"] = problem_scope(args, llm, dataset, console)
    wall = time.perf_counter() - start
    load_after = os.getloadavg()
    rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1 << 20)
    results["wall_s"] = wall
    results["cpu_s"] = time.process_time()
    results["peak_rss_gb"] = rss_gb
    results["load_avg_before"] = load_before
    results["load_avg_after"] = load_after
    cpus = os.cpu_count() or 1
    busy = max(load_before[0], load_after[0]) > 1.25 * min(cpus, max(args.threads, 1))
    console.print(
        f"total wall {wall:.0f} s, process CPU {results['cpu_s']:.0f} s, peak RSS {rss_gb:.2f} "
        f"GiB; 1-min load average {load_before[0]:.1f} -> {load_after[0]:.1f} on {cpus} CPUs"
        + (" [yellow](other work shared the machine: timings are noisy)[/]" if busy else "")
    )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2, default=str))
    console.print(f"results in {args.json}")
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
