"""AFlow workflows (graph.py + prompt.py) converted into wfopt's language.

The graphs below are written for the test in AFlow's conventions (operator objects bound in
`__init__`, keyword calls, prompt constants, dict results, `(solution, cost)` returns). Each
conversion is checked against a hand-written wfopt workflow by canonical hash, so argument
order, inlined prompts and result keys all have to be right.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from wfopt.aflow import OPERATORS, AFlowError, convert_file, convert_graph, read_prompts
from wfopt.workflow import parse_workflow

HEADER = """\
from typing import Literal
import workspace.MATH.workflows.template.operator as operator
import workspace.MATH.workflows.round_3.prompt as prompt_custom
from scripts.async_llm import create_llm_instance
from scripts.evaluator import DatasetType


class Workflow:
    def __init__(self, name: str, llm_config, dataset: DatasetType) -> None:
        self.name = name
        self.dataset = dataset
        self.llm = create_llm_instance(llm_config)
"""

MATH_GRAPH = (
    HEADER
    + """\
        self.custom = operator.Custom(self.llm)
        self.answer_generate = operator.AnswerGenerate(self.llm)
        self.sc_ensemble = operator.ScEnsemble(self.llm)
        self.programmer = operator.Programmer(self.llm)
        self.review = operator.Review(self.llm)
        self.revise = operator.Revise(self.llm)
        self.format = operator.Format(self.llm)

    async def __call__(self, problem: str):
        \"\"\"Drafts, a program, a vote, a review.\"\"\"
        solutions = []
        for _ in range(2):
            draft = await self.custom(input=problem, instruction=prompt_custom.SOLVE_PROMPT)
            solutions.append(draft["response"])
        thought = await self.answer_generate(input=problem)
        solutions.append(thought["answer"])
        code = await self.programmer(analysis=prompt_custom.ANALYSIS, problem=problem)
        solutions.append(code["output"])
        best = await self.sc_ensemble(solutions=solutions, problem=problem)
        review = await self.review(problem=problem, solution=best["response"])
        solution = best["response"]
        if not review["review_result"]:
            revised = await self.revise(problem=problem, solution=solution, feedback=review["feedback"])
            solution = revised["solution"]
        final = await self.format(problem=problem, solution=solution)
        return final["response"], self.llm.get_usage_summary()["total_cost"]
"""
)
MATH_PROMPTS = '''"""Prompts of round 3."""
SOLVE_PROMPT = """Solve the problem step by step.
Give the final answer at the end."""
ANALYSIS = "Compute it exactly." " No rounding."
'''
MATH_EXPECTED = """\
async def solve(problem):
    solutions = []
    for _ in range(2):
        d = await generate(problem, "Solve the problem step by step.\\nGive the final answer at the end.")
        solutions.append(d)
    t = await answer_generate(problem)
    solutions.append(t)
    c = await programmer(problem, "Compute it exactly. No rounding.")
    solutions.append(c)
    best = await ensemble(problem, solutions)
    feedback = await review(problem, best)
    solution = best
    if not feedback.upper().startswith("CORRECT"):
        r = await revise(problem, solution, feedback)
        solution = r
    f = await format_answer(problem, solution)
    return f
"""

CODE_GRAPH = """\
import workspace.HumanEval.workflows.template.operator as operator
import workspace.HumanEval.workflows.round_2.prompt as prompt_custom
from scripts.async_llm import create_llm_instance


class Workflow:
    def __init__(self, name, llm_config, dataset):
        self.llm = create_llm_instance(llm_config)
        self.custom_code_generate = operator.CustomCodeGenerate(self.llm)
        self.test = operator.Test(self.llm)

    async def __call__(self, problem, entry_point):
        solution = await self.custom_code_generate(
            problem=problem, entry_point=entry_point, instruction=prompt_custom.CODE_PROMPT
        )
        test = await self.test(problem=problem, solution=solution["response"], entry_point=entry_point)
        if test["result"]:
            return test["solution"], self.llm.get_usage_summary()["total_cost"]
        drafts = [await self.custom_code_generate(problem, entry_point, "Fix it.") for _ in range(2)]
        return drafts[0]["response"], self.llm.get_usage_summary()["total_cost"]
"""
CODE_EXPECTED = """\
async def solve(problem):
    s = await code_generate(problem, entry_point, "Write clean code.")
    kept = s
    t = await test(problem, s, entry_point)
    if t.upper().startswith("PASS"):
        return kept
    drafts = [await code_generate(problem, entry_point, "Fix it.") for _ in range(2)]
    return drafts[0]
"""


def write_graph(directory: Path, graph: str, prompts: str | None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "graph.py").write_text(graph)
    if prompts is not None:
        (directory / "prompt.py").write_text(prompts)
    return directory


def test_math_graph_converts_to_the_hand_written_workflow(tmp_path):
    graph_dir = write_graph(tmp_path / "round_3", MATH_GRAPH, MATH_PROMPTS)
    converted = convert_file(graph_dir)
    assert parse_workflow(converted).hash == parse_workflow(MATH_EXPECTED).hash, converted
    assert "prompt_custom" not in converted and "self" not in converted


def test_code_graph_reads_the_entry_point_global_and_keeps_the_tested_solution(tmp_path):
    graph_dir = write_graph(tmp_path / "round_2", CODE_GRAPH, 'CODE_PROMPT = "Write clean code."\n')
    converted = convert_file(graph_dir / "graph.py")
    assert parse_workflow(converted).hash == parse_workflow(CODE_EXPECTED).hash, converted


def test_every_operator_kind_is_covered_by_the_two_graphs():
    used = {
        line.split("operator.")[1].split("(")[0]
        for line in (MATH_GRAPH + CODE_GRAPH).splitlines()
        if "= operator." in line
    }
    assert used == set(OPERATORS)


def _graph(body: str, init: str = "        self.custom = operator.Custom(self.llm)\n") -> str:
    return HEADER + init + "\n    async def __call__(self, problem):\n" + body


@pytest.mark.parametrize(
    ("graph", "prompts", "message"),
    [
        ("import os\n" + MATH_GRAPH, MATH_PROMPTS, r"graph\.py:1: import of `os` is not supported"),
        (
            _graph("        return self.helper(problem)\n"),
            "",
            r"graph\.py:16: `self\.helper` cannot be converted",
        ),
        (
            HEADER.replace("self.llm = create", "self.tool = open('x')\n        self.llm = create")
            + "\n    async def __call__(self, problem):\n        return problem\n",
            "",
            r"graph\.py:12: `self\.tool = open\('x'\)` cannot be converted",
        ),
        (
            _graph(
                "        c = await self.programmer(problem=problem)\n        return c['code']\n",
                "        self.programmer = operator.Programmer(self.llm)\n",
            ),
            "",
            r"graph\.py:17: programmer's result has no 'code' in wfopt",
        ),
        (
            _graph("        while True:\n            pass\n"),
            "",
            r"graph\.py: not expressible as a wfopt workflow: line 16: While is not allowed",
        ),
        (
            _graph(
                "        return (await self.custom(input=problem, instruction=prompt_custom.NOPE))['response']\n"
            ),
            'SOLVE_PROMPT = "x"\n',
            r"graph\.py:16: prompt `NOPE` is not defined in prompt\.py",
        ),
        (
            _graph("        return problem\n", "        self.x = operator.MdEnsemble(self.llm)\n"),
            "",
            r"graph\.py:13: operator `MdEnsemble` has no wfopt counterpart",
        ),
    ],
    ids=[
        "import",
        "self-attribute",
        "init-other",
        "unknown-key",
        "while",
        "missing-prompt",
        "unknown-op",
    ],
)
def test_unconvertible_constructs_are_errors_with_the_line(tmp_path, graph, prompts, message):
    graph_dir = write_graph(tmp_path / "g", graph, prompts)
    with pytest.raises(AFlowError, match=message):
        convert_file(graph_dir)


def test_prompt_module_may_only_hold_string_constants(tmp_path):
    path = tmp_path / "prompt.py"
    path.write_text('A = "ok"\nB = open("secret").read()\n')
    with pytest.raises(AFlowError, match=r"prompt\.py:2: prompt\.py may only assign string"):
        read_prompts(path)
    with pytest.raises(AFlowError, match=r"needs prompt\.py"):
        convert_graph(
            _graph(
                "        return (await self.custom(input=problem, instruction=prompt_custom.A))['response']\n"
            ),
            None,
        )


def test_import_aflow_then_evaluate_the_graph_directly(cli, tmp_path):
    """`wfopt import-aflow` writes the file users see; `wfopt evaluate workflow.path=graph.py`
    runs the same conversion through the validator, sandbox (programmer) and ledger."""
    graph = _graph(
        "        code = await self.programmer(problem=problem, analysis=prompt_custom.HINT)\n"
        "        return code['output'], self.llm.get_usage_summary()['total_cost']\n",
        "        self.programmer = operator.Programmer(self.llm)\n",
    )
    graph_dir = write_graph(tmp_path / "aflow", graph, 'HINT = "Use integer arithmetic."\n')
    out = tmp_path / "converted.py"
    cli("import-aflow", str(graph_dir), str(out))
    written = out.read_text()
    assert (
        parse_workflow(written).hash
        == parse_workflow(
            "async def solve(problem):\n"
            '    out = await programmer(problem, "Use integer arithmetic.")\n'
            "    return out\n"
        ).hash
    )

    run = tmp_path / "eval"
    cli(
        "evaluate",
        f"workflow.path={graph_dir / 'graph.py'}",
        "dataset.limit=2",
        "dataset.num_problems=60",
        "executor.sampling.max_new_tokens=48",
        f"executor.cache_path={tmp_path / 'cache.sqlite'}",
        "tracking.wandb=false",
        "show_progress=false",
        "report=false",
        f"hydra.run.dir={run}",
    )
    summary = json.loads((run / "summary.json").read_text())
    assert summary["workflow_hash"] == parse_workflow(written).hash
    records = [json.loads(line) for line in (run / "results.jsonl").read_text().splitlines()]
    assert len(records) == 2
    assert all(r["ledger"]["llm_calls"] >= 1 and r["error"] != "invalid" for r in records)

    bad = write_graph(tmp_path / "bad", "import os\n" + graph, "")
    failed = cli("evaluate", f"workflow.path={bad / 'graph.py'}", expect_ok=False)
    assert failed.returncode != 0 and "graph.py:1: import of `os`" in failed.stderr
