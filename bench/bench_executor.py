"""Executor throughput: 32 operator calls through the batched local backend vs one at a time.

Same model (the embedded SmolLM2-135M, fp32, CPU), same 32 prompts, same number of new tokens
per call (EOS ignored so every call generates exactly NEW_TOKENS). Reports calls/s and
tokens/s of both, their ratio (median of REPEATS runs), and peak RSS.
"""

from __future__ import annotations

import asyncio
import resource
import statistics
import time

from omegaconf import OmegaConf
from rich.console import Console
from rich.table import Table

from wfopt.config import HardwareConfig, ModelConfig
from wfopt.llm.base import SamplingParams
from wfopt.llm.local import LocalLLM

CALLS = 32
NEW_TOKENS = 64
REPEATS = 3

TOPICS = ["apples", "rivers", "prime numbers", "trains", "clouds", "chess", "bread", "stars"]
PROMPTS = [
    [{"role": "user", "content": f"Problem {i}: write one sentence about {TOPICS[i % 8]}."}]
    for i in range(CALLS)
]


def load() -> LocalLLM:
    cfg = OmegaConf.merge(
        OmegaConf.structured(ModelConfig),
        OmegaConf.load("conf/model/smollm2_135m.yaml"),
        {"max_batch_size": CALLS},
    )
    llm = LocalLLM.from_config(cfg, HardwareConfig())
    llm.ignore_eos = True
    return llm


async def batched(llm: LocalLLM, params: SamplingParams) -> float:
    start = time.perf_counter()
    await asyncio.gather(*(llm.complete(p, params) for p in PROMPTS))
    return time.perf_counter() - start


async def sequential(llm: LocalLLM, params: SamplingParams) -> float:
    start = time.perf_counter()
    for p in PROMPTS:
        await llm.complete(p, params)
    return time.perf_counter() - start


def main() -> None:
    llm = load()
    params = SamplingParams(temperature=0.0, max_new_tokens=NEW_TOKENS)
    asyncio.run(batched(llm, SamplingParams(max_new_tokens=4)))  # warm-up
    times: dict[str, list[float]] = {"batched": [], "sequential": []}
    for _ in range(REPEATS):
        times["batched"].append(asyncio.run(batched(llm, params)))
        times["sequential"].append(asyncio.run(sequential(llm, params)))
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    median = {k: statistics.median(v) for k, v in times.items()}
    table = Table(title=f"executor: {CALLS} calls x {NEW_TOKENS} new tokens, median of {REPEATS}")
    for column in ("mode", "median s", "calls/s", "tokens/s", "runs (s)"):
        table.add_column(column, justify="right")
    for mode in ("sequential", "batched"):
        seconds = median[mode]
        runs = ", ".join(f"{t:.1f}" for t in times[mode])
        table.add_row(
            mode,
            f"{seconds:.2f}",
            f"{CALLS / seconds:.2f}",
            f"{CALLS * NEW_TOKENS / seconds:.0f}",
            runs,
        )
    console = Console()
    console.print(table)
    ratios = [s / b for s, b in zip(times["sequential"], times["batched"], strict=True)]
    console.print(
        f"speed-up batched vs sequential: {statistics.median(ratios):.1f}x "
        f"(median of per-repeat ratios; target >= 8x); peak RSS {peak_gb:.2f} GB"
    )


if __name__ == "__main__":
    main()
