"""Record formats → Problem: GSM8K, MATH, MBPP and generic JSONL (HumanEval: humaneval.py).

Ids are the record's own id when it has one, else "<source>:<line>" so that problems from a
train and a test file never share an id.
"""

from __future__ import annotations

import ast
import re
from typing import Any

from wfopt.datasets.base import DatasetError, Problem
from wfopt.datasets.jsonl import require
from wfopt.datasets.scoring import extract_number, format_number, last_boxed


def _default_id(where: str, index: int) -> str:
    """The id of a record without one: "…/test.jsonl, line 17" → "test.jsonl:17"; an HF row
    "openai/gsm8k[test] row 4" → "openai/gsm8k[test]:3" (0-based index)."""
    match = re.fullmatch(r"(?:.*/)?(.+?), line (\d+)", where)
    if match:
        return f"{match.group(1)}:{match.group(2)}"
    return f"{where.split(' row ')[0]}:{index}"


def _record_id(record: dict[str, Any], where: str, index: int, *names: str) -> str:
    for name in names:
        if record.get(name) is not None:
            return str(record[name])
    return _default_id(where, index)


def gsm8k_gold(solution: str, where: str) -> str:
    """The number after the last '####', canonical ("1,000" → "1000")."""
    if "####" not in solution:
        raise DatasetError(f"{where}: field 'answer' has no '#### <number>' final answer")
    value = extract_number(solution.rsplit("####", 1)[1])
    if value is None:
        raise DatasetError(f"{where}: field 'answer' has no number after '####'")
    return format_number(value)


def gsm8k_problem(record: dict[str, Any], where: str, index: int) -> Problem:
    question = require(record, "question", where)
    solution = require(record, "answer", where)
    return Problem(
        id=_record_id(record, where, index, "id"),
        question=question,
        answer=gsm8k_gold(solution, where),
        kind="math",
        meta={"solution": solution},
    )


def math_problem(record: dict[str, Any], where: str, index: int) -> Problem:
    """MATH: gold = the record's `answer` if given (MATH-500), else the solution's last box."""
    question = require(record, "problem", where)
    solution = require(record, "solution", where)
    gold = record.get("answer")
    if gold is None or str(gold).strip() == "":
        gold = last_boxed(solution)
    if gold is None:
        raise DatasetError(f"{where}: field 'solution' has no \\boxed{{...}} answer")
    meta = {k: record[k] for k in ("level", "type", "subject") if k in record}
    return Problem(
        id=_record_id(record, where, index, "unique_id", "id"),
        question=question,
        answer=str(gold).strip(),
        kind="math",
        meta={**meta, "solution": solution},
    )


def called_function(assertion: str) -> str | None:
    """The function an assert tests: the first called name that is not a builtin/helper
    ("assert math.isclose(area(2), 12.5)" → "area")."""
    try:
        tree = ast.parse(assertion.strip())
    except SyntaxError:
        return None
    skip = {"isclose", "set", "sorted", "abs", "round", "list", "tuple", "len", "str", "int"}
    skip |= {"float", "frozenset", "dict", "all", "any", "sum", "bool", "type", "isinstance"}
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id not in skip
        ):
            return node.func.id
    return None


def mbpp_problem(record: dict[str, Any], where: str, index: int) -> Problem:
    """MBPP (original `text` or sanitized `prompt`): the first assert is shown as an example."""
    text = require(record, "text" if "text" in record else "prompt", where)
    tests = require(record, "test_list", where, list)
    if not tests or not all(isinstance(t, str) for t in tests):
        raise DatasetError(f"{where}: field 'test_list' must be a non-empty list of strings")
    entry_point = called_function(tests[0])
    if entry_point is None:
        raise DatasetError(f"{where}: field 'test_list': no function call in {tests[0]!r}")
    setup = "\n".join(
        [*record.get("test_imports", []), record.get("test_setup_code") or ""]
    ).strip()
    question = f"{text}\nYour code should pass this test:\n{tests[0]}"
    return Problem(
        id=_record_id(record, where, index, "task_id", "id"),
        question=question,
        answer=str(record.get("code") or ""),
        kind="code",
        entry_point=entry_point,
        tests="\n".join([setup, *tests]).strip(),
        public_tests="\n".join([setup, tests[0]]).strip(),
    )


def generic_problem(
    record: dict[str, Any],
    where: str,
    index: int,
    *,
    question_field: str,
    answer_field: str,
    id_field: str | None,
    scorer: str,
) -> Problem:
    """Any JSONL: configured field names. For scorer=number the gold must be a number; for
    scorer=code, `tests` (code or a list of asserts) and `entry_point` are read if present."""
    question = require(record, question_field, where)
    identifier = str(require(record, id_field, where, None)) if id_field else None
    if scorer == "code":
        tests = record.get("tests", record.get("test", record.get("test_list")))
        if tests is None:
            raise DatasetError(f"{where}: missing field 'tests' (scorer=code needs tests)")
        if isinstance(tests, list):
            tests = "\n".join(str(t) for t in tests)
        entry_point = record.get("entry_point") or called_function(str(tests).split("\n")[0])
        return Problem(
            id=identifier or _default_id(where, index),
            question=question,
            answer=str(record.get(answer_field) or ""),
            kind="code",
            entry_point=entry_point,
            tests=str(tests),
            public_tests=record.get("public_tests"),
        )
    answer = require(record, answer_field, where)
    if scorer == "number":
        value = extract_number(answer)
        if value is None:
            raise DatasetError(f"{where}: field {answer_field!r} is not a number ({answer!r})")
        answer = format_number(value)
    return Problem(
        id=identifier or _default_id(where, index), question=question, answer=answer, kind="math"
    )
