"""Scoring code answers: run the candidate against the hidden tests in the sandbox."""

from __future__ import annotations

import re

from wfopt.datasets.base import Problem, Score

_FENCE = re.compile(r"```(?:python|py)?[ \t]*\n(.*?)(?:```|$)", re.DOTALL)


def candidate_program(problem: Problem, prediction: str) -> str:
    """The candidate as a full module: fences stripped; a bare body gets the prompt prepended."""
    blocks = _FENCE.findall(prediction)
    code = max(blocks, key=len) if blocks else prediction
    entry = problem.entry_point
    if entry and not re.search(rf"^\s*def\s+{re.escape(entry)}\s*\(", code, re.MULTILINE):
        code = problem.question + code  # a completion of the prompt's function body
    return code


def test_program(problem: Problem, prediction: str) -> str:
    program = candidate_program(problem, prediction)
    tests = problem.tests or ""
    call = f"\ncheck({problem.entry_point})\n" if "def check(" in tests else "\n"
    return f"{program}\n\n{tests}\n{call}"


def _category(status: str, stderr: str) -> str:
    if status == "error":
        if "SyntaxError" in stderr or "IndentationError" in stderr:
            return "syntax_error"
        if "AssertionError" in stderr:
            return "wrong"
        return "runtime_error"
    return status  # timeout | memory | output_limit | killed | sandbox_error


async def score_code(problem: Problem, prediction: str, timeout_s: float) -> Score:
    """1.0 when the hidden tests pass in the sandbox, else 0 with the failure category."""
    from wfopt.sandbox import SandboxLimits, arun_python

    if not prediction.strip():
        return Score(0.0, "no_answer")
    limits = SandboxLimits(timeout_s=timeout_s, cpu_s=max(1, int(timeout_s)))
    result = await arun_python(test_program(problem, prediction), limits=limits)
    if result.ok:
        return Score(1.0)
    tail = (result.stderr.strip().splitlines() or [result.status])[-1]
    return Score(0.0, _category(result.status, result.stderr), detail=tail[:300])
