"""Scoring code: run the candidate against the hidden tests in the sandbox.

The sandboxed program is a small harness, not the plain concatenation, because the score is
an RL reward and a policy learns whatever earns it:

* it passes only if the harness prints a random token it read from stdin after the tests ran,
  so `sys.exit(0)` / `os._exit(0)` at the top of a candidate cannot skip the tests;
* the candidate runs with `__name__ != "__main__"` (demo blocks and `input()` calls under
  `if __name__ == "__main__":` are skipped, as in the official harnesses) and its stdout is
  discarded (debug prints do not hit the output limit);
* the harness reports which phase failed, which gives the error category: "syntax_error"
  (does not compile), "runtime_error" (raised or exited outside a failed assertion), "wrong"
  (a test assertion failed); "timeout", "memory" and "output_limit" come from the sandbox's
  status. A failing sandbox runner ("sandbox_error") is a SandboxError, never a score.
"""

from __future__ import annotations

import math
import re
import secrets

from wfopt.datasets.base import DatasetError, Problem, Score
from wfopt.errors import SandboxError

_FENCE = re.compile(r"```[ \t]*[\w+-]*[ \t]*\n(.*?)(?:```|\Z)", re.DOTALL)


def extract_code(prediction: str, entry_point: str | None = None) -> str:
    """The code in a prediction: the longest fenced block (preferring one that defines
    `entry_point`), or the whole text when it has no fences."""
    blocks = [b for b in _FENCE.findall(prediction) if b.strip()]
    if not blocks:
        return prediction.strip("\n")
    if entry_point:
        defining = [b for b in blocks if _defines(b, entry_point)]
        blocks = defining or blocks
    return max(blocks, key=len).strip("\n")


def _defines(code: str, name: str) -> bool:
    return (
        re.search(rf"^\s*(?:async\s+)?def\s+{re.escape(name)}\s*\(", code, re.MULTILINE) is not None
    )


def candidate_program(problem: Problem, prediction: str) -> str:
    """The candidate as a module. With a code prompt (HumanEval): a full definition of the
    entry point gets the prompt's preamble (imports, helper functions) prepended; anything
    else is a completion of the prompt's function body, indented if it was not."""
    code = extract_code(prediction, problem.entry_point)
    prompt = problem.meta.get("prompt")
    entry = problem.entry_point
    if not prompt or not entry:
        return code
    if _defines(code, entry):
        header = re.search(rf"^def\s+{re.escape(entry)}\s*\(", prompt, re.MULTILINE)
        return (prompt[: header.start()] if header else "") + code
    lines = code.splitlines()
    first = next((line for line in lines if line.strip()), "")
    if first and not first[0].isspace():
        code = "\n".join("    " + line if line.strip() else line for line in lines)
    return prompt.rstrip("\n") + "\n" + code


_HARNESS = """\
import sys as _sys, os as _os, traceback as _tb
_token = _sys.stdin.readline().strip()
_CANDIDATE = {candidate!r}
_TESTS = {tests!r}
_ns = {{"__name__": "__candidate__", "__builtins__": __builtins__}}
_real_stdout = _sys.stdout
def _fail(category, exc):
    _sys.stdout = _real_stdout
    _tb.print_exception(type(exc), exc, exc.__traceback__, limit=-3)
    _sys.stderr.write("\\n[wfopt:" + category + "]\\n")
    _sys.stderr.flush()
    _os._exit(1)
try:
    _code = compile(_CANDIDATE, "solution.py", "exec")
except (SyntaxError, ValueError) as _e:
    _fail("syntax_error", _e)
_sys.stdout = open(_os.devnull, "w")
try:
    exec(_code, _ns)
except MemoryError as _e:
    _fail("memory", _e)
except BaseException as _e:
    _fail("runtime_error", _e)
try:
    exec(compile(_TESTS, "tests.py", "exec"), _ns)
    {check}
except AssertionError as _e:
    _fail("wrong", _e)
except MemoryError as _e:
    _fail("memory", _e)
except BaseException as _e:
    _fail("runtime_error", _e)
_os.write(1, ("\\n" + _token + "\\n").encode())
_os._exit(0)
"""


def test_program(problem: Problem, prediction: str) -> str:
    """The harness that runs the candidate, then the hidden tests (and `check(entry_point)`
    when the tests define `check`, as HumanEval's do)."""
    tests = problem.tests or ""
    check = "pass"
    if problem.entry_point and re.search(r"^def check\(", tests, re.MULTILINE):
        check = f'_ns["check"](_ns[{problem.entry_point!r}])'
    return _HARNESS.format(
        candidate=candidate_program(problem, prediction), tests=tests, check=check
    )


_CATEGORY = re.compile(r"\[wfopt:(\w+)\]\s*$")


def _detail(stderr: str, fallback: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip() and not _CATEGORY.search(line)]
    return (lines[-1] if lines else fallback)[:300]


async def score_code(problem: Problem, prediction: str, timeout_s: float) -> Score:
    """1.0 when the hidden tests pass in the sandbox, else 0.0 with the failure category."""
    from wfopt.sandbox import SandboxLimits, arun_python

    if not prediction.strip():
        return Score(0.0, "no_answer", "empty prediction")
    if not problem.tests:  # loaders never make such a problem: a caller's bug, not a 0 score
        raise DatasetError(f"problem {problem.id} has no tests to run")
    token = secrets.token_hex(16)
    limits = SandboxLimits(timeout_s=timeout_s, cpu_s=max(1, math.ceil(timeout_s)))
    result = await arun_python(test_program(problem, prediction), stdin=token + "\n", limits=limits)
    if result.status == "sandbox_error":  # the runner failed: the candidate never ran
        raise SandboxError(f"scoring {problem.id}: the code sandbox failed: {result.stderr[:300]}")
    passed = result.status == "ok" and token in result.stdout.splitlines()
    if passed:
        return Score(1.0)
    if result.status == "ok":
        return Score(0.0, "runtime_error", "exited before the tests finished")
    if result.status == "error":
        found = _CATEGORY.search(result.stderr.rstrip())
        category = found.group(1) if found else "runtime_error"
        return Score(0.0, category, _detail(result.stderr, result.status))
    category = {"killed": "runtime_error"}.get(result.status, result.status)
    return Score(0.0, category, _detail(result.stderr, f"sandbox status {result.status}"))
