"""Executor throughput of the local backend (the embedded SmolLM2-135M, fp32, CPU).

1. **Calls**: CALLS operator calls batched vs one at a time. Same prompts, every call
   generates exactly NEW_TOKENS (stop tokens ignored). Batched = CALLS concurrent `complete`
   calls; sequential = each awaited in turn. Reports calls/s, tokens/s and their ratio (median
   of per-repeat ratios).
2. **Workflows**: RUNS concurrent runs of each workflow of WORKFLOWS (`wfopt.execution.execute`
   on fixed built-in arithmetic problems, sampled at T=0.7 with MAX_TOKENS per call), on the
   static batcher (`model.batching=static`) and on the continuous one, the order alternating
   over REPEATS. Reports workflow runs/min, completion tokens/s, mean batch (rows per decode
   step), p50/p95 latency and queue wait per call, and new/old runs/min (median of per-repeat
   ratios). Sampling is batch-independent, so both schedulers generate the same tokens: the
   comparison is of scheduling alone (checked: their answers are counted as equal or not).
   **2b. A stream**: STREAM_RUNS runs of `self_refine`, RUNS at a time (a run starts when
   one ends), the shape of `wfopt evaluate` (`concurrency` problems at once): runs no longer
   start together, so their calls arrive while others decode.
3. **Ceiling**: tokens/s of one batch of CEILING_ROWS rows decoding CEILING_TOKENS tokens
   each (stop tokens ignored, prefill included), for each batch size of CURVE_ROWS (median of
   REPEATS): what this machine does at best, so the workflow figures read as a fraction of
   it. RUNS concurrent runs never have more than RUNS calls in flight, so the RUNS-row figure
   bounds what any scheduler can reach on the workflow load.

`BENCH_QUICK=1`: a ~2 minute smoke run (fewer calls, runs, tokens; one repeat). Peak RSS and
the load average are printed: a busy machine skews every number here.
"""

from __future__ import annotations

import asyncio
import os
import resource
import statistics
import sys
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf
from rich.console import Console
from rich.table import Table

from wfopt.baselines import load_baseline
from wfopt.config import DatasetConfig, HardwareConfig, ModelConfig
from wfopt.datasets import load_dataset
from wfopt.execution import Record, execute
from wfopt.llm.base import Completion, SamplingParams
from wfopt.llm.local import LocalLLM

QUICK = os.environ.get("BENCH_QUICK", "") not in ("", "0")
CALLS = 8 if QUICK else 32
NEW_TOKENS = 16 if QUICK else 64
REPEATS = 1 if QUICK else 3
TARGET = 8.0  # batched vs sequential speed-up the backend must reach (full size)
WORKFLOWS = ["self_refine", "cot_sc"]
RUNS = 8 if QUICK else 16
STREAM_RUNS = 3 * RUNS
MAX_TOKENS = 24 if QUICK else 96
CEILING_ROWS = 64
CURVE_ROWS = (1, 8, RUNS, CEILING_ROWS)
CEILING_TOKENS = 8 if QUICK else 64

TOPICS = ["apples", "rivers", "prime numbers", "trains", "clouds", "chess", "bread", "stars"]
PROMPTS = [
    [{"role": "user", "content": f"Problem {i}: write one sentence about {TOPICS[i % 8]}."}]
    for i in range(max(CALLS, CEILING_ROWS))
]


def load() -> LocalLLM:
    repo = Path(__file__).resolve().parents[1]
    cfg = OmegaConf.merge(
        OmegaConf.structured(ModelConfig), OmegaConf.load(repo / "conf/model/smollm2_135m.yaml")
    )
    return LocalLLM.from_config(cfg, HardwareConfig())  # type: ignore[arg-type]


def sibling(llm: LocalLLM, name: str, **options) -> LocalLLM:
    """Another backend over the same weights (own scheduler and metrics)."""
    return LocalLLM(
        llm.model,
        llm.tokenizer,
        name,
        max_batch_size=options.pop("max_batch_size", llm.max_batch_size),
        chat_template=llm.chat_template,
        **options,
    )


def quantile(values: list[float], q: float) -> float:
    """The q-quantile of `values` (linear interpolation); 0 for none."""
    if not values:
        return 0.0
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


# ------------------------------------------------------------------------------- 1. calls


async def batched(llm: LocalLLM, params: SamplingParams) -> tuple[float, list[Completion]]:
    start = time.perf_counter()
    outs = await asyncio.gather(*(llm.complete(p, params) for p in PROMPTS[:CALLS]))
    return time.perf_counter() - start, list(outs)


async def sequential(llm: LocalLLM, params: SamplingParams) -> tuple[float, list[Completion]]:
    start = time.perf_counter()
    outs = [await llm.complete(p, params) for p in PROMPTS[:CALLS]]
    return time.perf_counter() - start, outs


def bench_calls(console: Console, base: LocalLLM) -> None:
    llm = sibling(base, "calls", max_batch_size=CALLS, ignore_eos=True)
    params = SamplingParams(temperature=0.0, max_new_tokens=NEW_TOKENS)
    asyncio.run(batched(llm, SamplingParams(max_new_tokens=4)))  # warm-up
    times: dict[str, list[float]] = {"batched": [], "sequential": []}
    for repeat in range(REPEATS):
        for mode, run in (("batched", batched), ("sequential", sequential)):
            prefills = llm.batches
            seconds, outs = asyncio.run(run(llm, params))
            assert all(o.completion_tokens == NEW_TOKENS for o in outs), "EOS was not ignored"
            times[mode].append(seconds)
            console.print(
                f"repeat {repeat + 1}/{REPEATS} {mode}: {seconds:.1f} s "
                f"in {llm.batches - prefills} prefill(s)"
            )
    median = {k: statistics.median(v) for k, v in times.items()}
    table = Table(title=f"1. calls: {CALLS} calls x {NEW_TOKENS} new tokens, median of {REPEATS}")
    for column in ("mode", "median s", "calls/s", "tokens/s", "runs (s)"):
        table.add_column(column, justify="right")
    for mode in ("sequential", "batched"):
        seconds = median[mode]
        table.add_row(
            mode,
            f"{seconds:.2f}",
            f"{CALLS / seconds:.2f}",
            f"{CALLS * NEW_TOKENS / seconds:.0f}",
            ", ".join(f"{t:.1f}" for t in times[mode]),
        )
    console.print(table)
    ratios = [s / b for s, b in zip(times["sequential"], times["batched"], strict=True)]
    ratio = statistics.median(ratios)
    verdict = "[green]meets[/]" if ratio >= TARGET else "[red]misses[/]"
    console.print(
        f"speed-up batched vs sequential: {ratio:.1f}x (median of per-repeat ratios "
        f"{', '.join(f'{r:.1f}' for r in ratios)}; {verdict} the >= {TARGET:.0f}x target"
        + (", which is set for the full size)" if QUICK else ")")
    )


# ---------------------------------------------------------------------------- 2. workflows


async def run_workflows(
    llm: LocalLLM, source: str, problems: list, dataset, params: SamplingParams, at_once: int
) -> tuple[float, list[Record]]:
    """A run of `source` per problem, at most `at_once` running."""
    slots = asyncio.Semaphore(at_once)

    async def run(problem) -> Record:
        async with slots:
            return await execute(source, problem, dataset, llm, params, timeout_s=3600)

    start = time.perf_counter()
    records = await asyncio.gather(*(run(p) for p in problems))
    return time.perf_counter() - start, list(records)


def measure(llm: LocalLLM, source: str, problems: list, dataset, params) -> dict:
    """One arm: runs of `source` on `llm`, RUNS at a time; what it did, from its metrics."""
    steps, rows, calls = llm.decode_steps, llm.decoded_rows, len(llm.latencies)
    seconds, records = asyncio.run(run_workflows(llm, source, problems, dataset, params, RUNS))
    assert not [r for r in records if r.error == "timeout"], "a run timed out"
    tokens = sum(r.ledger.get("completion_tokens", 0) for r in records)
    latencies = list(llm.latencies)[calls:]
    waits = list(llm.queue_waits)[calls:]
    return {
        "seconds": seconds,
        "runs_per_min": 60 * len(records) / seconds,
        "tokens_per_s": tokens / seconds,
        "calls": len(latencies),
        "mean_batch": (llm.decoded_rows - rows) / max(1, llm.decode_steps - steps),
        "p50": quantile(latencies, 0.5),
        "p95": quantile(latencies, 0.95),
        "wait_p50": quantile(waits, 0.5),
        "wait_p95": quantile(waits, 0.95),
        "answers": [r.prediction for r in records],
    }


def bench_workflows(
    console: Console, base: LocalLLM, runs: int = RUNS, workflows: list[str] = WORKFLOWS
) -> dict[str, float]:
    """Static vs continuous on workflow-shaped load (`runs` runs, RUNS at a time); the
    tokens/s of each (for the ceiling)."""
    arms = {
        "static": sibling(base, "static", batching="static"),
        "continuous": sibling(base, "continuous", batching="continuous"),
    }
    dataset = load_dataset(OmegaConf.structured(DatasetConfig(num_problems=runs * 5)))
    problems = dataset.problems("test")[:runs]
    params = SamplingParams(temperature=0.7, top_p=0.95, max_new_tokens=MAX_TOKENS, seed=0)
    shape = (
        f"2. workflows: {runs} concurrent runs"
        if runs == RUNS
        else f"2b. a stream: {runs} runs, {RUNS} at a time"
    )
    table = Table(
        title=f"{shape}, {MAX_TOKENS} tokens per call at most, max_batch_size "
        f"{base.max_batch_size}, median of {REPEATS}"
    )
    for column in (
        "workflow",
        "batching",
        "runs/min",
        "tokens/s",
        "mean batch",
        "calls",
        "latency p50/p95 s",
        "queue wait p50/p95 s",
    ):
        table.add_column(column, justify="right")
    for llm in arms.values():  # warm-up: the first batches of a process run slow
        measure(llm, load_baseline("io"), problems[:4], dataset, params)
    best: dict[str, float] = {}
    for name in workflows:
        source = load_baseline(name)
        results: dict[str, list[dict]] = {arm: [] for arm in arms}
        for repeat in range(REPEATS):
            order = list(arms) if repeat % 2 == 0 else list(arms)[::-1]
            for arm in order:
                result = measure(arms[arm], source, problems, dataset, params)
                results[arm].append(result)
                console.print(
                    f"{name} repeat {repeat + 1}/{REPEATS} {arm}: {result['seconds']:.1f} s, "
                    f"mean batch {result['mean_batch']:.1f}"
                )
        for arm in arms:
            runs = results[arm]
            med = {k: statistics.median(r[k] for r in runs) for k in runs[0] if k != "answers"}
            best[f"{name}{'' if runs == RUNS else ' stream'} {arm}"] = med["tokens_per_s"]
            table.add_row(
                name,
                arm,
                f"{med['runs_per_min']:.1f}",
                f"{med['tokens_per_s']:.0f}",
                f"{med['mean_batch']:.1f}",
                f"{med['calls']:.0f}",
                f"{med['p50']:.1f} / {med['p95']:.1f}",
                f"{med['wait_p50']:.1f} / {med['wait_p95']:.1f}",
            )
        ratios = [
            new["runs_per_min"] / old["runs_per_min"]
            for new, old in zip(results["continuous"], results["static"], strict=True)
        ]
        same = sum(
            a == b
            for new, old in zip(results["continuous"], results["static"], strict=True)
            for a, b in zip(new["answers"], old["answers"], strict=True)
        )
        table.add_row(
            name,
            "new/old",
            f"{statistics.median(ratios):.2f}x",
            "",
            "",
            "",
            "",
            f"same answers {same}/{len(problems) * REPEATS}",
        )
    console.print(table)
    return best


# ------------------------------------------------------------------------------ 3. ceiling


def batch_tokens_per_s(base: LocalLLM, rows: int) -> float:
    """Tokens/s of one `rows`-row batch decoding CEILING_TOKENS tokens each."""
    llm = sibling(base, f"ceiling-{rows}", max_batch_size=rows, ignore_eos=True)
    prompts = [llm.render(p) for p in PROMPTS[:rows]]
    params = [SamplingParams(max_new_tokens=CEILING_TOKENS)] * rows
    start = time.perf_counter()
    outs = llm.generate_batch(prompts, params, [0] * rows)
    return sum(o.completion_tokens for o in outs) / (time.perf_counter() - start)


def bench_ceiling(console: Console, base: LocalLLM, seen: dict[str, float]) -> None:
    curve = {
        rows: statistics.median(batch_tokens_per_s(base, rows) for _ in range(REPEATS))
        for rows in CURVE_ROWS
    }
    console.print(
        f"3. ceiling: one batch x {CEILING_TOKENS} tokens per row (prefill included), median "
        f"of {REPEATS}: "
        + ", ".join(f"{rows} rows {tps:.0f} tokens/s" for rows, tps in curve.items())
    )
    for label, tokens_per_s in seen.items():
        console.print(
            f"   {label}: {tokens_per_s:.0f} tokens/s = {tokens_per_s / curve[CEILING_ROWS]:.0%} "
            f"of {CEILING_ROWS} rows; {RUNS} rows (all {RUNS} runs in one batch, the most "
            f"this load can fill) would be {curve[RUNS] / tokens_per_s:.2f}x it"
        )


def main() -> None:
    console = Console()
    base = load()
    load_before = os.getloadavg()[0]
    console.print(
        f"executor benchmark{' (BENCH_QUICK)' if QUICK else ''}: SmolLM2-135M, fp32, "
        f"{torch.get_num_threads()} threads"
    )
    bench_calls(console, base)
    seen = bench_workflows(console, base)
    seen |= bench_workflows(console, base, STREAM_RUNS, ["self_refine"])
    bench_ceiling(console, base, seen)
    load_after = os.getloadavg()[0]
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    peak_gb = rss_kb / (1 << 30 if sys.platform == "darwin" else 1 << 20)
    cpus = os.cpu_count() or 1
    busy = max(load_before, load_after) > 1.25 * cpus  # this benchmark alone loads ~all CPUs
    console.print(
        f"peak RSS {peak_gb:.2f} GiB; 1-min load average {load_before:.1f} -> "
        f"{load_after:.1f} on {cpus} CPUs"
        + (" [yellow](other work shared the machine: numbers are noisy)[/]" if busy else "")
    )


if __name__ == "__main__":
    main()
