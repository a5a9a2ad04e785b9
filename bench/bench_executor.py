"""Executor throughput: 32 operator calls through the batched local backend vs one at a time.

Same model (the embedded SmolLM2-135M, fp32, CPU), same 32 prompts, same number of new tokens
per call (stop tokens ignored, so every call generates exactly NEW_TOKENS). Batched = 32
concurrent `complete` calls (the dynamic batcher decodes them together); sequential = each
call awaited in turn. Reports calls/s and tokens/s of both, their ratio (median of REPEATS
per-repeat ratios), peak RSS, and the load average, since a busy machine skews the numbers.
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

from wfopt.config import HardwareConfig, ModelConfig
from wfopt.llm.base import Completion, SamplingParams
from wfopt.llm.local import LocalLLM

CALLS = 32
NEW_TOKENS = 64
REPEATS = 3
TARGET = 8.0

TOPICS = ["apples", "rivers", "prime numbers", "trains", "clouds", "chess", "bread", "stars"]
PROMPTS = [
    [{"role": "user", "content": f"Problem {i}: write one sentence about {TOPICS[i % 8]}."}]
    for i in range(CALLS)
]


def load() -> LocalLLM:
    repo = Path(__file__).resolve().parents[1]
    cfg = OmegaConf.merge(
        OmegaConf.structured(ModelConfig),
        OmegaConf.load(repo / "conf/model/smollm2_135m.yaml"),
        {"max_batch_size": CALLS},
    )
    llm = LocalLLM.from_config(cfg, HardwareConfig())  # type: ignore[arg-type]
    llm.ignore_eos = True
    return llm


async def batched(llm: LocalLLM, params: SamplingParams) -> tuple[float, list[Completion]]:
    start = time.perf_counter()
    outs = await asyncio.gather(*(llm.complete(p, params) for p in PROMPTS))
    return time.perf_counter() - start, list(outs)


async def sequential(llm: LocalLLM, params: SamplingParams) -> tuple[float, list[Completion]]:
    start = time.perf_counter()
    outs = [await llm.complete(p, params) for p in PROMPTS]
    return time.perf_counter() - start, outs


def main() -> None:
    console = Console()
    llm = load()
    params = SamplingParams(temperature=0.0, max_new_tokens=NEW_TOKENS)
    asyncio.run(batched(llm, SamplingParams(max_new_tokens=4)))  # warm-up
    load_before = os.getloadavg()[0]
    times: dict[str, list[float]] = {"batched": [], "sequential": []}
    for repeat in range(REPEATS):
        for mode, run in (("batched", batched), ("sequential", sequential)):
            batches_before = llm.batches
            seconds, outs = asyncio.run(run(llm, params))
            assert all(o.completion_tokens == NEW_TOKENS for o in outs), "EOS was not ignored"
            times[mode].append(seconds)
            console.print(
                f"repeat {repeat + 1}/{REPEATS} {mode}: {seconds:.1f} s "
                f"in {llm.batches - batches_before} batch(es)"
            )
    load_after = os.getloadavg()[0]
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    peak_gb = rss_kb / (1 << 30 if sys.platform == "darwin" else 1 << 20)
    median = {k: statistics.median(v) for k, v in times.items()}

    table = Table(
        title=f"executor: {CALLS} calls x {NEW_TOKENS} new tokens (SmolLM2-135M, fp32, "
        f"{torch.get_num_threads()} threads), median of {REPEATS}"
    )
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
    cpus = os.cpu_count() or 1
    busy = max(load_before, load_after) > 1.25 * cpus  # this benchmark alone loads ~all CPUs
    console.print(
        f"speed-up batched vs sequential: {ratio:.1f}x (median of per-repeat ratios "
        f"{', '.join(f'{r:.1f}' for r in ratios)}; {verdict} the >= {TARGET:.0f}x target)\n"
        f"peak RSS {peak_gb:.2f} GiB; 1-min load average {load_before:.1f} -> "
        f"{load_after:.1f} on {cpus} CPUs"
        + (" [yellow](other work shared the machine: numbers are noisy)[/]" if busy else "")
    )


if __name__ == "__main__":
    main()
