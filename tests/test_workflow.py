"""The workflow language: validation, canonical identity, and the run-time guards.

These tests run real (hostile) workflow code in-process through `build_solve`; workflows
that need no LLM use no operators, so nothing here is mocked.
"""

from __future__ import annotations

import asyncio
import re
import time

import pytest

from wfopt.baselines import list_baselines, load_baseline
from wfopt.workflow import (
    MAX_STEPS,
    InvalidWorkflow,
    LimitExceeded,
    WorkflowError,
    WorkflowTimeout,
    build_solve,
    call_solve,
    parse_workflow,
)

DESIGN_EXAMPLE = """
async def solve(problem):
    drafts = [await generate(problem, "Think step by step.") for _ in range(3)]
    program = await programmer(problem)
    return await ensemble(problem, drafts + [program])
"""


def run_pure(source: str, problem: str = "p", timeout_s: float = 5.0):
    """Run a workflow that calls no operator."""
    wf = parse_workflow(source)
    solve = build_solve(wf, {}, time.monotonic() + timeout_s)
    return asyncio.run(call_solve(solve, problem, timeout_s))


def test_design_example_and_all_baselines_validate():
    parse_workflow(DESIGN_EXAMPLE)
    names = list_baselines()
    assert {"io", "cot", "cot_sc", "programmer", "self_refine"} <= set(names)
    for name in names:
        parse_workflow(load_baseline(name))


def test_unknown_baseline_lists_known_names():
    with pytest.raises(KeyError, match="cot_sc"):
        load_baseline("nope")


def test_formatting_comments_docstrings_and_renaming_give_one_hash():
    variant = '''
async def solve(q):
    """A docstring that does not change behaviour."""
    ds = [await generate(q, 'Think step by step.')  for i in range(3)]   # comment
    p = await programmer(q)
    return await ensemble(q, ds + [p])
'''
    assert parse_workflow(variant).hash == parse_workflow(DESIGN_EXAMPLE).hash


def test_behaviour_changes_change_the_hash():
    base = parse_workflow(DESIGN_EXAMPLE).hash
    for changed in (
        DESIGN_EXAMPLE.replace("range(3)", "range(5)"),
        DESIGN_EXAMPLE.replace("Think step by step.", "Be brief."),
        DESIGN_EXAMPLE.replace("drafts + [program]", "[program] + drafts"),
    ):
        assert parse_workflow(changed).hash != base


@pytest.mark.parametrize(
    ("source", "reason"),
    [
        ("import os", "exactly one"),
        ("def solve(problem):\n    return 1", "exactly one"),
        ("async def solve(a, b):\n    return a", "exactly one parameter"),
        ("async def solve(p):\n    import os\n    return 1", "Import"),
        ("async def solve(p):\n    return p.__class__", "attribute"),
        (
            "async def solve(p):\n    return ().__class__.__bases__[0].__subclasses__()",
            "not allowed",
        ),
        ("async def solve(p):\n    return __import__('os')", "_"),
        ("async def solve(p):\n    return open('/etc/passwd').read()", "open|read"),
        ("async def solve(p):\n    return eval('1+1')", "eval"),
        ("async def solve(p):\n    return getattr(p, 'x')", "getattr"),
        ("async def solve(p):\n    while True:\n        pass", "While"),
        ("async def solve(p):\n    f = lambda: 1\n    return f()", "Lambda"),
        (
            "async def solve(p):\n    try:\n        return 1\n    except Exception:\n        return 2",
            "Try",
        ),
        ("async def solve(p):\n    global x\n    return 1", "Global"),
        ("async def solve(p):\n    def g():\n        return 1\n    return g()", "FunctionDef"),
        ("async def solve(p):\n    return p.format(1)", "format"),
        ("async def solve(p):\n    x = generate(p)\n    return await x", "awaited"),
        ("async def solve(p):\n    return await len(p)", "awaited"),
        ("async def solve(p):\n    return generate(p)", "`generate` must be called and awaited"),
        ("async def solve(p):\n    return [answer_generate(p)][0]", "must be called and awaited"),
        ("async def solve(p):\n    return max([p], key=answer_generate)", "must be called and"),
        ("async def solve(p):\n    len = generate\n    return len(p)", "`len` is a reserved name"),
        ("async def solve(p):\n    for generate in [1]:\n        pass\n    return p", "reserved"),
        ("async def solve(generate):\n    return generate", "reserved name and cannot be a param"),
        ("async def solve(p):\n    return 2 ** 100000000000000000000000", "too large"),
        ("async def solve(p):\n    return f'{p:>1000000000}'", "format spec"),
        ("async def solve(p):\n    return p.\n", "syntax"),
        ("", "empty"),
    ],
)
def test_validator_rejects_with_a_reason(source, reason):
    with pytest.raises(InvalidWorkflow, match=reason):
        parse_workflow(source)


def test_pure_code_runs():
    source = """
async def solve(problem):
    parts = problem.split(",")
    total = sum([int(x) for x in parts])
    return f"{total}"
"""
    assert run_pure(source, "1,2,3") == "6"


@pytest.mark.parametrize(
    "body",
    [
        "return 'x' * 10 ** 9",
        "return [0] * 10 ** 8",
        "return 10 ** 10 ** 6",
        "n = 99999\n    return n ** n",
        "s = problem\n    for _ in range(60):\n        s = s + s\n    return s",
        "s = problem\n    for _ in range(60):\n        s = f'{s}{s}'\n    return s",
        "s = problem\n    for _ in range(60):\n        s += s\n    return s",
        "return ''.join([problem * 1000 for _ in range(900)])",
        "return problem.replace('', problem * 100)",
        "x = []\n    for i in range(900):\n        for j in range(900):\n            x.append(i)\n    return 1",
        "return list(range(10 ** 12))",
    ],
)
def test_guards_stop_allocation_bombs(body):
    source = f"async def solve(problem):\n    {body}\n"
    with pytest.raises(LimitExceeded):
        run_pure(source, "a" * 100)


def test_cpu_loop_hits_step_limit_quickly():
    source = """
async def solve(problem):
    n = 0
    for i in range(1000):
        for j in range(1000):
            n = n + 1
    return n
"""
    start = time.perf_counter()
    with pytest.raises(LimitExceeded, match=str(MAX_STEPS)):
        run_pure(source)
    assert time.perf_counter() - start < 2.0


def test_deadline_applies_inside_cpu_bound_loops():
    # Each step is cheap but the deadline is already past: the tick must notice.
    source = """
async def solve(problem):
    n = 0
    for i in range(500):
        n = n + len(str(i))
    return n
"""
    wf = parse_workflow(source)
    solve = build_solve(wf, {}, deadline=time.monotonic() - 1)
    with pytest.raises(WorkflowTimeout):
        asyncio.run(call_solve(solve, "p", 5.0))


def test_own_exceptions_become_workflow_errors():
    with pytest.raises(WorkflowError, match="ZeroDivisionError"):
        run_pure("async def solve(problem):\n    return 1 / 0\n")
    # assigned only on a branch not taken: the validator passes it, the run raises
    unbound = "async def solve(problem):\n    if len(problem) > 9:\n        x = 1\n    return x\n"
    with pytest.raises(WorkflowError, match="UnboundLocalError"):
        run_pure(unbound)


def test_operator_calls_that_cannot_bind_are_invalid():
    # measured: a trained policy wrote `await review(problem)`, which can only crash
    for body, reason in [
        ("return await review(problem)", "review(): missing a required argument: 'solution'"),
        ("return await generate(problem, 'a', 'b')", "generate(): too many positional"),
        ("return await generate(problem, style='x')", "unexpected keyword argument 'style'"),
    ]:
        with pytest.raises(InvalidWorkflow, match=re.escape(reason)):
            parse_workflow(f"async def solve(problem):\n    {body}\n")
    parse_workflow("async def solve(problem):\n    return await programmer(problem, analysis='')\n")


@pytest.mark.parametrize(
    "body, name",
    [
        ("return await generate(problem, instruction)", "instruction"),
        ("return undefined_name", "undefined_name"),
        ("answer = await generate(problem)\n    return answr", "answr"),
    ],
)
def test_names_never_assigned_are_invalid(body, name):
    with pytest.raises(InvalidWorkflow, match=f"`{name}` is used but never assigned"):
        parse_workflow(f"async def solve(problem):\n    {body}\n")
    # a name assigned anywhere, or a comprehension's own variable, is fine
    parse_workflow("async def solve(problem):\n    xs = [y for y in range(3)]\n    return xs\n")


def test_builtins_are_restricted_at_run_time():
    # `type` is not a workflow builtin: even if validation were bypassed it is not reachable.
    wf = parse_workflow("async def solve(problem):\n    return len(problem)\n")
    solve = build_solve(wf, {}, time.monotonic() + 5)
    assert "type" not in solve.__globals__["__builtins__"]
    assert "open" not in solve.__globals__["__builtins__"]
    assert asyncio.run(call_solve(solve, "abc", 5)) == 3


def test_async_timeout_applies_to_awaiting_operators():
    async def slow_operator(problem: str) -> str:
        await asyncio.sleep(10)
        return problem

    wf = parse_workflow("async def solve(problem):\n    return await generate(problem)\n")
    solve = build_solve(wf, {"generate": slow_operator}, time.monotonic() + 0.3)
    start = time.perf_counter()
    with pytest.raises(WorkflowTimeout):
        asyncio.run(call_solve(solve, "p", 0.3))
    assert time.perf_counter() - start < 2


def test_a_hung_operator_is_cut_off_and_cancelled():
    """An operator that never returns (real code awaiting forever; nothing is queued in any
    backend, so all of it is the run's own time) times out, and its task is cancelled."""
    cancelled: list[str] = []

    async def hung(problem: str, instruction: str = "") -> str:
        try:
            await asyncio.sleep(1000)
        except asyncio.CancelledError:
            cancelled.append(problem)
            raise
        return problem

    wf = parse_workflow("async def solve(problem):\n    return await generate(problem)\n")
    solve = build_solve(wf, {"generate": hung}, time.monotonic() + 0.3)
    start = time.perf_counter()
    with pytest.raises(WorkflowTimeout) as err:
        asyncio.run(call_solve(solve, "timed out", 0.3))
    assert err.value.category == "timeout" and cancelled == ["timed out"]
    assert time.perf_counter() - start < 2

    async def abandoned():  # whoever awaits the run gives up: the workflow stops with it
        run = asyncio.create_task(call_solve(solve, "abandoned", 100))
        await asyncio.sleep(0.05)
        run.cancel()
        with pytest.raises(asyncio.CancelledError):
            await run
        await asyncio.sleep(0)  # the workflow's task handles its cancellation
        return list(cancelled)

    assert asyncio.run(abandoned()) == ["timed out", "abandoned"]


def test_policy_written_workflows_must_call_an_operator_and_return():
    """The reward hack `make run` showed (a trained policy writing `answer = 0`): code that
    answers without any operator, or returns nothing, is no workflow when the policy wrote it."""
    from wfopt.workflow import parse_policy_workflow

    with pytest.raises(InvalidWorkflow, match="return"):
        parse_policy_workflow("async def solve(problem):\n    answer = 0\n")
    with pytest.raises(InvalidWorkflow, match="at least one operator"):
        parse_policy_workflow("async def solve(problem):\n    return 11\n")
    with pytest.raises(InvalidWorkflow, match="return"):
        parse_policy_workflow("async def solve(problem):\n    x = await generate(problem)\n")
    ok = parse_policy_workflow("async def solve(problem):\n    return await generate(problem)\n")
    assert ok.hash == parse_workflow(ok.source).hash
    parse_workflow("async def solve(problem):\n    return 11\n")  # the language allows it


@pytest.mark.parametrize(
    "body, valid",
    [
        ("return await generate(problem)", True),
        ("xs = []\n    for _ in range(3):\n        xs.append(await generate(problem))\n"
         "    return await ensemble(problem, xs)", True),
        ("a = await programmer(problem)\n    b = a.strip()\n    return b if b else ''", True),
        ("a = await programmer(problem)\n    if a:\n        return a\n    return ''", True),
        # an operator is called, but the answer returned is the policy's own
        ("a = await generate(problem)\n    return 19", False),
        ("a = await generate(problem)\n    return problem", False),
        ("a = await programmer(problem)\n    if a:\n        return a\n    return '0'", False),
        ("a = await generate(problem)\n    b = 3 * 4\n    return b", False),
    ],
)  # fmt: skip
def test_policy_workflows_return_what_operators_computed(body, valid):
    from wfopt.workflow import parse_policy_workflow

    source = f"async def solve(problem):\n    {body}\n"
    if valid:
        parse_policy_workflow(source)
    else:
        with pytest.raises(InvalidWorkflow, match="returns no operator's result"):
            parse_policy_workflow(source)


@pytest.mark.parametrize(
    "body, number",
    [
        # what `make run`'s trained policy wrote: Python does the arithmetic, not an operator
        ("result = 29 - 28\n    return await format_answer(problem, result)", "29"),
        ("return await format_answer(problem, 648)", "648"),
        ("return await format_answer(problem, ' 6.5 ')", "' 6.5 '"),
        ("a = await generate(problem)\n    return await format_answer(problem, f'{6 * 7}')", "6"),
        ("a = await generate(problem)\n    return a + str(1)", "1"),
    ],
)  # fmt: skip
def test_policy_workflows_may_not_write_numbers_into_the_answer(body, number):
    from wfopt.workflow import parse_policy_workflow

    source = f"async def solve(problem):\n    {body}\n"
    parse_workflow(source)  # the language allows it; a policy's workflow may not
    with pytest.raises(InvalidWorkflow, match=f"the number {number} is written"):
        parse_policy_workflow(source)


def test_numbers_that_shape_a_workflow_stay_allowed():
    from wfopt.search.edits import EDIT_KINDS, edit_variants
    from wfopt.workflow import parse_policy_workflow

    shaped = (
        "async def solve(problem):\n    xs = [await generate(problem) for _ in range(3)]\n"
        "    if len(xs) > 0 and xs[-1] != '':\n        return xs[0]\n    return xs[1:][0]\n"
    )
    parse_policy_workflow(shaped)
    # every hand-written workflow, and every structural edit of one, passes the policy's rule
    sources = [load_baseline(name) for name in list_baselines()]
    sources += [
        variant
        for source in list(sources)
        for kind in EDIT_KINDS
        for variant in edit_variants(source, kind, code_task="entry_point" in source)
    ]
    assert len(sources) > 50
    for source in sources:
        parse_policy_workflow(source)


def test_answer_written_in_code_is_detected_but_question_numbers_are_not():
    from wfopt.workflow import answer_written_in

    spelled = "async def solve(problem):\n    return await generate(problem, 'It is 42.')\n"
    assert answer_written_in(spelled, "42", "What is 6 * 7?")
    assert not answer_written_in(spelled, "41", "What is 6 * 7?")
    assert not answer_written_in(spelled, "42", "Start with 42. Add 0.")  # the question has it
    assert not answer_written_in(spelled.replace("42", "142"), "42", "What is 6 * 7?")
    assert not answer_written_in(spelled, "def f(): pass", "code")  # non-numeric answers


def test_a_nested_async_def_is_invalid_not_a_crash():
    """A policy wrote this (search crashed with an IndexError in the normalizer)."""
    source = "async def solve(problem):\n    async def ask_f() : None\n"
    with pytest.raises(InvalidWorkflow, match="nested functions"):
        parse_workflow(source)
