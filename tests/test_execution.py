"""Running and scoring workflows (`wfopt.execution`): summary math, and the time limit of a
run queued behind others on SmolLM2."""

from __future__ import annotations

from wfopt.execution import Record, summarize


def record(score: float, error: str | None = None, cost: float | None = 0.0) -> Record:
    ledger = {"prompt_tokens": 10, "completion_tokens": 5, "llm_calls": 1, "cost_usd": cost}
    return Record("p", "x", "y", score, error, "", "h", 0.1, ledger)


def test_summarize_counts_and_unknown_cost():
    records = [record(1.0), record(0.0, "timeout"), record(0.0, "invalid"), record(1.0)]
    summary = summarize(records, wall_time_s=2.0)
    assert summary["n"] == 4 and summary["accuracy"] == 0.5
    assert summary["errors"] == {"timeout": 1, "invalid": 1}
    assert summary["mean_tokens"] == 15 and summary["cost_usd"] == 0.0
    assert summarize([*records, record(1.0, cost=None)], 1.0)["cost_usd"] is None


def test_queue_wait_does_not_count_against_the_time_limit(embedded_llm):
    """A run stuck behind another request in a one-row backend waits longer than its own
    limit yet does not time out; a run whose own decoding outlasts the limit does, and its
    abandoned row leaves the batch."""
    import asyncio

    from omegaconf import OmegaConf

    from wfopt.config import DatasetConfig
    from wfopt.datasets import load_dataset
    from wfopt.execution import execute
    from wfopt.llm.base import SamplingParams
    from wfopt.llm.local import LocalLLM

    dataset = load_dataset(OmegaConf.structured(DatasetConfig(num_problems=10)))
    problem = dataset.problems("train")[0]
    io = "async def solve(problem):\n    return await generate(problem)\n"
    llm = LocalLLM(
        embedded_llm.model, embedded_llm.tokenizer, "one-row", max_batch_size=1, ignore_eos=True
    )
    short = SamplingParams(max_new_tokens=4)

    async def main():
        # the run's own work, measured: its limit leaves room for it on a loaded machine
        alone = await execute(io, problem, dataset, llm, short, timeout_s=600)
        limit = 3 * alone.duration_s + 1
        blocker = asyncio.create_task(
            llm.complete(
                [{"role": "user", "content": "Count."}], SamplingParams(max_new_tokens=5000)
            )
        )
        while llm.decode_steps < 1:  # the blocker holds the only row
            await asyncio.sleep(0.005)
        run = asyncio.create_task(execute(io, problem, dataset, llm, short, timeout_s=limit))
        await asyncio.sleep(limit + 1)  # the run waits in the queue past its limit...
        blocker.cancel()  # ...until the blocker gives up and its row leaves
        queued = await run
        steps = llm.decode_steps
        overrun = await execute(
            io, problem, dataset, llm, SamplingParams(max_new_tokens=400), timeout_s=0.5
        )
        await asyncio.sleep(0.5)  # room for steps the abandoned row would still take
        return limit, queued, overrun, llm.decode_steps - steps

    limit, queued, overrun, overrun_steps = asyncio.run(main())
    assert queued.error != "timeout" and queued.ledger["completion_tokens"] == 4
    assert list(llm.queue_waits)[1] > limit and queued.duration_s > limit  # it waited so long
    assert overrun.error == "timeout"
    assert overrun_steps < 300  # cancelled mid-decode: its row left, 400 tokens never ran


def test_invalid_workflows_are_written_again_up_to_the_limit(embedded_llm, tmp_path):
    """The real policy cut to 3 tokens never finishes a workflow: each slot is written
    1 + invalid_retries times, each a different request (none answered from the response
    cache), and stays invalid; at 40 tokens its greedy workflow is valid at once."""
    import asyncio

    from omegaconf import OmegaConf

    from wfopt.config import DatasetConfig
    from wfopt.datasets import load_dataset
    from wfopt.execution import evaluate_policy, policy_sampling, policy_summary
    from wfopt.llm import CachedLLM
    from wfopt.llm.base import SamplingParams

    dataset = load_dataset(OmegaConf.structured(DatasetConfig(num_problems=10)))
    problems = dataset.problems("test")[:2]
    policy = CachedLLM(embedded_llm, tmp_path / "policy.sqlite")

    def run(max_tokens: int):
        return asyncio.run(
            evaluate_policy(
                problems, dataset, policy, embedded_llm,
                policy_params=policy_sampling(0.0, max_tokens, seed=0),
                executor_params=SamplingParams(max_new_tokens=8),
                invalid_retries=2, show_progress=False,
            )
        )  # fmt: skip

    cut = run(3)
    assert [r.attempts for r in cut] == [3, 3] and {r.error for r in cut} == {"invalid"}
    assert policy.misses == 6 and policy.hits == 0
    summary = policy_summary(cut, 1.0)
    assert summary["valid_rate"] == summary["first_valid_rate"] == 0.0

    whole = run(40)
    assert [r.attempts for r in whole] == [1, 1] and all(r.error != "invalid" for r in whole)
    assert policy.misses == 8  # one request per problem: nothing written twice
    summary = policy_summary(whole, 1.0)
    assert summary["valid_rate"] == summary["first_valid_rate"] == 1.0
