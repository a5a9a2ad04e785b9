"""Operators on the real embedded SmolLM2 executor, the real sandbox and the real cache."""

from __future__ import annotations

import asyncio
import time

import pytest

from wfopt.datasets import Problem
from wfopt.execution import execute
from wfopt.llm.base import SamplingParams
from wfopt.operators import Ledger, LedgerEntry, Operators, answer_key, extract_code
from wfopt.workflow import build_solve, call_solve, parse_workflow

SHORT = SamplingParams(temperature=0.8, top_p=0.95, max_new_tokens=24, seed=0)
MATH = Problem(id="m1", question="What is 2 + 3?", answer="5", kind="math")
CODE = Problem(
    id="c1",
    question='def add(a, b):\n    """Return a + b."""\n',
    answer="",
    kind="code",
    entry_point="add",
    tests="assert add(1, 2) == 3\nassert add(-1, 1) == 0",
    public_tests="assert add(1, 2) == 3",
)


def test_extract_code_prefers_the_longest_fenced_block():
    text = "Here:\n```python\nx = 1\n```\nand\n```\ndef f():\n    return 2\n```"
    assert extract_code(text) == "def f():\n    return 2"
    assert extract_code("print(1)") == "print(1)"
    assert extract_code("```python\nprint(1)") == "print(1)"  # unterminated block


def test_answer_key_normalizes_numbers():
    assert answer_key("so the answer is 1,200.") == answer_key("Answer: 1200")
    assert answer_key("Answer: 7") != answer_key("Answer: 8")


def test_ledger_cost_unknown_is_not_zero():
    ledger = Ledger([LedgerEntry("generate", 3, 4, cost_usd=0.5), LedgerEntry("generate")])
    assert ledger.cost_usd == 0.5 and ledger.prompt_tokens == 3
    ledger.entries.append(LedgerEntry("generate", cost_usd=None))
    assert ledger.cost_usd is None and ledger.summary()["cost_usd"] is None


def run(coro):
    return asyncio.run(coro)


def test_ensemble_majority_needs_no_llm_call(embedded_llm):
    ops = Operators(embedded_llm, SHORT, MATH)
    chosen = run(ops.op_ensemble(MATH.question, ["Answer: 5", "Answer: 7", "the answer is 5.0"]))
    assert chosen == "Answer: 5"
    assert ops.ledger.llm_calls == 0 and ops.ledger.operator_calls == 1


def test_ensemble_tie_asks_the_llm_once(embedded_llm):
    ops = Operators(embedded_llm, SHORT, MATH)
    chosen = run(ops.op_ensemble(MATH.question, ["Answer: 5", "Answer: 7"]))
    assert chosen in ("Answer: 5", "Answer: 7")
    assert [e.operator for e in ops.ledger.entries] == ["ensemble"]


def test_operator_budget_stops_the_workflow(embedded_llm):
    source = """
async def solve(problem):
    out = []
    for i in range(25):
        out.append(await generate(problem, f"Say {i}."))
    return out
"""
    ops = Operators(embedded_llm, SamplingParams(max_new_tokens=2), MATH, max_calls=3)
    solve = build_solve(parse_workflow(source), ops.bound(), time.monotonic() + 600)
    with pytest.raises(Exception) as info:
        run(call_solve(solve, MATH.question, 600))
    assert getattr(info.value, "category", None) == "budget"
    assert ops.ledger.llm_calls == 3


def test_test_operator_uses_public_examples_in_the_sandbox(embedded_llm):
    ops = Operators(embedded_llm, SHORT, CODE)
    good = "```python\ndef add(a, b):\n    return a + b\n```"
    assert run(ops.op_test(CODE.question, good, "add")) == "PASS"
    verdict = run(ops.op_test(CODE.question, "def add(a, b):\n    return a - b", "add"))
    assert verdict.startswith("FAIL")
    assert [e.detail for e in ops.ledger.entries] == ["ok", "error"]


def test_programmer_runs_model_code_in_the_sandbox(embedded_llm):
    # a two-digit product: the greedy program's printed line is the exact answer
    product = Problem(id="m2", question="What is 37 * 48?", answer="1776", kind="math")
    greedy = SamplingParams(temperature=0.0, max_new_tokens=64)
    ops = Operators(embedded_llm, greedy, product, programmer_retries=1)
    output = run(ops.op_programmer(product.question))
    assert output == "1776"  # the last line the sandboxed program printed
    assert [e.detail for e in ops.ledger.entries if e.operator == "sandbox"] == ["ok"]
    operators = [e.operator for e in ops.ledger.entries]
    assert operators[0] == "programmer" and "sandbox" in operators
    assert ops.ledger.operator_calls == 1  # retries are not extra operator calls


def test_repeated_prompts_draw_distinct_samples(embedded_llm):
    # Self-consistency: the same prompt three times must be three samples, not one reused.
    ops = Operators(embedded_llm, SamplingParams(temperature=1.0, max_new_tokens=16), MATH)

    async def three_samples():
        return await asyncio.gather(*(ops.op_generate(MATH.question, "Guess.") for _ in range(3)))

    outs = run(three_samples())
    assert len(set(outs)) > 1


def test_execute_scores_a_baseline_and_records_the_ledger(embedded_llm):
    from wfopt.config import DatasetConfig
    from wfopt.datasets import load_dataset

    dataset = load_dataset(DatasetConfig(name="arithmetic", num_problems=20))
    problem = dataset.problems("test")[0]
    record = run(
        execute(
            "async def solve(problem):\n    return await generate(problem)\n",
            problem,
            dataset,
            embedded_llm,
            SHORT,
        )
    )
    assert record.error in (None, "no_answer", "wrong")
    assert record.ledger["llm_calls"] == 1 and record.workflow_hash
    bad = run(execute("import os", problem, dataset, embedded_llm, SHORT))
    assert bad.error == "invalid" and bad.score == 0.0 and bad.ledger == {}
